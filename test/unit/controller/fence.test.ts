// Fenced agents, controller side: a Fence is a message the agent may never
// get (a partition the stream has not noticed yet), so a table change an
// agent did not ack is not done when the fence is sent. A change that only
// made zero or no-write segments something else waits until that agent's
// lease has surely run out (lease plus margin after its last answered
// heartbeat; none is answered while it is fenced); a change to normal
// segments waits for its ack, or for its export to be removed. A slow agent
// that acks late lets the change go on when it acks.
import { expect } from 'chai';
import { SegmentState } from '../../../src/table/index.js';
import { FaultAction, type ReleaseReply } from '../../../src/wire/proto-types.js';
import { CA, FakeAgent, MiB, containerRef, sleep, startTestController } from './helpers.js';

type Ctl = Awaited<ReturnType<typeof startTestController>>;

const LEASE_MS = 1500;
const MARGIN_MS = 300;
const ACK_TIMEOUT_MS = 300;

describe('controller: fenced agents hold table changes until safe (fake agents over loopback gRPC)', function () {
  this.timeout(20_000);
  let ctl: Ctl | undefined;
  const agents: FakeAgent[] = [];

  /**
   * Container CA, thin vdisk `d` of 4 segments (segment 1 allocated: normal)
   * exported on agents a and b, both holding version `version` acked.
   */
  async function setup(leaseMs = LEASE_MS): Promise<{ vdiskId: string; a: FakeAgent; b: FakeAgent; c: Ctl }> {
    const c = await startTestController({ leaseMs, leaseMarginMs: MARGIN_MS, ackTimeoutMs: ACK_TIMEOUT_MS });
    ctl = c;
    c.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const v = c.admin.CreateVdisk({ name: 'd', size: 4 * MiB });
    await c.admin.SetSegmentState({ vdisk: 'd', first: 1, count: 1, state: SegmentState.Normal });
    const out: FakeAgent[] = [];
    for (const name of ['a', 'b']) {
      const x = new FakeAgent(c.address, name, { containers: [containerRef(CA, 8)] });
      agents.push(x);
      await x.register();
      c.admin.AddExport({ vdisk: 'd', agent: name });
      await x.next((m) => m.body === 'tableFull');
      out.push(x);
    }
    const [a, b] = out as [FakeAgent, FakeAgent];
    expect(a.tables.get(v.id)!.stateOf(1)).to.equal(SegmentState.Normal);
    return { vdiskId: v.id, a, b, c };
  }

  /** Sends a heartbeat; resolves with performance.now() from just before it went. */
  function heartbeat(x: FakeAgent, seq: number): number {
    const at = performance.now();
    x.stream.write({ body: 'heartbeat', heartbeat: { seq, heldIos: 0 } });
    return at;
  }

  function answered(x: FakeAgent, seq: number): boolean {
    return x.received.some((m) => m.body === 'heartbeatReply' && m.heartbeatReply.seq === seq);
  }

  function hasReply(x: FakeAgent, faultId: number, from: number): boolean {
    return x.received.slice(from).some((m) => m.body === 'faultReply' && m.faultReply.faultId === faultId && m.faultReply.action !== FaultAction.Wait);
  }

  function sendRelease(x: FakeAgent, vdiskId: string, firstSegment: number, requestId: number): () => ReleaseReply | undefined {
    const from = x.received.length;
    x.stream.write({ body: 'release', release: { requestId, vdiskId, tableVersion: 0, firstSegment, segmentCount: 1 } });
    return () => {
      const m = x.received.slice(from).find((y) => y.body === 'releaseReply' && y.releaseReply.requestId === requestId);
      return m?.body === 'releaseReply' ? m.releaseReply : undefined;
    };
  }

  /** The version of the delta `x` got last (the change it did not ack). */
  async function lastDelta(x: FakeAgent, from: number): Promise<number> {
    const m = await x.next((y) => y.body === 'tableDelta', 5000, from);
    return m.body === 'tableDelta' ? m.tableDelta.toVersion : -1;
  }

  afterEach(async () => {
    for (const x of agents.splice(0)) x.close();
    await ctl?.cleanup();
    ctl = undefined;
  });

  it("holds b's first write (zero to normal) until a, connected but silent, is past its lease plus margin", async () => {
    const { vdiskId, a, b, c } = await setup();
    a.autoAck = false;
    // a's last answered heartbeat; then it goes silent (partitioned, stream still open).
    const lastBeat = heartbeat(a, 1);
    await a.next((m) => m.body === 'heartbeatReply' && m.heartbeatReply.seq === 1);
    const fromA = a.received.length;
    const fromB = b.received.length;
    const f = b.sendFault({ vdiskId, segment: 2, op: 1, lba: 2 * 2048, blocks: 8, state: SegmentState.Zero, tableVersion: 1 });
    const version = await lastDelta(a, fromA);
    await a.next((m) => m.body === 'fence' && m.fence.vdiskId === vdiskId, 5000, fromA);
    // Fenced, but a may not know: it may still read zeros from segment 2, so b's write is not let go.
    await sleep(100);
    expect(hasReply(b, f.faultId, fromB), 'no final answer right after the fence').to.equal(false);
    const r = await f.reply();
    const at = performance.now();
    expect(r.action).to.equal(FaultAction.Retry);
    expect(r.tableVersion).to.be.at.least(version);
    // Safety, not timing: never before a's lease (counted from before its last answered heartbeat) plus margin.
    expect(at - lastBeat).to.be.at.least(LEASE_MS + MARGIN_MS);
    // Done without a: it never acked.
    expect(c.db.export(vdiskId, 'a')?.ackedVersion).to.be.below(version);
    expect(c.db.segment(vdiskId, 2).state).to.equal(SegmentState.Normal);
  });

  it('does not answer heartbeats of a fenced agent until it has resynced, so its lease runs out while its stream is open', async () => {
    const { vdiskId, a, b } = await setup();
    a.autoAck = false;
    const lastBeat = heartbeat(a, 1);
    await a.next((m) => m.body === 'heartbeatReply' && m.heartbeatReply.seq === 1);
    const fromA = a.received.length;
    const fromB = b.received.length;
    const f = b.sendFault({ vdiskId, segment: 2, op: 1, lba: 2 * 2048, blocks: 8, state: SegmentState.Zero, tableVersion: 1 });
    await a.next((m) => m.body === 'fence' && m.fence.vdiskId === vdiskId, 5000, fromA);
    // a keeps talking: heard but not answered, so its lease is not renewed and
    // the change goes ahead once the lease from heartbeat 1 is surely over
    // (answered, these would hold b's write as long as they came).
    let seq = 2;
    const beats = setInterval(() => heartbeat(a, seq++), 100);
    try {
      const r = await f.reply();
      expect(r.action).to.equal(FaultAction.Retry);
      expect(performance.now() - lastBeat).to.be.at.least(LEASE_MS + MARGIN_MS);
    } finally {
      clearInterval(beats);
    }
    expect(seq, 'a sent heartbeats while fenced').to.be.above(3);
    for (let s = 2; s < seq; s++) expect(answered(a, s), `heartbeat ${s} of fenced a`).to.equal(false);
    expect(hasReply(b, f.faultId, fromB)).to.equal(true);
    // Resync: the whole table, acked; heartbeats are answered again.
    a.autoAck = true;
    const from = a.received.length;
    a.stream.write({ body: 'tableRequest', tableRequest: { vdiskId, haveVersion: 1, reason: 'fenced' } });
    await a.next((m) => m.body === 'tableFull', 5000, from);
    heartbeat(a, 1000);
    await a.next((m) => m.body === 'heartbeatReply' && m.heartbeatReply.seq === 1000, 5000, from);
    expect(a.tables.get(vdiskId)!.stateOf(2)).to.equal(SegmentState.Normal);
  });

  it('does not reply to a release (normal to zero) while a, connected but silent, has not acked; replies once it acks', async () => {
    const { vdiskId, a, b, c } = await setup();
    a.autoAck = false;
    const fromA = a.received.length;
    const reply = sendRelease(b, vdiskId, 1, 7);
    const version = await lastDelta(a, fromA);
    await a.next((m) => m.body === 'fence' && m.fence.vdiskId === vdiskId, 5000, fromA);
    // Well past any lease of a: it may still read and write segment 1 as normal, so no reply.
    await sleep(LEASE_MS + MARGIN_MS + 500);
    expect(reply(), 'no release reply while a may still use the old location').to.equal(undefined);
    a.ack(vdiskId, version);
    const deadline = performance.now() + 5000;
    while (reply() === undefined && performance.now() < deadline) await sleep(20);
    expect(reply()).to.deep.include({ ok: true, error: '' });
    expect(reply()?.tableVersion).to.be.at.least(version);
    expect(c.db.segment(vdiskId, 1).state).to.equal(SegmentState.Zero);
  });

  it("replies to that release once a's export is removed (tabula export rm does not wait for a)", async () => {
    const { vdiskId, a, b, c } = await setup();
    a.autoAck = false;
    const fromA = a.received.length;
    const reply = sendRelease(b, vdiskId, 1, 8);
    await lastDelta(a, fromA);
    await a.next((m) => m.body === 'fence' && m.fence.vdiskId === vdiskId, 5000, fromA);
    await sleep(LEASE_MS + MARGIN_MS + 500);
    expect(reply(), 'no release reply while a is exported').to.equal(undefined);
    c.admin.RemoveExport({ vdisk: 'd', agent: 'a' });
    const deadline = performance.now() + 5000;
    while (reply() === undefined && performance.now() < deadline) await sleep(20);
    expect(reply()).to.deep.include({ ok: true, error: '' });
    expect(c.db.segment(vdiskId, 1).state).to.equal(SegmentState.Zero);
  });

  it('lets the change go on when a slow agent acks after the ack timeout', async () => {
    // A lease far longer than the test: only the ack can let b's write go.
    const { vdiskId, a, b, c } = await setup(60_000);
    a.autoAck = false;
    const fromA = a.received.length;
    const fromB = b.received.length;
    const f = b.sendFault({ vdiskId, segment: 3, op: 1, lba: 3 * 2048, blocks: 8, state: SegmentState.Zero, tableVersion: 1 });
    const version = await lastDelta(a, fromA);
    await a.next((m) => m.body === 'fence' && m.fence.vdiskId === vdiskId, 5000, fromA);
    await sleep(200);
    expect(hasReply(b, f.faultId, fromB), 'held while a has not acked').to.equal(false);
    a.ack(vdiskId, version);
    const r = await f.reply();
    expect(r.action).to.equal(FaultAction.Retry);
    expect(c.db.export(vdiskId, 'a')?.ackedVersion).to.be.at.least(version);
    expect(a.tables.get(vdiskId)!.stateOf(3)).to.equal(SegmentState.Normal);
  });
});
