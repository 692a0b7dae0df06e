// A copy of a mirrored vdisk fails and comes back (src/controller/mirrors.ts),
// with real processes: a controller, one agent, and two storage nodes
// (`tabula target`, one LUN each) whose LUNs are the vdisk's two containers,
// in two failure domains (`container add --domain`). One node is killed:
// writes through the agent complete GOOD on the other copy, the controller
// removes the failed container's legs once (container failed, the vdisk
// degraded), reads go on. The node comes back on the same file and port:
// the agent reports its LUN reachable, the controller resyncs it, copying
// only the segments written while it was away (counted by
// tabula_resync_bytes_total), and both copies are equal again.
import { expect } from 'chai';
import { closeSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { requireTools } from '../support/tools.js';
import { freeLoopbackPort, waitFor } from '../support/process.js';
import type { Daemon } from '../support/tabula-process.js';
import type { ContainerInfo } from '../../src/wire/proto-types.js';
import { useCluster, type Cluster } from './cluster.js';
import { readP, writeP } from './clients.js';
import { table, type JsonTable } from './table.js';

const MiB = 1 << 20;
const VDISK = 'mirror';
const SEGS = 8;

interface Node {
  name: string;
  file: string;
  portal: string;
  iqn: string;
  url: string;
  daemon?: Daemon;
  container?: string;
}

/** An extent of `vdisk table --json` with its extra legs (mirrored vdisks: proto ExtentLegs). */
type LegExtent = JsonTable['extents'][number] & { legs?: { list?: { container: string; offset: number }[] } | null };

/** Per segment: its locations, leg 0 first, as `container@offset`. */
function legsOf(t: JsonTable): string[][] {
  const out: string[][] = [];
  for (const e of t.extents as LegExtent[]) {
    for (let i = 0; i < e.count; i++) {
      const locs = e.container === '' ? [] : [`${e.container}@${e.offset + i}`];
      for (const l of e.legs?.list ?? []) locs.push(`${l.container}@${l.offset + i}`);
      out.push(locs);
    }
  }
  return out;
}

function readAt(file: string, at: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, b, 0, len, at);
  } finally {
    closeSync(fd);
  }
  return b;
}

async function metric(port: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  if (line === undefined) throw new Error(`no ${name} in the controller's metrics`);
  return Number(line.split(' ')[1]);
}

describe('system: a mirrored vdisk whose copy fails and comes back (leg removal, resync of the written segments)', function () {
  this.timeout(600_000);
  const nodes: Node[] = [];
  let metricsPort = 0;

  async function startNode(c: Cluster, n: Node): Promise<void> {
    n.daemon = await c.startDaemon(`target-${n.name}`, ['target', '--file', n.file, '--size', String(48 * MiB), '--portal', n.portal, '--iqn', n.iqn], /^iscsi:\/\//m);
  }

  const cluster = useCluster('mirror-failure', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    metricsPort = await freeLoopbackPort();
    c.controller = await c.startDaemon(
      'controller',
      ['controller', '--db', c.dbPath, '--listen', c.controllerAddress, '--metrics-listen', `127.0.0.1:${metricsPort}`],
      /controller listening on \S+/,
    );
    for (const name of ['na', 'nb']) {
      const port = await freeLoopbackPort();
      const iqn = `iqn.2026-11.org.tabula:mirror-${name}`;
      const n: Node = { name, file: join(c.dir, `${name}.img`), portal: `127.0.0.1:${port}`, iqn, url: `iscsi://127.0.0.1:${port}/${iqn}/0` };
      nodes.push(n);
      await startNode(c, n);
      const init = JSON.parse(await c.cliOk(['container', 'init', n.url, '--json'], { admin: false })) as { id: string };
      n.container = init.id;
      // Both nodes are on this host: the domains are named, not derived.
      await c.cliOk(['container', 'add', n.url, '--domain', `rack-${name}`]);
    }
    await c.startAgent('a', {
      containers: nodes.map((n) => `iscsi://${n.portal}`),
      holdTimeoutS: 3,
      args: ['--iscsi-initiator-name', 'iqn.2024-01.io.tabula:agent.mirror-a', '--iscsi-command-timeout', '2', '--rescan-interval', '2'],
    });
    await waitFor('agent a reaches both LUNs', 60_000, async () => {
      const list = await c.cliJson<ContainerInfo[]>(['container', 'ls']);
      return list.length === 2 && list.every((x) => x.agents.includes('a') && (x.unreachable ?? []).length === 0) ? true : undefined;
    });
    await c.cliOk(['vdisk', 'create', VDISK, '--size', `${SEGS}MiB`, '--copies', '2', '--thick']);
    await c.cliOk(['export', 'add', VDISK, '--agent', 'a']);
    await c.waitServed(VDISK, ['a']);
  });

  after(async function () {
    this.timeout(60_000);
    for (const n of nodes) if (n.daemon?.running) await n.daemon.stop();
  });

  const containerOf = (n: Node): string => n.container as string;
  const state = async (c: Cluster, n: Node): Promise<string> =>
    (await c.cliJson<ContainerInfo[]>(['container', 'ls'])).find((x) => x.id === containerOf(n))?.state ?? 'missing';

  it('every segment has a copy in each domain, and data written reads back', async () => {
    const c = cluster();
    const legs = legsOf(await table(c, VDISK));
    expect(legs).to.have.length(SEGS);
    for (const l of legs) {
      expect(l, JSON.stringify(legs)).to.have.length(2);
      expect(new Set(l.map((x) => x.split('@')[0])), JSON.stringify(legs)).to.deep.equal(new Set(nodes.map(containerOf)));
    }
    const url = c.url('a', VDISK);
    await writeP(url, 0x11, 0, SEGS * MiB);
    await readP(url, 0x11, 0, SEGS * MiB);
  });

  it('a storage node dies: writes complete GOOD on the other copy, its legs are removed once, the vdisk is degraded', async () => {
    const c = cluster();
    const [na, nb] = nodes as [Node, Node];
    const url = c.url('a', VDISK);
    await nb.daemon!.kill();
    // Segments 2 and 5 are written while nb is away; the initiator sees no error.
    await writeP(url, 0x22, 2 * MiB, 64 * 1024);
    await writeP(url, 0x55, 5 * MiB + 4096, 64 * 1024);
    expect(await state(c, nb)).to.equal('failed');
    expect(await state(c, na)).to.equal('online');
    const legs = legsOf(await table(c, VDISK));
    for (const l of legs) expect(l.map((x) => x.split('@')[0]), JSON.stringify(legs)).to.deep.equal([containerOf(na)]);
    // Everything reads from the surviving copy.
    await readP(url, 0x11, 0, 2 * MiB);
    await readP(url, 0x22, 2 * MiB, 64 * 1024);
    await readP(url, 0x11, 2 * MiB + 64 * 1024, 3 * MiB - 64 * 1024 + 4096);
    await readP(url, 0x55, 5 * MiB + 4096, 64 * 1024);
    await readP(url, 0x11, 5 * MiB + 4096 + 64 * 1024, 3 * MiB - 4096 - 64 * 1024);
    // The invariants hold with the stale legs (their references counted); degraded segments are warnings only.
    expect(await c.cliOk(['check'])).to.match(/warning: .*degraded/i);
  });

  it('the node comes back: only the written segments are copied, the copies are equal, the container is online', async () => {
    const c = cluster();
    const [na, nb] = nodes as [Node, Node];
    const before = await metric(metricsPort, 'tabula_resync_bytes_total');
    await startNode(c, nb);
    await waitFor('container nb online again', 120_000, async () => ((await state(c, nb)) === 'online' ? true : undefined), 500);
    const legs = legsOf(await table(c, VDISK));
    for (const l of legs) expect(new Set(l.map((x) => x.split('@')[0])), JSON.stringify(legs)).to.deep.equal(new Set(nodes.map(containerOf)));
    // Two segments were written while nb was away: two segments copied, nothing else.
    expect((await metric(metricsPort, 'tabula_resync_bytes_total')) - before).to.equal(2 * MiB);
    // Byte for byte, each segment's two copies are the same (the LUN files, past each container's data offset).
    const infos = await c.cliJson<ContainerInfo[]>(['container', 'ls']);
    const fileOf = new Map(nodes.map((n) => [containerOf(n), n.file]));
    const dataOffset = new Map(infos.map((x) => [x.id, x.dataOffset]));
    for (const [seg, l] of legs.entries()) {
      const [a, b] = l.map((x) => {
        const [id, off] = x.split('@') as [string, string];
        return readAt(fileOf.get(id) as string, (dataOffset.get(id) as number) + Number(off) * MiB, MiB);
      }) as [Buffer, Buffer];
      expect(a.equals(b), `segment ${seg}: copies differ`).to.equal(true);
    }
    const url = c.url('a', VDISK);
    await readP(url, 0x22, 2 * MiB, 64 * 1024);
    await readP(url, 0x55, 5 * MiB + 4096, 64 * 1024);
    await writeP(url, 0x66, 7 * MiB, MiB);
    await readP(url, 0x66, 7 * MiB, MiB);
    expect(na.daemon!.running).to.equal(true);
    expect(await c.cliOk(['check'])).to.not.match(/degraded/i);
  });
});
