import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { SegmentState } from '../../../src/table/index.js';
import { FaultAction } from '../../../src/wire/proto-types.js';
import { AdminClient, agentServiceDefinition } from '../../../src/wire/grpc.js';
import { startController } from '../../../src/controller/daemon.js';
import { CA, CB, FakeAgent, MiB, containerRef, sleep, startTestController, until } from './helpers.js';

type Ctl = Awaited<ReturnType<typeof startTestController>>;

describe('controller (fake agents over loopback gRPC)', () => {
  let ctl: Ctl;
  const agents: FakeAgent[] = [];

  async function agent(name: string, opts: ConstructorParameters<typeof FakeAgent>[2] = {}): Promise<FakeAgent> {
    const a = new FakeAgent(ctl.address, name, { containers: [containerRef(CA, 8)], ...opts });
    agents.push(a);
    await a.register();
    return a;
  }

  /** Container CA (8 segments), thin vdisk `d` of 4 segments exported on the given agents. */
  async function setup(names: string[], opts: ConstructorParameters<typeof FakeAgent>[2] = {}, ctlOpts = {}): Promise<{ vdiskId: string; as: FakeAgent[] }> {
    ctl = await startTestController(ctlOpts);
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const as: FakeAgent[] = [];
    for (const n of names) as.push(await agent(n, opts));
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 4 * MiB });
    for (const a of as) {
      ctl.admin.AddExport({ vdisk: 'd', agent: a.name });
      await a.next((m) => m.body === 'tableFull');
      await a.next((m) => m.body === 'exportSet' && m.exportSet.exports.length === 1);
    }
    return { vdiskId: v.id, as };
  }

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await ctl?.cleanup();
  });

  it('sends welcome, the export set and the whole table to a registered agent', async () => {
    const { vdiskId, as } = await setup(['a1']);
    const a = as[0]!;
    const w = a.received.find((m) => m.body === 'welcome');
    expect(w && w.body === 'welcome' && w.welcome.agentName).to.equal('a1');
    const es = a.received.filter((m) => m.body === 'exportSet').pop();
    expect(es && es.body === 'exportSet' && es.exportSet.exports[0]).to.deep.include({
      vdiskId,
      vdiskName: 'd',
      targetIqn: 'iqn.2026-11.org.tabula:d',
      lun: 0,
      blockSize: 512,
      size: 4 * MiB,
      segmentSize: MiB,
    });
    const t = a.tables.get(vdiskId)!;
    expect(t.segmentCount).to.equal(4);
    expect(t.counts().zero).to.equal(4);
    const agentsList = ctl.admin.ListAgents({});
    expect(agentsList.agents[0]).to.deep.include({ name: 'a1', online: true, containers: [CA] });
  });

  it('allocates a zero segment on a write fault and answers its only holder RETRY right behind the delta; the next change waits for the ack', async () => {
    const { vdiskId, as } = await setup(['a1'], { autoAck: false });
    const a = as[0]!;
    // The initial full table was not acked (autoAck off): ack it now.
    a.ack(vdiskId, a.tables.get(vdiskId)!.version);
    const f = a.sendFault({ vdiskId, segment: 2, op: 1, lba: 2 * 2048, blocks: 8, state: SegmentState.Zero, tableVersion: 1 });
    // No ack yet: the agent holding the vdisk alone needs none to act on a
    // version that came before the reply on the same stream.
    const r = await f.reply();
    expect(r.action).to.equal(FaultAction.Retry);
    const v = a.tables.get(vdiskId)!.version;
    expect(r.tableVersion).to.equal(v);
    const order = a.events.filter((e) => !e.startsWith('full'));
    expect(order.indexOf(`delta ${v - 1}->${v}`), 'the delta comes first').to.be.within(0, order.indexOf(`reply ${f.faultId} 0`) - 1);
    expect(order.some((e) => e.startsWith('ack v') && e !== `ack v${v - 1}`), 'replied before any ack of the new version').to.equal(false);
    const entry = a.tables.get(vdiskId)!.get(2);
    expect(entry.state).to.equal(SegmentState.Normal);
    expect(entry.container).to.equal(CA);
    // The change still waits for the ack: the next one (another segment) is not sent before it.
    const f2 = a.sendFault({ vdiskId, segment: 3, op: 1, state: SegmentState.Zero, tableVersion: v });
    await sleep(100);
    expect(a.events.filter((e) => e.startsWith('delta')), 'second change waits for the first ack').to.have.length(1);
    a.ack(vdiskId, v);
    const r2 = await f2.reply();
    expect(r2.action).to.equal(FaultAction.Retry);
    expect(a.events.filter((e) => e.startsWith('delta'))).to.have.length(2);
    a.ack(vdiskId, a.tables.get(vdiskId)!.version);
    const faults = ctl.admin.ListFaults({ vdisk: 'd' }).faults;
    expect(faults.find((x) => x.segment === 2)).to.deep.include({ agent: 'a1', segment: 2, op: 'write', state: 'zero', outcome: 'retry', lba: 4096, blocks: 8 });
  });

  it('answers RETRY only after every holder has acked when the vdisk has more than one', async () => {
    const { vdiskId, as } = await setup(['a1', 'a2']);
    const [a1, a2] = as as [FakeAgent, FakeAgent];
    a2.autoAck = false;
    const f = a1.sendFault({ vdiskId, segment: 2, op: 1 });
    await a2.next((m) => m.body === 'tableDelta');
    await sleep(100);
    expect(a1.events.some((e) => e.startsWith('reply')), 'no reply while a2 has not acked').to.equal(false);
    a2.ack(vdiskId, a2.tables.get(vdiskId)!.version);
    expect((await f.reply()).action).to.equal(FaultAction.Retry);
  });

  it('allocates exactly once when two agents fault on one zero segment together', async () => {
    const { vdiskId, as } = await setup(['a1', 'a2']);
    const [a1, a2] = as as [FakeAgent, FakeAgent];
    const f1 = a1.sendFault({ vdiskId, segment: 1, op: 1 });
    const f2 = a2.sendFault({ vdiskId, segment: 1, op: 1 });
    const f3 = a1.sendFault({ vdiskId, segment: 1, op: 4 });
    const replies = await Promise.all([f1.reply(), f2.reply(), f3.reply()]);
    expect(replies.map((r) => r.action)).to.deep.equal([FaultAction.Retry, FaultAction.Retry, FaultAction.Retry]);
    expect(a1.events.filter((e) => e.startsWith('delta')), 'one table change').to.have.length(1);
    const used = ctl.db.sql.prepare('SELECT COUNT(*) FROM container_segments').pluck().get();
    expect(used).to.equal(1);
    expect(a1.tables.get(vdiskId)!.get(1)).to.deep.equal(a2.tables.get(vdiskId)!.get(1));
    expect(ctl.admin.Check({}).violations).to.deep.equal([]);
  });

  it('holds a fault that joins an allocation in progress until every holder has acked', async () => {
    const { vdiskId, as } = await setup(['a1', 'a2']);
    const [a1, a2] = as as [FakeAgent, FakeAgent];
    a1.autoAck = false;
    const f1 = a1.sendFault({ vdiskId, segment: 3, op: 1 });
    await a1.next((m) => m.body === 'tableDelta');
    await a2.next((m) => m.body === 'tableDelta');
    const f2 = a2.sendFault({ vdiskId, segment: 3, op: 3 });
    await sleep(100);
    expect(a2.events.some((e) => e.startsWith('reply')), 'a2 waits for a1 to ack').to.equal(false);
    a1.ack(vdiskId, a1.tables.get(vdiskId)!.version);
    const [r1, r2] = await Promise.all([f1.reply(), f2.reply()]);
    expect([r1.action, r2.action]).to.deep.equal([FaultAction.Retry, FaultAction.Retry]);
    expect(ctl.db.containerSegmentsUsed(CA)).to.equal(1);
  });

  it('fences an agent that does not ack in time, holds the change until it re-syncs, and lifts the fence then', async () => {
    // Lease longer than the test: only the fenced agent's ack can let the change go ahead.
    const { vdiskId, as } = await setup(['a1', 'slow'], {}, { ackTimeoutMs: 300, leaseMs: 60_000 });
    const [a1, slow] = as as [FakeAgent, FakeAgent];
    slow.autoAck = false;
    const f = a1.sendFault({ vdiskId, segment: 0, op: 1 });
    await slow.next((m) => m.body === 'fence' && m.fence.vdiskId === vdiskId);
    expect(ctl.db.export(vdiskId, 'slow')?.fenced).to.equal(true);
    expect(ctl.admin.ListExports({ agent: 'slow' }).exports[0]?.fenced).to.equal(true);
    // The fence may never have reached it: a1's write is not let go yet.
    await sleep(200);
    expect(a1.events.some((e) => e.startsWith(`reply ${f.faultId} 0`)), 'no RETRY while slow may read zeros').to.equal(false);
    // Re-sync: ask for the whole table, get it, ack it.
    slow.autoAck = true;
    const from = slow.received.length;
    slow.stream.write({ body: 'tableRequest', tableRequest: { vdiskId, haveVersion: 1, reason: 'fenced' } });
    await slow.next((m) => m.body === 'tableFull', 5000, from);
    const r = await f.reply();
    expect(r.action).to.equal(FaultAction.Retry);
    for (let i = 0; i < 50 && ctl.db.export(vdiskId, 'slow')?.fenced; i++) await sleep(20);
    expect(ctl.db.export(vdiskId, 'slow')?.fenced).to.equal(false);
    expect(slow.tables.get(vdiskId)!.get(0).state).to.equal(SegmentState.Normal);
  });

  it('answers error segments with MEDIUM ERROR, invalid ones with WAIT and then RETRY when the state changes', async () => {
    const { vdiskId, as } = await setup(['a1']);
    const a = as[0]!;
    await ctl.admin.SetSegmentState({ vdisk: 'd', first: 1, count: 1, state: SegmentState.Error });
    const rd = await a.sendFault({ vdiskId, segment: 1, op: 0, state: SegmentState.Error }).reply();
    expect([rd.action, rd.senseKey, rd.asc, rd.ascq]).to.deep.equal([FaultAction.Fail, 0x03, 0x11, 0x00]);
    const wr = await a.sendFault({ vdiskId, segment: 1, op: 1, state: SegmentState.Error }).reply();
    expect([wr.action, wr.senseKey, wr.asc, wr.ascq]).to.deep.equal([FaultAction.Fail, 0x03, 0x0c, 0x00]);

    await ctl.admin.SetSegmentState({ vdisk: 'd', first: 3, count: 1, state: SegmentState.Invalid });
    const held = a.sendFault({ vdiskId, segment: 3, op: 0, state: SegmentState.Invalid });
    const wait = await held.reply(true);
    expect(wait.action).to.equal(FaultAction.Wait);
    await ctl.admin.SetSegmentState({ vdisk: 'd', first: 3, count: 1, state: SegmentState.Zero });
    const final = await held.reply();
    expect(final.action).to.equal(FaultAction.Retry);
  });

  it('answers unmap of a zero segment with DONE and releases whole segments back to zero after acks', async () => {
    const { vdiskId, as } = await setup(['a1']);
    const a = as[0]!;
    const done = await a.sendFault({ vdiskId, segment: 0, op: 2 }).reply();
    expect(done.action).to.equal(FaultAction.Done);
    await a.sendFault({ vdiskId, segment: 0, op: 1 }).reply();
    await a.sendFault({ vdiskId, segment: 1, op: 1 }).reply();
    expect(ctl.db.containerSegmentsUsed(CA)).to.equal(2);
    const rel = await a.release(vdiskId, 0, 2);
    expect(rel.ok).to.equal(true);
    expect(a.tables.get(vdiskId)!.counts().zero).to.equal(4);
    expect(rel.tableVersion).to.equal(a.tables.get(vdiskId)!.version);
    await until(() => ctl.db.containerSegmentsUsed(CA) === 0, 2000, 'freed once scrubbed');
    expect(ctl.admin.Check({}).ok).to.equal(true);
  });

  it('fails writes with SPACE ALLOCATION FAILED when containers are full', async () => {
    ctl = await startTestController();
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 3 * MiB, dataOffset: MiB });
    const a = await agent('a1', { containers: [containerRef(CA, 2)] });
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 4 * MiB });
    ctl.admin.AddExport({ vdisk: 'd', agent: 'a1' });
    await a.next((m) => m.body === 'tableFull');
    for (const seg of [0, 1]) expect((await a.sendFault({ vdiskId: v.id, segment: seg }).reply()).action).to.equal(FaultAction.Retry);
    const r = await a.sendFault({ vdiskId: v.id, segment: 2 }).reply();
    expect([r.action, r.senseKey, r.asc, r.ascq]).to.deep.equal([FaultAction.Fail, 0x07, 0x27, 0x07]);
    expect(r.reason).to.match(/container full: vdisk d needs 1 more segment/);
  });

  it('survives bad input: garbage bytes, unknown vdisks, out-of-range segments, messages before register, false container claims', async () => {
    const { vdiskId, as } = await setup(['a1']);
    const a = as[0]!;
    // Raw garbage on the stream.
    const Ctor = grpc.makeGenericClientConstructor(agentServiceDefinition(), 'AgentService');
    const raw = new Ctor(ctl.address, grpc.credentials.createInsecure());
    const def = agentServiceDefinition().Connect!;
    const call = raw.makeBidiStreamRequest(def.path, (b: Buffer) => b, (b: Buffer) => b);
    const got: Buffer[] = [];
    call.on('data', (b: Buffer) => got.push(b));
    call.on('error', () => undefined);
    call.write(Buffer.from([0xff, 0xff, 0xff, 0x0f, 0x01, 0x02]));
    for (let i = 0; i < 50 && got.length === 0; i++) await sleep(20);
    expect(got.length).to.be.greaterThan(0);
    expect(got[0]!.toString('latin1')).to.match(/malformed message/);
    call.end();
    raw.close();

    const unknown = await a.sendFault({ vdiskId: 'no-such-vdisk', segment: 0 }).reply();
    expect(unknown.action).to.equal(FaultAction.Fail);
    expect(unknown.reason).to.match(/unknown vdisk/);
    const range = await a.sendFault({ vdiskId, segment: 99 }).reply();
    expect([range.action, range.senseKey, range.asc]).to.deep.equal([FaultAction.Fail, 0x05, 0x21]);
    await a.next((m) => m.body === 'error' && /unknown vdisk/.test(m.error.message));

    // Claims a container with the wrong size: rejected, named in Welcome.
    const liar = new FakeAgent(ctl.address, 'liar', { containers: [{ ...containerRef(CA, 8), size: 123 * MiB }, containerRef(CB, 4)] });
    agents.push(liar);
    const w = await liar.register();
    expect(w.rejectedContainers).to.have.length(2);
    expect(w.rejectedContainers.join('\n')).to.match(/claims size/).and.to.match(/not registered/);
    expect(ctl.db.agentContainers('liar')).to.deep.equal([]);

    // Fault before register: the stream is refused.
    const early = new FakeAgent(ctl.address, 'early');
    agents.push(early);
    early.sendFault({ vdiskId, segment: 0 });
    const err = await early.next((m) => m.body === 'error');
    expect(err.body === 'error' && err.error.message).to.match(/before register/);

    // The controller still works.
    expect((await a.sendFault({ vdiskId, segment: 0 }).reply()).action).to.equal(FaultAction.Retry);
  });

  it('sends nothing to a re-registering agent that already holds the current version', async () => {
    const { vdiskId, as } = await setup(['a1']);
    const a = as[0]!;
    const version = a.tables.get(vdiskId)!.version;
    a.close();
    const again = new FakeAgent(ctl.address, 'a1', { containers: [containerRef(CA, 8)] });
    agents.push(again);
    await again.register([{ vdiskId, version }]);
    await again.next((m) => m.body === 'exportSet');
    await sleep(100);
    expect(again.received.some((m) => m.body === 'tableFull')).to.equal(false);
    const stale = new FakeAgent(ctl.address, 'a1', { containers: [containerRef(CA, 8)] });
    agents.push(stale);
    await stale.register([{ vdiskId, version: version - 1 }]);
    await stale.next((m) => m.body === 'tableFull');
  });
});

describe('controller daemon', () => {
  it('requires the token on admin calls and agent streams when one is set', async () => {
    const ctl = await startTestController({ token: 's3cret' });
    try {
      const bad = new AdminClient(ctl.address);
      const err = await bad.call('ListVdisks', {}).then(
        () => null,
        (e: grpc.ServiceError) => e,
      );
      expect(err?.code).to.equal(grpc.status.UNAUTHENTICATED);
      bad.close();
      const good = new AdminClient(ctl.address, { token: 's3cret' });
      const made = await good.call('CreateVdisk', { name: 'x', size: 8 * MiB });
      expect(made.segmentCount).to.equal(8);
      const shown = await good.call('ShowVdisk', { name: 'x' });
      expect(shown.states.zero).to.equal(8);
      const e2 = await good.call('ShowVdisk', { name: 'nope' }).catch((e: grpc.ServiceError) => e);
      expect((e2 as grpc.ServiceError).code).to.equal(grpc.status.NOT_FOUND);
      expect((e2 as grpc.ServiceError).details).to.equal('unknown vdisk nope');
      good.close();
      const a = new FakeAgent(ctl.address, 'a1');
      const ended = new Promise<void>((resolve) => a.stream.on('error', () => resolve()));
      a.stream.write({ body: 'heartbeat', heartbeat: { seq: 1, heldIos: 0 } });
      await ended;
      a.close();
    } finally {
      await ctl.cleanup();
    }
  });

  it('refuses a non-loopback listen address without TLS or a token', async () => {
    let err: Error | null = null;
    await startController({ dbPath: ':memory:', listen: '0.0.0.0:0' }).catch((e: Error) => {
      err = e;
    });
    expect(err).to.match(/refusing to listen/);
  });
});
