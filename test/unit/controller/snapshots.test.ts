import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { SegmentState } from '../../../src/table/index.js';
import { FaultAction } from '../../../src/wire/proto-types.js';
import { AdminError } from '../../../src/controller/admin.js';
import { checkInvariants } from '../../../src/controller/check.js';
import { CA, CB, FakeAgent, MiB, containerRef, sleep, startTestController, until } from './helpers.js';

type Ctl = Awaited<ReturnType<typeof startTestController>>;
type AgentOpts = ConstructorParameters<typeof FakeAgent>[2];

const NORMAL = SegmentState.Normal;
const NO_WRITE = SegmentState.NoWrite;

describe('controller snapshots, clones and copy-on-write', () => {
  let ctl: Ctl;
  const agents: FakeAgent[] = [];

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await ctl?.cleanup();
  });

  /** DB rows of a vdisk as [seg, state, container, offset]. */
  const rows = (vdisk: string): [number, number, string | null, number | null][] => {
    const id = ctl.db.findVdisk(vdisk)!.id;
    return ctl.db.segmentRows(id).map((r) => [r.seg, r.state, r.containerId, r.offset]);
  };
  const refcount = (c: string, o: number): number =>
    (ctl.db.sql.prepare('SELECT refcount FROM container_segments WHERE container_id = ? AND offset = ?').pluck().get(c, o) as number | undefined) ?? 0;
  const clean = (): void => {
    expect(checkInvariants(ctl.db)).to.deep.equal([]);
  };

  /**
   * Container CA (8 segments); vdisk d of 4 segments with segments 0 and 1
   * written (CA offsets 0 and 1); exported on the named agents.
   */
  async function setup(names: string[], opts: AgentOpts = {}): Promise<{ id: string; as: FakeAgent[] }> {
    ctl = await startTestController();
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 4 * MiB });
    await ctl.admin.SetSegmentState({ vdisk: 'd', first: 0, count: 2, state: NORMAL });
    const as: FakeAgent[] = [];
    for (const n of names) {
      const a = new FakeAgent(ctl.address, n, { containers: [containerRef(CA, 8)], ...opts });
      agents.push(a);
      await a.register();
      ctl.admin.AddExport({ vdisk: 'd', agent: n });
      await a.next((m) => m.body === 'tableFull');
      as.push(a);
    }
    return { id: v.id, as };
  }

  it('snapshot: shares every allocated segment, no-write in both tables, counts +1, done only after every exporter acked', async () => {
    const { id, as } = await setup(['a1', 'a2']);
    const [a1, a2] = as as [FakeAgent, FakeAgent];
    a2.autoAck = false;
    let done = false;
    const p = ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's1' }).then((r) => {
      done = true;
      return r;
    });
    const delta = await a2.next((m) => m.body === 'tableDelta');
    await sleep(100);
    expect(done, 'not done before a2 acked').to.equal(false);
    if (delta.body === 'tableDelta') a2.ack(id, delta.tableDelta.toVersion);
    const snap = await p;
    expect(snap).to.deep.include({ name: 's1', kind: 'snapshot', parent: 'd', parentId: id, segmentCount: 4, segmentsAllocated: 2 });
    expect(snap.sharedBytes).to.equal(2 * MiB);
    expect(snap.exclusiveBytes).to.equal(0);
    expect(rows('d')).to.deep.equal([
      [0, NO_WRITE, CA, 0],
      [1, NO_WRITE, CA, 1],
    ]);
    expect(rows('s1')).to.deep.equal([
      [0, NO_WRITE, CA, 0],
      [1, NO_WRITE, CA, 1],
    ]);
    expect([refcount(CA, 0), refcount(CA, 1)]).to.deep.equal([2, 2]);
    for (const a of [a1, a2]) {
      const t = a.tables.get(id)!;
      expect([t.get(0).state, t.get(1).state, t.get(2).state]).to.deep.equal([NO_WRITE, NO_WRITE, SegmentState.Zero]);
    }
    const c = ctl.admin.ListContainers({}).containers[0]!;
    expect(c).to.deep.include({ capacityBytes: 8 * MiB, allocatedBytes: 2 * MiB, sharedBytes: 2 * MiB, exclusiveBytes: 0, freeBytes: 6 * MiB });
    const d = ctl.admin.ShowVdisk({ name: 'd' });
    expect(d).to.deep.include({ kind: 'vdisk', sharedBytes: 2 * MiB, exclusiveBytes: 0, allocatedBytes: 2 * MiB, size: 4 * MiB });
    clean();
    // A snapshot of a snapshot is refused; the name must be new.
    const again = await ctl.admin.SnapshotVdisk({ vdisk: 's1', name: 's2' }).catch((e: AdminError) => e);
    expect((again as AdminError).code).to.equal(grpc.status.FAILED_PRECONDITION);
    const dup = await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's1' }).catch((e: AdminError) => e);
    expect((dup as AdminError).code).to.equal(grpc.status.ALREADY_EXISTS);
  });

  it('copy-on-write: fault -> CopyCommand -> CopyDone -> new mapping (normal) -> RETRY; the snapshot keeps the old data', async () => {
    const { id, as } = await setup(['a1']);
    const a = as[0]!;
    await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's1' });
    const f = a.sendFault({ vdiskId: id, segment: 1, op: 1, state: NO_WRITE });
    const r = await f.reply();
    expect(r.action).to.equal(FaultAction.Retry);
    expect(a.copies).to.have.length(1);
    const cmd = a.copies[0]!;
    // Old location CA@1 to the one free location the allocator hands out next (CA@2).
    expect(cmd).to.deep.include({ srcContainer: CA, srcOffset: 1 * MiB, dstContainer: CA, dstOffset: 2 * MiB, length: MiB });
    // Order on the wire: copy, its answer, the new table, the ack, then RETRY.
    const ev = a.events.filter((e) => !e.startsWith('full'));
    const iDelta = ev.findIndex((e, i) => e.startsWith('delta') && i > ev.indexOf(`copyDone ${cmd.commandId}`));
    expect(iDelta).to.be.greaterThan(ev.indexOf(`copy ${cmd.commandId}`));
    expect(ev.indexOf(`reply ${f.faultId} 0`)).to.be.greaterThan(iDelta);
    expect(r.tableVersion).to.equal(a.tables.get(id)!.version);
    expect(a.tables.get(id)!.get(1)).to.deep.include({ state: NORMAL, container: CA, offset: 2 });
    expect(rows('d')).to.deep.equal([
      [0, NO_WRITE, CA, 0],
      [1, NORMAL, CA, 2],
    ]);
    expect(rows('s1')).to.deep.equal([
      [0, NO_WRITE, CA, 0],
      [1, NO_WRITE, CA, 1],
    ]);
    expect([refcount(CA, 0), refcount(CA, 1), refcount(CA, 2)]).to.deep.equal([2, 1, 1]);
    expect(ctl.admin.ListFaults({ vdisk: 'd' }).faults[0]).to.deep.include({ segment: 1, state: 'no-write', outcome: 'retry' });
    clean();
  });

  it('a location left with one writable holder becomes writable again (clone of a vdisk, written on the vdisk)', async () => {
    const { id, as } = await setup(['a1']);
    const a = as[0]!;
    const clone = await ctl.admin.CloneVdisk({ source: 'd', name: 'c1' });
    expect(clone).to.deep.include({ kind: 'vdisk', parent: 'd', sharedBytes: 2 * MiB });
    expect(rows('c1')).to.deep.equal([
      [0, NO_WRITE, CA, 0],
      [1, NO_WRITE, CA, 1],
    ]);
    expect((await a.sendFault({ vdiskId: id, segment: 0, op: 1, state: NO_WRITE }).reply()).action).to.equal(FaultAction.Retry);
    // d got a copy at CA@2; CA@0 is the clone's alone now, and writable there.
    expect(rows('d')[0]).to.deep.equal([0, NORMAL, CA, 2]);
    await until(() => rows('c1')[0]![1] === NORMAL, 2000, 'clone segment 0 writable');
    expect(rows('c1')).to.deep.equal([
      [0, NORMAL, CA, 0],
      [1, NO_WRITE, CA, 1],
    ]);
    expect(refcount(CA, 0)).to.equal(1);
    expect(ctl.admin.ShowVdisk({ name: 'c1' })).to.deep.include({ sharedBytes: MiB, exclusiveBytes: MiB });
    clean();
  });

  it('two concurrent write faults on one shared segment (two agents) copy once', async () => {
    const { id, as } = await setup(['a1', 'a2'], { copy: 'manual' });
    const [a1, a2] = as as [FakeAgent, FakeAgent];
    await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's1' });
    const f1 = a1.sendFault({ vdiskId: id, segment: 0, op: 1, state: NO_WRITE });
    const f2 = a2.sendFault({ vdiskId: id, segment: 0, op: 4, state: NO_WRITE });
    const f3 = a1.sendFault({ vdiskId: id, segment: 0, op: 2, state: NO_WRITE });
    await until(() => a1.copies.length + a2.copies.length > 0, 2000, 'a copy command');
    await sleep(100);
    // The faulting agent that came first copies.
    expect(a1.copies).to.have.length(1);
    expect(a2.copies).to.have.length(0);
    a1.copyDone(a1.copies[0]!.commandId);
    const replies = await Promise.all([f1.reply(), f2.reply(), f3.reply()]);
    expect(replies.map((r) => r.action)).to.deep.equal([FaultAction.Retry, FaultAction.Retry, FaultAction.Retry]);
    expect(a1.copies.length + a2.copies.length).to.equal(1);
    expect(refcount(CA, 0)).to.equal(1);
    expect(ctl.db.containerSegmentsUsed(CA)).to.equal(3);
    expect(a1.tables.get(id)!.get(0)).to.deep.equal(a2.tables.get(id)!.get(0));
    clean();
  });

  it('clone of a snapshot: writable, copy-on-write on first write, snapshot and vdisk unchanged', async () => {
    const { as } = await setup(['a1']);
    const a = as[0]!;
    await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's1' });
    const c = await ctl.admin.CloneVdisk({ source: 's1', name: 'c1' });
    expect(c).to.deep.include({ kind: 'vdisk', parent: 's1' });
    expect([refcount(CA, 0), refcount(CA, 1)]).to.deep.equal([3, 3]);
    clean();
    ctl.admin.AddExport({ vdisk: 'c1', agent: 'a1', lun: 1 });
    await a.next((m) => m.body === 'tableFull' && m.tableFull.vdiskId === c.id);
    expect((await a.sendFault({ vdiskId: c.id, segment: 1, op: 1, state: NO_WRITE }).reply()).action).to.equal(FaultAction.Retry);
    expect(rows('c1')).to.deep.equal([
      [0, NO_WRITE, CA, 0],
      [1, NORMAL, CA, 2],
    ]);
    expect(rows('s1')[1]).to.deep.equal([1, NO_WRITE, CA, 1]);
    expect(rows('d')[1]).to.deep.equal([1, NO_WRITE, CA, 1]);
    expect([refcount(CA, 0), refcount(CA, 1), refcount(CA, 2)]).to.deep.equal([3, 2, 1]);
    // A write to the zero segment of the clone allocates as usual.
    expect((await a.sendFault({ vdiskId: c.id, segment: 3, op: 1, state: SegmentState.Zero }).reply()).action).to.equal(FaultAction.Retry);
    clean();
  });

  it('snapshots are read-only: writes FAIL with DATA PROTECT, exports are forced read-only', async () => {
    const { as } = await setup(['a1']);
    const a = as[0]!;
    const s = await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's1' });
    const e = ctl.admin.AddExport({ vdisk: 's1', agent: 'a1', lun: 1 });
    expect(e.readOnly).to.equal(true);
    await a.next((m) => m.body === 'tableFull' && m.tableFull.vdiskId === s.id);
    for (const [seg, state] of [
      [0, NO_WRITE],
      [3, SegmentState.Zero],
    ] as const) {
      const r = await a.sendFault({ vdiskId: s.id, segment: seg, op: 1, state }).reply();
      expect([r.action, r.senseKey, r.asc, r.ascq]).to.deep.equal([FaultAction.Fail, 0x07, 0x27, 0x00]);
    }
    expect(a.copies).to.have.length(0);
    const rd = await a.sendFault({ vdiskId: s.id, segment: 0, op: 0, state: NO_WRITE }).reply();
    expect(rd.action).to.equal(FaultAction.Retry);
    const err = await ctl.admin.ResizeVdisk({ name: 's1', size: 8 * MiB }).catch((x: AdminError) => x);
    expect((err as AdminError).code).to.equal(grpc.status.FAILED_PRECONDITION);
    const setN = await ctl.admin.SetSegmentState({ vdisk: 'd', first: 0, count: 1, state: NORMAL }).catch((x: AdminError) => x);
    expect((setN as AdminError).code, 'a shared segment cannot be made writable by hand').to.equal(grpc.status.FAILED_PRECONDITION);
    clean();
  });

  it('a failed copy answers FAIL with the reason and frees the new location', async () => {
    const { id, as } = await setup(['a1']);
    const a = as[0]!;
    await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's1' });
    const free = ctl.controller.allocator.freeSegments(CA);
    a.copyError = 'EIO reading container';
    const r = await a.sendFault({ vdiskId: id, segment: 0, op: 1, state: NO_WRITE }).reply();
    expect([r.action, r.senseKey, r.asc]).to.deep.equal([FaultAction.Fail, 0x04, 0x44]);
    expect(r.reason).to.match(/copy-on-write of vdisk d segment 0 failed: agent a1 could not copy .*EIO reading container/);
    expect(ctl.controller.allocator.reservedCount).to.equal(0);
    // The copy may have written there: free again once scrubbed.
    await until(() => ctl.controller.allocator.freeSegments(CA) === free, 2000, 'new location scrubbed and free');
    expect(rows('d')[0]).to.deep.equal([0, NO_WRITE, CA, 0]);
    a.copyError = null;
    expect((await a.sendFault({ vdiskId: id, segment: 0, op: 1, state: NO_WRITE }).reply()).action).to.equal(FaultAction.Retry);
    clean();
  });

  it('refuses a snapshot while an exporting agent is offline, or with error segments', async () => {
    const { as } = await setup(['a1', 'a2']);
    as[1]!.close();
    await until(() => ctl.controller.agents.link('a2') === undefined, 2000, 'a2 offline');
    const err = await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's1' }).catch((e: AdminError) => e);
    expect((err as AdminError).code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect((err as Error).message).to.match(/agent a2 exports it but is offline/);
    expect(ctl.db.vdiskByName('s1')).to.equal(undefined);
    ctl.admin.RemoveExport({ vdisk: 'd', agent: 'a2' });
    await ctl.admin.SetSegmentState({ vdisk: 'd', first: 1, count: 1, state: SegmentState.Error });
    const err2 = await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's1' }).catch((e: AdminError) => e);
    expect((err2 as Error).message).to.match(/1 segment is error/);
    clean();
  });

  it('rm: refuses an exported snapshot; frees what reaches zero and makes the rest writable again', async () => {
    const { id, as } = await setup(['a1']);
    const a = as[0]!;
    await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's1' });
    await a.sendFault({ vdiskId: id, segment: 0, op: 1, state: NO_WRITE }).reply(); // d seg 0 -> CA@2
    await ctl.admin.CloneVdisk({ source: 's1', name: 'c1' });
    expect([refcount(CA, 0), refcount(CA, 1), refcount(CA, 2)]).to.deep.equal([2, 3, 1]);
    ctl.admin.AddExport({ vdisk: 's1', agent: 'a1', lun: 1 });
    expect(() => ctl.admin.RemoveVdisk({ name: 's1' })).to.throw(AdminError, /exported on a1; remove the exports first/);
    ctl.admin.RemoveExport({ vdisk: 's1', agent: 'a1' });
    await ctl.admin.RemoveVdisk({ name: 's1' });
    expect([refcount(CA, 0), refcount(CA, 1)]).to.deep.equal([1, 2]);
    // CA@0 is the clone's alone: writable there; CA@1 is still shared by d and c1.
    expect(rows('c1')).to.deep.equal([
      [0, NORMAL, CA, 0],
      [1, NO_WRITE, CA, 1],
    ]);
    clean();
    await ctl.admin.RemoveVdisk({ name: 'c1' });
    await until(() => ctl.db.containerSegmentsUsed(CA) === 2, 2000, 'c1\'s own segment scrubbed and free');
    // d's segment 1 is its own again: writable, pushed to the exporting agent.
    await until(() => a.tables.get(id)!.get(1).state === NORMAL, 2000, 'd segment 1 writable on a1');
    expect(rows('d')).to.deep.equal([
      [0, NORMAL, CA, 2],
      [1, NORMAL, CA, 1],
    ]);
    const c = ctl.admin.ListContainers({}).containers[0]!;
    expect(c).to.deep.include({ allocatedBytes: 2 * MiB, sharedBytes: 0, exclusiveBytes: 2 * MiB });
    clean();
  });

  it('resize: grow any time (segment count in the delta, size in the export set); shrink only forced and unexported', async () => {
    const { id, as } = await setup(['a1']);
    const a = as[0]!;
    const grown = await ctl.admin.ResizeVdisk({ name: 'd', size: 6 * MiB });
    expect(grown).to.deep.include({ size: 6 * MiB, segmentCount: 6 });
    const delta = await a.next((m) => m.body === 'tableDelta' && m.tableDelta.segmentCount === 6);
    expect(delta.body === 'tableDelta' && delta.tableDelta.vdiskId).to.equal(id);
    await a.next((m) => m.body === 'exportSet' && m.exportSet.exports[0]?.size === 6 * MiB);
    expect(a.tables.get(id)!.segmentCount).to.equal(6);
    const noForce = await ctl.admin.ResizeVdisk({ name: 'd', size: MiB }).catch((e: AdminError) => e);
    expect((noForce as AdminError).code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect((noForce as Error).message).to.match(/needs --force/);
    const exported = await ctl.admin.ResizeVdisk({ name: 'd', size: MiB, force: true }).catch((e: AdminError) => e);
    expect((exported as AdminError).code).to.equal(grpc.status.FAILED_PRECONDITION);
    ctl.admin.RemoveExport({ vdisk: 'd', agent: 'a1' });
    await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's1' });
    const shrunk = await ctl.admin.ResizeVdisk({ name: 'd', size: MiB, force: true });
    expect(shrunk).to.deep.include({ size: MiB, segmentCount: 1, segmentsAllocated: 1 });
    // Segment 1 was shared with the snapshot: it stays for the snapshot.
    expect([refcount(CA, 0), refcount(CA, 1)]).to.deep.equal([2, 1]);
    expect(ctl.admin.GetTable({ name: 'd' }).segmentCount).to.equal(1);
    clean();
  });

  it('check() catches planted violations of the sharing rules', async () => {
    await setup([]);
    await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's1' });
    clean();
    const raw = (q: string, ...args: unknown[]) => {
      ctl.db.sql.pragma('foreign_keys = OFF');
      ctl.db.sql.prepare(q).run(...args);
      ctl.db.sql.pragma('foreign_keys = ON');
    };
    const sid = ctl.db.vdiskByName('s1')!.id;
    const did = ctl.db.vdiskByName('d')!.id;
    raw('UPDATE segments SET state = ? WHERE vdisk_id = ? AND seg = 0', NORMAL, sid);
    raw('UPDATE segments SET state = ? WHERE vdisk_id = ? AND seg = 0', NORMAL, did);
    raw('UPDATE container_segments SET refcount = 1 WHERE container_id = ? AND offset = 1', CA);
    raw("INSERT INTO exports (vdisk_id, agent, target_iqn, lun, read_only) VALUES (?, 'x', 'iqn.2026-11.org.tabula:s1', 0, 0)", sid);
    const v = checkInvariants(ctl.db);
    expect(v).to.include(`container ${CA} offset 0 is referenced 2 times but vdisk d segment 0 is normal, not no-write`);
    // Writers are listed by vdisk id (random UUIDs): either order.
    expect(v).to.satisfy((list: string[]) =>
      [`vdisk d segment 0, vdisk s1 segment 0`, `vdisk s1 segment 0, vdisk d segment 0`].some((w) =>
        list.includes(`container ${CA} offset 0 is shared by 2 vdisks and writable by ${w}`),
      ),
    );
    expect(v).to.include('snapshot s1 segment 0 is normal (writable); snapshots are read-only');
    expect(v).to.include(`container ${CA} offset 1 has reference count 1 but 2 table entries reference it`);
    expect(v).to.include('snapshot s1 is exported writable on agent x');
    // Something shared in the free map.
    raw('DELETE FROM container_segments WHERE container_id = ? AND offset = 1', CA);
    expect(checkInvariants(ctl.db)).to.include(`vdisk s1 segment 1 references container ${CA} offset 1, which is in the free map`);
    expect(CB).to.be.a('string');
  });
});
