// Bad input against a running system: garbage on the controller's gRPC
// port, malformed and unknown protobuf messages on the agent stream and the
// admin API, an agent claiming containers it does not have, truncated and
// unlabelled container files in an agent's glob, CLI arguments out of range.
// Each gets a clear error; nothing written is lost and no daemon crashes
// (each still answers afterwards).
import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { randomBytes, randomUUID } from 'node:crypto';
import { truncateSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { requireTools } from '../support/tools.js';
import type { RunResult } from '../support/bounded-run.js';
import { AgentServiceClient } from '../../src/wire/grpc.js';
import type { ControllerMessage, MalformedMessage } from '../../src/wire/proto-types.js';
import { useCluster, type Cluster } from './cluster.js';
import { LOOPBACK } from '../support/process.js';
import { expectOneLineError } from '../support/tabula-process.js';
import { readP, writeP } from './clients.js';
import { check } from './table.js';

const MiB = 1 << 20;
const VDISK = 'bad';

/** The controller answers the admin API and the agent still serves the data written in setup. */
async function stillHealthy(c: Cluster): Promise<void> {
  expect(c.controller?.running, 'controller process alive').to.equal(true);
  const names = (await c.admin.call('ListVdisks', {})).vdisks.map((v) => v.name);
  expect(names).to.include(VDISK);
  await readP(c.url('a', VDISK), 0x5a, 0, 2 * MiB);
}

/** A raw bidirectional AgentService.Connect call that sends whatever bytes it is given. */
function rawAgentStream(address: string): { stream: grpc.ClientDuplexStream<Buffer, Buffer>; client: grpc.Client } {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const stream = client.makeBidiStreamRequest<Buffer, Buffer>(
    '/tabula.v1.AgentService/Connect',
    (b: Buffer) => b,
    (b: Buffer) => b,
  );
  return { stream, client };
}

/** Collects everything the controller sends on a stream until it ends (or `ms`). */
function drain<T>(stream: grpc.ClientDuplexStream<Buffer, T>, ms: number): Promise<{ messages: T[]; status: string }> {
  return new Promise((resolve) => {
    const messages: T[] = [];
    let status = 'open';
    const t = setTimeout(() => resolve({ messages, status }), ms);
    stream.on('data', (m: T) => messages.push(m));
    stream.on('error', (e: Error) => (status = `error: ${e.message}`));
    stream.on('close', () => {
      clearTimeout(t);
      resolve({ messages, status: status === 'open' ? 'closed' : status });
    });
  });
}

describe('system: bad input', function () {
  this.timeout(180_000);
  let c0 = '';
  const cluster = useCluster('bad-input', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    c0 = await c.serveVdisk({ vdisk: VDISK, size: '8MiB', containerSize: '64MiB', agents: { a: {} } });
    await writeP(c.url('a', VDISK), 0x5a, 0, 2 * MiB);
  });

  it('garbage bytes on the gRPC port: the connection is dropped, the controller carries on', async function () {
    const c = cluster();
    /** Resolves 'closed' when the controller drops the connection, 'lingered' if it is still open after 5 s. */
    const send = (payload: Buffer): Promise<'closed' | 'lingered'> =>
      new Promise((resolve) => {
        const s = connect({ host: LOOPBACK, port: c.controllerPort });
        const timer = setTimeout(() => {
          resolve('lingered');
          s.destroy();
        }, 5000);
        s.on('error', () => undefined);
        s.on('close', () => {
          clearTimeout(timer);
          resolve('closed');
        });
        s.on('connect', () => s.end(payload));
        // Read whatever comes back (a GOAWAY): a paused socket would never see the close.
        s.resume();
      });
    expect(await send(randomBytes(64 * 1024)), 'random bytes').to.equal('closed');
    // A valid HTTP/2 preface followed by garbage frames.
    expect(await send(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), randomBytes(4096)])), 'preface + garbage').to.equal('closed');
    expect(await send(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')), 'HTTP/1.1').to.equal('closed');
    await stillHealthy(c);
  });

  it('malformed and unknown protobuf messages on the agent stream get ControllerError, not a crash', async function () {
    const c = cluster();
    // Bytes that are not a protobuf message at all (a field with wire type 7).
    const a = rawAgentStream(c.controllerAddress);
    a.stream.write(Buffer.from([0x0f, 0xff, 0xff, 0xff, 0xff]));
    // A well-formed message with only an unknown field (99, varint).
    a.stream.write(Buffer.from([0x98, 0x06, 0x01]));
    a.stream.end();
    const got = await drain(a.stream, 10_000);
    a.client.close();
    // The replies are ControllerMessages; decode them with the real codec.
    const { messageType, decodeMessage } = await import('../../src/wire/grpc.js');
    const T = messageType('ControllerMessage');
    const replies = got.messages.map((b) => decodeMessage<ControllerMessage>(T, b));
    const errors = replies.filter((m): m is Extract<ControllerMessage, { body: 'error' }> => m.body === 'error').map((m) => m.error.message);
    expect(errors.join(' | '), `replies: ${JSON.stringify(replies)} (${got.status})`).to.match(/malformed|does not decode|no known message|Register/i);
    await stillHealthy(c);
  });

  it('garbage to an admin RPC is refused with a status', async function () {
    const c = cluster();
    const client = new grpc.Client(c.controllerAddress, grpc.credentials.createInsecure());
    const err = await new Promise<grpc.ServiceError | null>((resolve) => {
      client.makeUnaryRequest<Buffer, Buffer>(
        '/tabula.v1.AdminService/CreateVdisk',
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x41]),
        { deadline: Date.now() + 10_000 },
        (e) => resolve(e),
      );
    });
    client.close();
    expect(err, 'an error status').to.not.equal(null);
    expect(err?.code).to.not.equal(grpc.status.DEADLINE_EXCEEDED);
    await stillHealthy(c);
  });

  it('an agent claiming containers it does not have: each claim refused with its reason', async function () {
    const c = cluster();
    const client = new AgentServiceClient(c.controllerAddress);
    const stream = client.connect();
    const unknown = randomUUID();
    stream.write({
      body: 'register',
      register: {
        agentName: 'impostor',
        portals: ['127.0.0.1:1'],
        containers: [
          { id: unknown, path: '/nowhere/x.img', size: 64 * MiB, dataOffset: MiB },
          // The real container's id with the wrong geometry.
          { id: c0, path: '/nowhere/c0.img', size: 999 * MiB, dataOffset: MiB },
        ],
        tables: [],
        softwareVersion: 'test',
      },
    });
    const welcome = await new Promise<ControllerMessage | MalformedMessage>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no Welcome within 10 s')), 10_000);
      stream.on('data', (m: ControllerMessage | MalformedMessage) => {
        if (m.body === 'welcome') {
          clearTimeout(t);
          resolve(m);
        }
      });
      stream.on('error', () => undefined);
    });
    stream.cancel();
    client.close();
    if (welcome.body !== 'welcome') throw new Error('not a welcome');
    const rejected = welcome.welcome.rejectedContainers;
    expect(rejected).to.have.lengthOf(2);
    expect(rejected.find((r) => r.includes(unknown)), rejected.join(' | ')).to.not.equal(undefined);
    expect(rejected.find((r) => r.includes(c0)), rejected.join(' | ')).to.not.equal(undefined);
    // The impostor does not count as reaching c0.
    const containers = (await c.admin.call('ListContainers', {})).containers;
    expect(containers.find((x) => x.id === c0)?.agents).to.deep.equal(['a']);
    await stillHealthy(c);
  });

  it('unlabelled and truncated files in the glob are reported and skipped; the agent serves the rest', async function () {
    const c = cluster();
    const dir = join(c.dir, 'containers');
    writeFileSync(join(dir, 'junk.img'), randomBytes(MiB));
    writeFileSync(join(dir, 'tiny.img'), randomBytes(100));
    // A registered container that is then cut short.
    const cut = await c.addContainer('cut.img', '16MiB');
    truncateSync(join(dir, 'cut.img'), 64 * 1024);
    // `container add` of a truncated or unlabelled file names the file and the problem.
    expectOneLineError(await c.cli(['container', 'add', join(dir, 'cut.img')]), /cut\.img.*(truncated|label says)/);
    expectOneLineError(await c.cli(['container', 'add', join(dir, 'junk.img')]), /junk\.img/);

    await c.agent('a').daemon.stop();
    const a = await c.startAgent('a', { containers: [c.containerGlob] });
    await c.waitServed(VDISK, ['a']);
    const log = a.daemon.log();
    expect(log).to.match(/junk\.img/);
    expect(log).to.match(/tiny\.img/);
    expect(log).to.match(/cut\.img/);
    const containers = (await c.admin.call('ListContainers', {})).containers;
    expect(containers.find((x) => x.id === cut)?.agents, 'nobody reaches the truncated container').to.deep.equal([]);
    expect(containers.find((x) => x.id === c0)?.agents).to.deep.equal(['a']);
    // New allocations land only on the container the agent really has.
    await writeP(c.url('a', VDISK), 0x77, 4 * MiB, 2 * MiB);
    const t = await c.admin.call('GetTable', { name: VDISK, fullIds: true });
    const used = new Set(t.extents.filter((e) => e.container !== '').map((e) => e.container));
    expect([...used]).to.deep.equal([c0]);
    await readP(c.url('a', VDISK), 0x77, 4 * MiB, 2 * MiB);
    await stillHealthy(c);
  });

  it('CLI arguments out of range: one-line errors, nothing changed', async function () {
    const c = cluster();
    const before = await c.admin.call('ShowVdisk', { name: VDISK });
    const rs = await Promise.all([
      c.cli(['vdisk', 'create', 'z0', '--size', '0']),
      c.cli(['vdisk', 'create', 'z1', '--size', '16MiB', '--segment-size', '3MiB']),
      c.cli(['vdisk', 'create', 'z2', '--size', '16MiB', '--segment-size', '256']),
      c.cli(['vdisk', 'create', 'z3', '--size', '1EiB']),
      c.cli(['vdisk', 'create', VDISK, '--size', '8MiB']),
      c.cli(['segment', 'set-state', VDISK, '999', '--state', 'error']),
      c.cli(['segment', 'set-state', VDISK, '7-8', '--state', 'invalid']),
      c.cli(['export', 'add', VDISK, '--agent', 'a', '--lun', '20000']),
      c.cli(['export', 'add', VDISK, '--agent', 'nosuch']),
      c.cli(['vdisk', 'resize', VDISK, '--size', '4MiB']),
      c.cli(['vdisk', 'table', 'nosuch']),
      c.cli(['container', 'init', join(c.dir, 'containers', 'c0.img'), '--size', '64MiB'], { admin: false }),
    ]);
    const [z0, z1, z2, z3, dup, seg999, seg78, lun, agent, shrink, table, relabel] = rs as RunResult[];
    expectOneLineError(z0 as RunResult, /size/i);
    expectOneLineError(z1 as RunResult, /segment.size|power of two/i);
    expectOneLineError(z2 as RunResult, /segment.size|block/i);
    expectOneLineError(z3 as RunResult, /size|segments|too (big|large)/i);
    expectOneLineError(dup as RunResult, /exists|bad/);
    expectOneLineError(seg999 as RunResult, /999|segment/);
    expectOneLineError(seg78 as RunResult, /segment|range|8/);
    expectOneLineError(lun as RunResult, /--lun 20000/);
    expectOneLineError(agent as RunResult, /nosuch/);
    expectOneLineError(shrink as RunResult, /shrink|smaller/);
    expectOneLineError(table as RunResult, /nosuch/);
    expectOneLineError(relabel as RunResult, /c0\.img.*(label|force)/i);
    const names = (await c.admin.call('ListVdisks', {})).vdisks.map((v) => v.name);
    expect(names.sort()).to.deep.equal([VDISK]);
    const after = await c.admin.call('ShowVdisk', { name: VDISK });
    expect(after.version).to.equal(before.version);
    expect(after.size).to.equal(before.size);
    await stillHealthy(c);
    const r = await check(c);
    expect(r.ok, r.text).to.equal(true);
  });
});
