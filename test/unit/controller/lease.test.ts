// Agent leases, controller side: a table change a disconnected exporter
// would not see (the allocation behind a thin first write) waits while that
// agent's lease may still run, and goes ahead once it has been silent for
// longer than the lease plus the margin; the agent gets the new table when
// it registers again. Without a lease the change waits for the agent.
import { expect } from 'chai';
import { SegmentState, fromExtents, toExtents } from '../../../src/table/index.js';
import { FaultAction, type FaultReply } from '../../../src/wire/proto-types.js';
import { CA, FakeAgent, MiB, containerRef, startTestController, until } from './helpers.js';

type Ctl = Awaited<ReturnType<typeof startTestController>>;

const LEASE_MS = 1500;
const MARGIN_MS = 300;

describe('controller: agent leases (fake agents over loopback gRPC)', function () {
  this.timeout(20_000);
  let ctl: Ctl | undefined;
  const agents: FakeAgent[] = [];

  /**
   * A registered fake agent. With `from`, it registers holding copies of
   * `from`'s tables of those vdisks (so it can apply the deltas that follow).
   */
  async function agent(name: string, tables: { vdiskId: string; version: number }[] = [], from?: FakeAgent): Promise<FakeAgent> {
    const a = new FakeAgent((ctl as Ctl).address, name, { containers: [containerRef(CA, 8)] });
    agents.push(a);
    for (const { vdiskId, version } of tables) {
      const t = from?.tables.get(vdiskId);
      if (t === undefined) continue;
      expect(t.version, `${from?.name}'s table to copy`).to.equal(version);
      a.tables.set(vdiskId, fromExtents(t.meta, toExtents(t)));
    }
    await a.register(tables);
    return a;
  }

  /** Container CA, thin vdisk `d` of 4 segments exported on agents a and b. */
  async function setup(leaseMs: number): Promise<{ vdiskId: string; a: FakeAgent; b: FakeAgent }> {
    ctl = await startTestController({ leaseMs, leaseMarginMs: MARGIN_MS });
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const a = await agent('a');
    const b = await agent('b');
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 4 * MiB });
    for (const x of [a, b]) {
      ctl.admin.AddExport({ vdisk: 'd', agent: x.name });
      await x.next((m) => m.body === 'tableFull');
    }
    return { vdiskId: v.id, a, b };
  }

  /** The replies to one fault, in order, up to the first that is not WAIT. */
  async function replies(a: FakeAgent, faultId: number, from: number): Promise<FaultReply[]> {
    await a.next((m) => m.body === 'faultReply' && m.faultReply.faultId === faultId && m.faultReply.action !== FaultAction.Wait, 10_000, from);
    return a.received.slice(from).flatMap((m) => (m.body === 'faultReply' && m.faultReply.faultId === faultId ? [m.faultReply] : []));
  }

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await ctl?.cleanup();
    ctl = undefined;
  });

  it('grants the lease in Welcome and answers every heartbeat with its sequence number', async () => {
    ctl = await startTestController({ leaseMs: LEASE_MS, leaseMarginMs: MARGIN_MS });
    const a = new FakeAgent(ctl.address, 'a');
    agents.push(a);
    const w = await a.register();
    expect(w.leaseMs).to.equal(LEASE_MS);
    a.stream.write({ body: 'heartbeat', heartbeat: { seq: 41, heldIos: 0 } });
    a.stream.write({ body: 'heartbeat', heartbeat: { seq: 42, heldIos: 0 } });
    const r = await a.next((m) => m.body === 'heartbeatReply' && m.heartbeatReply.seq === 42);
    expect(r.body === 'heartbeatReply' && r.heartbeatReply.seq).to.equal(42);
    expect(a.received.some((m) => m.body === 'heartbeatReply' && m.heartbeatReply.seq === 41)).to.equal(true);
  });

  it('answers a first-write fault on a with WAIT while b may hold its lease, then allocates once b is silent past it', async () => {
    const { vdiskId, a, b } = await setup(LEASE_MS);
    b.close();
    await until(() => !(ctl as Ctl).controller.agents.onlineAgents().includes('b'), 5000, 'b to be seen disconnected');

    const from = a.received.length;
    const f = a.sendFault({ vdiskId, segment: 2, op: 1, lba: 2 * 2048, blocks: 8, state: SegmentState.Zero, tableVersion: 1 });
    const rs = await replies(a, f.faultId, from);
    // Before the lease ran out: WAIT, naming the agent it waits for.
    expect(rs[0]?.action).to.equal(FaultAction.Wait);
    expect(rs[0]?.reason).to.match(/agent b .*not connected/);
    // After it: allocated, pushed to a (acked), RETRY at the new version.
    const last = rs[rs.length - 1] as FaultReply;
    expect(last.action).to.equal(FaultAction.Retry);
    const t = a.tables.get(vdiskId)!;
    expect(t.stateOf(2)).to.equal(SegmentState.Normal);
    expect(last.tableVersion).to.equal(t.version);
    expect((ctl as Ctl).db.segment(vdiskId, 2).state).to.equal(SegmentState.Normal);

    // b comes back holding version 1: it is sent the table with segment 2 allocated.
    const b2 = await agent('b', [{ vdiskId, version: 1 }]);
    await b2.next((m) => m.body === 'tableFull' && m.tableFull.version === t.version);
    expect(b2.tables.get(vdiskId)!.stateOf(2)).to.equal(SegmentState.Normal);
    expect(b2.tables.get(vdiskId)!.containerOf(2)).to.equal(t.containerOf(2));
  });

  it('without a lease (lease_ms 0) keeps the WAIT until b is back and resynced', async () => {
    const { vdiskId, a, b } = await setup(0);
    expect(a.received.find((m) => m.body === 'welcome')).to.satisfy((m: { welcome: { leaseMs: number } }) => m.welcome.leaseMs === 0);
    b.close();
    await until(() => !(ctl as Ctl).controller.agents.onlineAgents().includes('b'), 5000, 'b to be seen disconnected');
    const from = a.received.length;
    const f = a.sendFault({ vdiskId, segment: 3, op: 1, lba: 3 * 2048, blocks: 8, state: SegmentState.Zero, tableVersion: 1 });
    const wait = await f.reply(true);
    expect(wait.action).to.equal(FaultAction.Wait);
    // Well past what a lease would have been: still zero, no final answer.
    await new Promise((r) => setTimeout(r, LEASE_MS + MARGIN_MS + 500));
    expect((ctl as Ctl).db.segment(vdiskId, 3).state).to.equal(SegmentState.Zero);
    expect(a.received.slice(from).some((m) => m.body === 'faultReply' && m.faultReply.action !== FaultAction.Wait)).to.equal(false);
    // b holds version 1 (it acks the allocation's delta: the change touched no normal segment, but no lease is granted).
    await agent('b', [{ vdiskId, version: 1 }], a);
    const rs = await replies(a, f.faultId, from);
    expect(rs[rs.length - 1]?.action).to.equal(FaultAction.Retry);
    expect((ctl as Ctl).db.segment(vdiskId, 3).state).to.equal(SegmentState.Normal);
  });
});
