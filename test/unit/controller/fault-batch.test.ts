import { expect } from 'chai';
import { SegmentState } from '../../../src/table/index.js';
import { FaultAction } from '../../../src/wire/proto-types.js';
import { CA, FakeAgent, MiB, containerRef, sleep, startTestController } from './helpers.js';

type Ctl = Awaited<ReturnType<typeof startTestController>>;

// Allocation faults of one vdisk that queue behind a running change are
// allocated together: one table change, one delta, one ack (faults.ts, AllocBatch).
describe('controller: allocation faults of one vdisk batched into one table change', () => {
  let ctl: Ctl;
  const agents: FakeAgent[] = [];

  /** Container CA (`free` segments), thin vdisk `d` of 8 segments exported on the given agents. */
  async function setup(names: string[], free = 16): Promise<{ vdiskId: string; as: FakeAgent[] }> {
    ctl = await startTestController();
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: (free + 1) * MiB, dataOffset: MiB });
    const as: FakeAgent[] = [];
    for (const n of names) {
      const a = new FakeAgent(ctl.address, n, { containers: [containerRef(CA, free)] });
      agents.push(a);
      await a.register();
      as.push(a);
    }
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 8 * MiB });
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

  const deltas = (a: FakeAgent): string[] => a.events.filter((e) => e.startsWith('delta'));

  it('allocates the zero segments whose faults waited behind a change in one change, and answers each RETRY', async () => {
    const { vdiskId, as } = await setup(['a1']);
    const a = as[0]!;
    a.autoAck = false;
    const first = a.sendFault({ vdiskId, segment: 0, op: 1 });
    expect((await first.reply()).action).to.equal(FaultAction.Retry);
    const v1 = a.tables.get(vdiskId)!.version;
    // Not acked yet: these queue behind the first change.
    const rest = [1, 2, 5].map((segment) => a.sendFault({ vdiskId, segment, op: 1 }));
    // Two faults on one segment join its case, as always.
    const again = a.sendFault({ vdiskId, segment: 2, op: 3 });
    await sleep(100);
    expect(deltas(a), 'nothing before the ack').to.have.length(1);
    a.autoAck = true;
    a.ack(vdiskId, v1);
    const replies = await Promise.all([...rest, again].map((f) => f.reply()));
    expect(replies.map((r) => r.action)).to.deep.equal([FaultAction.Retry, FaultAction.Retry, FaultAction.Retry, FaultAction.Retry]);
    expect(deltas(a), 'one change for the three segments').to.deep.equal([`delta ${v1 - 1}->${v1}`, `delta ${v1}->${v1 + 1}`]);
    for (const r of replies) expect(r.tableVersion).to.equal(v1 + 1);
    const t = a.tables.get(vdiskId)!;
    expect([0, 1, 2, 3, 4, 5].map((s) => t.stateOf(s))).to.deep.equal([
      SegmentState.Normal,
      SegmentState.Normal,
      SegmentState.Normal,
      SegmentState.Zero,
      SegmentState.Zero,
      SegmentState.Normal,
    ]);
    const offsets = new Set([0, 1, 2, 5].map((s) => t.containerOffsetOf(s)));
    expect(offsets.size, 'distinct locations').to.equal(4);
    expect(ctl.db.containerSegmentsUsed(CA)).to.equal(4);
    expect(ctl.admin.Check({}).violations).to.deep.equal([]);
    const log = ctl.admin.ListFaults({ vdisk: 'd' }).faults;
    expect(log.map((f) => [f.segment, f.outcome]).sort()).to.deep.equal([
      [0, 'retry'],
      [1, 'retry'],
      [2, 'retry'],
      [2, 'retry'],
      [5, 'retry'],
    ]);
  });

  it('logs a fault answered WAIT and then RETRY once, with its last outcome and the reason it waited', async () => {
    const { vdiskId, as } = await setup(['a1']);
    const a = as[0]!;
    await ctl.admin.SetSegmentState({ vdisk: 'd', first: 3, count: 1, state: SegmentState.Invalid });
    const held = a.sendFault({ vdiskId, segment: 3, op: 0, state: SegmentState.Invalid });
    expect((await held.reply(true)).action).to.equal(FaultAction.Wait);
    expect(ctl.admin.ListFaults({ vdisk: 'd' }).faults.map((f) => [f.segment, f.outcome, f.detail])).to.deep.equal([[3, 'wait', 'segment is invalid']]);
    await ctl.admin.SetSegmentState({ vdisk: 'd', first: 3, count: 1, state: SegmentState.Zero });
    expect((await held.reply()).action).to.equal(FaultAction.Retry);
    expect(ctl.admin.ListFaults({ vdisk: 'd' }).faults.map((f) => [f.segment, f.outcome, f.detail])).to.deep.equal([[3, 'retry', 'segment is invalid']]);
  });

  it('with several holders, answers the batch RETRY once every holder has acked it', async () => {
    const { vdiskId, as } = await setup(['a1', 'a2']);
    const [a1, a2] = as as [FakeAgent, FakeAgent];
    a2.autoAck = false;
    const first = a1.sendFault({ vdiskId, segment: 0, op: 1 });
    await a2.next((m) => m.body === 'tableDelta');
    const rest = [a1.sendFault({ vdiskId, segment: 3, op: 1 }), a2.sendFault({ vdiskId, segment: 4, op: 1 })];
    await sleep(100);
    const from = a2.received.length;
    a2.ack(vdiskId, a2.tables.get(vdiskId)!.version);
    await a2.next((m) => m.body === 'tableDelta', 5000, from);
    await sleep(100);
    expect(a1.events.filter((e) => e.startsWith('reply') && !e.startsWith(`reply ${first.faultId} `)), 'no RETRY before a2 acks the batch').to.deep.equal([]);
    expect(a2.events.filter((e) => e.startsWith('reply'))).to.deep.equal([]);
    a2.autoAck = true;
    a2.ack(vdiskId, a2.tables.get(vdiskId)!.version);
    const replies = await Promise.all([first, ...rest].map((f) => f.reply()));
    expect(replies.map((r) => r.action)).to.deep.equal([FaultAction.Retry, FaultAction.Retry, FaultAction.Retry]);
    expect(deltas(a1), 'one change for both segments').to.have.length(2);
    expect(a1.tables.get(vdiskId)!.stateOf(3)).to.equal(SegmentState.Normal);
    expect(a2.tables.get(vdiskId)!.stateOf(4)).to.equal(SegmentState.Normal);
    expect(ctl.admin.Check({}).violations).to.deep.equal([]);
  });

  it('fails only the faults of a batch that found no room; the others get their segment', async () => {
    const { vdiskId, as } = await setup(['a1'], 3);
    const a = as[0]!;
    a.autoAck = false;
    const first = a.sendFault({ vdiskId, segment: 0, op: 1 });
    expect((await first.reply()).action).to.equal(FaultAction.Retry);
    const v1 = a.tables.get(vdiskId)!.version;
    const rest = [1, 2, 3].map((segment) => a.sendFault({ vdiskId, segment, op: 1 }));
    await sleep(100);
    a.autoAck = true;
    a.ack(vdiskId, v1);
    const replies = await Promise.all(rest.map((f) => f.reply()));
    const actions = replies.map((r) => r.action);
    expect(actions.filter((x) => x === FaultAction.Retry), 'two had room').to.have.length(2);
    const failed = replies.filter((r) => r.action === FaultAction.Fail);
    expect(failed.map((r) => [r.senseKey, r.asc, r.ascq])).to.deep.equal([[0x07, 0x27, 0x07]]);
    expect(deltas(a), 'one change for the two that had room').to.have.length(2);
    expect(ctl.db.containerSegmentsUsed(CA)).to.equal(3);
    expect(ctl.admin.Check({}).violations).to.deep.equal([]);
  });
});
