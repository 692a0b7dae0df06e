// Segment write ownership (COMPARE AND WRITE across agents): the decision
// row, the exporter count and owner number in Export, and ownership moving
// to the agent whose write or CAW faulted on it, once per segment.
import { expect } from 'chai';
import { IoOp, SegmentState } from '../../../src/table/index.js';
import { FaultAction, type Export } from '../../../src/wire/proto-types.js';
import { decide } from '../../../src/controller/faults.js';
import { CA, FakeAgent, MiB, containerRef, sleep, startTestController } from './helpers.js';

type Ctl = Awaited<ReturnType<typeof startTestController>>;

describe('controller: decide() for segment ownership', () => {
  const normal = SegmentState.Normal;
  it('moves ownership for a write-like op on a segment another agent owns, reported no-write', () => {
    for (const op of [IoOp.Write, IoOp.Unmap, IoOp.WriteSame, IoOp.CompareAndWrite]) {
      expect(decide(normal, op, 1, { owner: 2, agent: 1, reported: SegmentState.NoWrite }).kind).to.equal('take-ownership');
    }
    expect(decide(normal, IoOp.Read, 1, { owner: 2, agent: 1, reported: SegmentState.NoWrite }).kind).to.equal('retry');
    expect(decide(normal, IoOp.Write, 1, { owner: 1, agent: 1, reported: SegmentState.NoWrite }).kind).to.equal('retry');
  });

  it('a CAW on an unowned segment takes ownership only when the vdisk is shared', () => {
    expect(decide(normal, IoOp.CompareAndWrite, 1, { owner: 0, agent: 1, shared: true, reported: SegmentState.NoWrite }).kind).to.equal('take-ownership');
    expect(decide(normal, IoOp.CompareAndWrite, 1, { owner: 0, agent: 1, shared: false, reported: SegmentState.NoWrite }).kind).to.equal('retry');
    expect(decide(normal, IoOp.Write, 1, { owner: 0, agent: 1, shared: true, reported: SegmentState.NoWrite }).kind).to.equal('retry');
  });

  it('a fault on a state that has changed since (reported zero) is answered RETRY: it faults again if ownership still stops it', () => {
    expect(decide(normal, IoOp.CompareAndWrite, 1, { owner: 2, agent: 1, shared: true, reported: SegmentState.Zero }).kind).to.equal('retry');
    // Other states decide as before, owners aside.
    expect(decide(SegmentState.Zero, IoOp.CompareAndWrite, 0, { owner: 2, agent: 1, shared: true, reported: SegmentState.Zero }).kind).to.equal('allocate');
  });
});

describe('controller: segment write ownership (fake agents over loopback gRPC)', () => {
  let ctl: Ctl;
  const agents: FakeAgent[] = [];

  /** Container CA, thin vdisk `d` of 4 segments exported on the given agents, segment 1 allocated. */
  async function setup(names: string[]): Promise<{ vdiskId: string; as: FakeAgent[] }> {
    ctl = await startTestController({});
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const as: FakeAgent[] = [];
    for (const n of names) {
      const a = new FakeAgent(ctl.address, n, { containers: [containerRef(CA, 8)] });
      agents.push(a);
      await a.register();
      as.push(a);
    }
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 4 * MiB });
    for (const a of as) {
      ctl.admin.AddExport({ vdisk: 'd', agent: a.name });
      await a.next((m) => m.body === 'tableFull');
    }
    const r = await as[0]!.sendFault({ vdiskId: v.id, segment: 1, op: IoOp.Write, state: SegmentState.Zero }).reply();
    expect(r.action).to.equal(FaultAction.Retry);
    return { vdiskId: v.id, as };
  }

  function lastExport(a: FakeAgent): Export {
    const sets = a.received.filter((m) => m.body === 'exportSet');
    const last = sets[sets.length - 1];
    if (last?.body !== 'exportSet') throw new Error(`${a.name}: no export set`);
    return last.exportSet.exports[0] as Export;
  }

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await ctl?.cleanup();
  });

  it('Export tells every exporter how many agents export the vdisk and its own owner number, again when that changes', async () => {
    const { as } = await setup(['a1', 'a2']);
    const [a1, a2] = as as [FakeAgent, FakeAgent];
    expect(lastExport(a1).portGroups?.length).to.equal(2);
    expect(lastExport(a2).portGroups?.length).to.equal(2);
    expect(lastExport(a1).ownPortGroup).to.equal(ctl.db.agentNumber('a1'));
    expect(lastExport(a2).ownPortGroup).to.equal(ctl.db.agentNumber('a2'));
    expect(lastExport(a1).ownPortGroup).to.not.equal(lastExport(a2).ownPortGroup);
    ctl.admin.RemoveExport({ vdisk: 'd', agent: 'a2' });
    await a1.next((m) => m.body === 'exportSet' && m.exportSet.exports[0]?.portGroups?.length === 1);
  });

  it('a CAW fault on an unowned segment of a shared vdisk makes the agent its owner, acked by both, then RETRY', async () => {
    const { vdiskId, as } = await setup(['a1', 'a2']);
    const [a1, a2] = as as [FakeAgent, FakeAgent];
    const n2 = ctl.db.agentNumber('a2');
    const r = await a2.sendFault({ vdiskId, segment: 1, op: IoOp.CompareAndWrite, state: SegmentState.NoWrite }).reply();
    expect(r.action).to.equal(FaultAction.Retry);
    expect(a1.tables.get(vdiskId)!.ownerOf(1)).to.equal(n2);
    expect(a2.tables.get(vdiskId)!.ownerOf(1)).to.equal(n2);
    expect(a1.tables.get(vdiskId)!.get(1).state).to.equal(SegmentState.Normal);
    expect(ctl.db.segmentOwner(vdiskId, 1)).to.equal(n2);
    expect(ctl.admin.Check({}).violations).to.deep.equal([]);
    // a1 writes there: ownership moves to a1.
    const w = await a1.sendFault({ vdiskId, segment: 1, op: IoOp.Write, state: SegmentState.NoWrite }).reply();
    expect(w.action).to.equal(FaultAction.Retry);
    expect(a2.tables.get(vdiskId)!.ownerOf(1)).to.equal(ctl.db.agentNumber('a1'));
    // A full table carries the owner too (a TableRequest after a gap).
    const from = a2.received.length;
    a2.stream.write({ body: 'tableRequest', tableRequest: { vdiskId, haveVersion: 0, reason: 'test' } });
    await a2.next((m) => m.body === 'tableFull', 5000, from);
    expect(a2.tables.get(vdiskId)!.ownerOf(1)).to.equal(ctl.db.agentNumber('a1'));
  });

  it('both agents faulting together on one segment: one change at a time, at most one per agent, every fault answered RETRY', async () => {
    const { vdiskId, as } = await setup(['a1', 'a2']);
    const [a1, a2] = as as [FakeAgent, FakeAgent];
    const before = a1.events.filter((e) => e.startsWith('delta')).length;
    const f1 = a1.sendFault({ vdiskId, segment: 1, op: IoOp.CompareAndWrite, state: SegmentState.NoWrite });
    const f2 = a2.sendFault({ vdiskId, segment: 1, op: IoOp.CompareAndWrite, state: SegmentState.NoWrite });
    const replies = await Promise.all([f1.reply(), f2.reply()]);
    expect(replies.map((x) => x.action)).to.deep.equal([FaultAction.Retry, FaultAction.Retry]);
    await sleep(50);
    // Faults that join a case in progress are decided after its change, from the new owner.
    expect(a1.events.filter((e) => e.startsWith('delta')).length - before, 'ownership changes').to.be.within(1, 2);
    const owner = ctl.db.segmentOwner(vdiskId, 1);
    expect([ctl.db.agentNumber('a1'), ctl.db.agentNumber('a2')]).to.include(owner);
    expect(a1.tables.get(vdiskId)!.ownerOf(1)).to.equal(owner);
    expect(a2.tables.get(vdiskId)!.ownerOf(1)).to.equal(owner);
  });

  it('removing an owner\'s export gives its segments back to no owner; tabula check names an owner that exports nothing', async () => {
    const { vdiskId, as } = await setup(['a1', 'a2']);
    const [a1, a2] = as as [FakeAgent, FakeAgent];
    await a2.sendFault({ vdiskId, segment: 1, op: IoOp.CompareAndWrite, state: SegmentState.NoWrite }).reply();
    ctl.admin.RemoveExport({ vdisk: 'd', agent: 'a2' });
    await a1.next((m) => m.body === 'tableDelta' && m.tableDelta.extents.some((e) => e.first === 1 && !e.owner));
    expect(ctl.db.segmentOwner(vdiskId, 1)).to.equal(0);
    expect(ctl.admin.Check({}).violations).to.deep.equal([]);
    ctl.db.sql.prepare('INSERT INTO segment_owners (vdisk_id, seg, owner) VALUES (?, 2, 999)').run(vdiskId);
    expect(ctl.admin.Check({}).violations.join('\n')).to.match(/segment 2 is owned by agent number 999, which is no registered agent/);
  });
});
