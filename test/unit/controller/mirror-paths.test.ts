// The controller's paths on mirrored vdisks (copies > 1): thin first writes
// allocate a leg per copy in distinct failure domains (degraded, not failed,
// when domains run out), copy-on-write copies a healthy old leg to every new
// leg, make-writable marks the segment dirty for a stale leg's resync,
// snapshots share and removal releases every leg, a migration moves the leg
// on its from-container into a domain the other legs do not use, and
// `tabula check` holds legs to their rules.
import { expect } from 'chai';
import { IoOp, SegmentState } from '../../../src/table/index.js';
import { FaultAction } from '../../../src/wire/proto-types.js';
import { checkInvariants, checkWarnings } from '../../../src/controller/check.js';
import { containerDomains } from '../../../src/controller/domains.js';
import { segmentRefcount, sameLocations } from '../../../src/controller/faults.js';
import { join } from 'node:path';
import { ControllerDb, type Location, type VdiskRow } from '../../../src/controller/db.js';
import { CA, CB, CC, FakeAgent, MiB, containerRef, startTestController, tempDir, until } from './helpers.js';

type Ctl = Awaited<ReturnType<typeof startTestController>>;

const NORMAL = SegmentState.Normal;
const NO_WRITE = SegmentState.NoWrite;
const SEGS = 8;

describe('controller paths on mirrored vdisks', () => {
  let ctl: Ctl;
  const agents: FakeAgent[] = [];

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await ctl?.cleanup();
  });

  const clean = (): void => {
    expect(checkInvariants(ctl.db)).to.deep.equal([]);
  };
  const legs = (vdisk: string, seg: number): Location[] => ctl.db.locationsOfSegment(ctl.db.findVdisk(vdisk)!.id, seg);
  const domainsOf = (locs: readonly Location[]): string[] => {
    const d = containerDomains(ctl.db);
    return locs.map((l) => d.get(l.containerId) ?? '?');
  };

  /**
   * Containers CA (domain x), CB (domain y) and, unless `two`, CC (domain x);
   * a thin 2-copy vdisk d of 4 segments exported on one fake agent a1 that
   * reaches them all.
   */
  async function setup(opts: { two?: boolean; sameDomain?: boolean; copy?: 'ok' | 'manual'; zero?: 'ok' | 'manual' } = {}): Promise<{ id: string; a: FakeAgent }> {
    ctl = await startTestController();
    const ids = opts.two ? [CA, CB] : [CA, CB, CC];
    for (const c of ids) ctl.admin.AddContainer({ id: c, path: `/c/${c.slice(0, 8)}`, size: (SEGS + 1) * MiB, dataOffset: MiB });
    ctl.db.setContainerDomain(CA, 'x');
    ctl.db.setContainerDomain(CB, opts.sameDomain ? 'x' : 'y');
    if (!opts.two) ctl.db.setContainerDomain(CC, 'x');
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 4 * MiB });
    ctl.db.setVdiskCopies(v.id, 2);
    const a = new FakeAgent(ctl.address, 'a1', { containers: ids.map((c) => containerRef(c, SEGS)), copy: opts.copy ?? 'ok', zero: opts.zero ?? 'ok' });
    agents.push(a);
    await a.register();
    ctl.admin.AddExport({ vdisk: 'd', agent: 'a1' });
    await a.next((m) => m.body === 'tableFull');
    return { id: v.id, a };
  }

  const write = (a: FakeAgent, id: string, seg: number, state: SegmentState) => a.sendFault({ vdiskId: id, segment: seg, op: IoOp.Write, state }).reply();

  it('a thin first write allocates one leg per copy, in distinct domains', async () => {
    const { id, a } = await setup();
    const r = await write(a, id, 1, SegmentState.Zero);
    expect(r.action).to.equal(FaultAction.Retry);
    const l = legs('d', 1);
    expect(l).to.have.length(2);
    expect(new Set(domainsOf(l)).size).to.equal(2);
    expect(ctl.db.segment(id, 1).state).to.equal(NORMAL);
    for (const loc of l) expect(ctl.db.refcount(loc)).to.equal(1);
    await until(() => a.tables.get(id)?.version === ctl.db.vdisk(id)!.version, 5000, 'agent at the new version');
    expect(a.tables.get(id)!.locationsOf(1).map((x) => x.container)).to.deep.equal(l.map((x) => x.containerId));
    clean();
    expect(checkWarnings(ctl.db)).to.deep.equal([]);
  });

  it('a thin first write with one failure domain is degraded (one leg), not failed; check lists it as a warning', async () => {
    const { id, a } = await setup({ two: true, sameDomain: true });
    expect((await write(a, id, 0, SegmentState.Zero)).action).to.equal(FaultAction.Retry);
    expect(legs('d', 0)).to.have.length(1);
    clean();
    const w = checkWarnings(ctl.db);
    expect(w).to.have.length(1);
    expect(w[0]).to.match(/^vdisk d: 1 segment is degraded \(fewer legs than its 2 copies\): 0$/);
  });

  it('copy-on-write of a shared mirrored segment copies to a new leg per copy, in parallel, and releases the old legs to the snapshot', async () => {
    const { id, a } = await setup({ copy: 'manual' });
    await write(a, id, 0, SegmentState.Zero);
    const old = legs('d', 0);
    await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's' });
    const snap = ctl.db.findVdisk('s')!;
    expect(snap.copies).to.equal(2);
    expect(legs('s', 0)).to.deep.equal(old);
    for (const loc of old) expect(ctl.db.refcount(loc)).to.equal(2);
    const reply = write(a, id, 0, NO_WRITE);
    // Both copies go out before either is answered.
    await until(() => a.copies.length === 2, 5000, 'two CopyCommands');
    const srcs = new Set(old.map((l) => `${l.containerId}@${l.offset * MiB}`));
    for (const c of a.copies) {
      expect(srcs.has(`${c.srcContainer}@${c.srcOffset}`), 'copied from an old leg').to.equal(true);
      expect(c.length).to.equal(MiB);
    }
    for (const c of a.copies) a.copyDone(c.commandId);
    expect((await reply).action).to.equal(FaultAction.Retry);
    const now = legs('d', 0);
    expect(now).to.have.length(2);
    expect(new Set(domainsOf(now)).size).to.equal(2);
    expect(now.map((l) => `${l.containerId}@${l.offset * MiB}`)).to.have.members(a.copies.map((c) => `${c.dstContainer}@${c.dstOffset}`));
    expect(ctl.db.segment(id, 0).state).to.equal(NORMAL);
    for (const loc of old) expect(ctl.db.refcount(loc)).to.equal(1);
    expect(legs('s', 0)).to.deep.equal(old);
    expect(ctl.db.segment(snap.id, 0).state).to.equal(NO_WRITE);
    clean();
  });

  it('copy-on-write keeps the legs whose copy succeeded when another failed (degraded), and fails only when all failed', async () => {
    const { id, a } = await setup({ copy: 'manual' });
    await write(a, id, 0, SegmentState.Zero);
    await write(a, id, 1, SegmentState.Zero);
    await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's' });
    const first = write(a, id, 0, NO_WRITE);
    await until(() => a.copies.length === 2, 5000, 'two CopyCommands');
    a.copyDone(a.copies[0]!.commandId, 'EIO');
    a.copyDone(a.copies[1]!.commandId);
    expect((await first).action).to.equal(FaultAction.Retry);
    expect(legs('d', 0).map((l) => `${l.containerId}@${l.offset * MiB}`)).to.deep.equal([`${a.copies[1]!.dstContainer}@${a.copies[1]!.dstOffset}`]);
    const second = write(a, id, 1, NO_WRITE);
    await until(() => a.copies.length === 4, 5000, 'two more CopyCommands');
    a.copyDone(a.copies[2]!.commandId, 'EIO');
    a.copyDone(a.copies[3]!.commandId, 'EIO');
    const r = await second;
    expect(r.action).to.equal(FaultAction.Fail);
    expect(ctl.db.segment(id, 1).state).to.equal(NO_WRITE);
    await until(() => ctl.db.scrubPending().length === 0, 5000, 'given-up legs scrubbed');
    clean();
  });

  it('make-writable keeps every leg and marks the segment dirty for its stale leg', async () => {
    const { id, a } = await setup();
    await write(a, id, 2, SegmentState.Zero);
    const [l0, l1] = legs('d', 2) as [Location, Location];
    // A third container's leg that failed earlier, kept for resync (legfail's shape of it).
    // No-write with the same primary: the extra leg stays (as legfail leaves a segment it tracks).
    await ctl.controller.tables.changeTable(id, (c) => c.set(2, NO_WRITE, l0));
    ctl.db.addStaleLeg({ vdiskId: id, seg: 2, containerId: CC, offset: 5, dirty: false, since: new Date().toISOString() });
    expect(legs('d', 2)).to.deep.equal([l0, l1]);
    expect((await write(a, id, 2, NO_WRITE)).action).to.equal(FaultAction.Retry);
    expect(ctl.db.segment(id, 2).state).to.equal(NORMAL);
    expect(legs('d', 2)).to.deep.equal([l0, l1]);
    const stale = ctl.db.staleLegs({ vdiskId: id });
    expect(stale).to.have.length(1);
    expect(Boolean(stale[0]!.dirty)).to.equal(true);
  });

  it('removing a snapshot, then the vdisk, releases every leg; the freed legs are scrubbed before reuse', async () => {
    const { id, a } = await setup();
    await write(a, id, 0, SegmentState.Zero);
    await write(a, id, 3, SegmentState.Zero);
    const all = [...legs('d', 0), ...legs('d', 3)];
    await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's' });
    await ctl.admin.RemoveVdisk({ name: 's' });
    // The source is alone again on every leg: writable.
    await until(() => ctl.db.segment(id, 0).state === NORMAL && ctl.db.segment(id, 3).state === NORMAL, 5000, 'source writable again');
    for (const loc of all) expect(ctl.db.refcount(loc)).to.equal(1);
    ctl.admin.RemoveExport({ vdisk: 'd', agent: 'a1' });
    await ctl.admin.RemoveVdisk({ name: 'd' });
    await until(() => all.every((l) => ctl.db.containerSegment(l.containerId, l.offset) === undefined), 5000, 'every leg scrubbed and free');
    const zeroed = new Set(a.zeros.flatMap((z) => Array.from({ length: z.length / MiB }, (_, i) => `${z.container}@${z.offset / MiB + i}`)));
    for (const l of all) expect(zeroed.has(`${l.containerId}@${l.offset}`), `leg ${l.containerId}@${l.offset} zeroed`).to.equal(true);
    clean();
  });

  it('a migration off one container moves only the legs on it, into a domain the other legs do not use', async () => {
    const { id, a } = await setup();
    for (const s of [0, 1, 2]) await write(a, id, s, SegmentState.Zero);
    const before = [0, 1, 2].map((s) => legs('d', s));
    // CA and CC share domain x: a leg leaving CA can only go to CC (CB, domain y, holds the other leg).
    const onCA = before.filter((l) => l.some((x) => x.containerId === CA)).length;
    ctl.admin.EvacuateContainer({ id: CA });
    await until(() => ctl.admin.GetMigration({ vdisk: 'd' }).state !== 'running', 10_000, 'migration done');
    expect(ctl.admin.GetMigration({ vdisk: 'd' })).to.deep.include({ state: 'done', segmentsDone: onCA, error: '' });
    for (const s of [0, 1, 2]) {
      const now = legs('d', s);
      expect(now).to.have.length(2);
      expect(now.some((l) => l.containerId === CA), `segment ${s} left CA`).to.equal(false);
      expect(new Set(domainsOf(now)).size).to.equal(2);
      // The leg on CB stayed where it was.
      const cb = before[s]!.find((l) => l.containerId === CB);
      if (cb !== undefined) expect(now).to.deep.include(cb);
      expect(ctl.db.segment(id, s).state).to.equal(NORMAL);
    }
    await until(() => ctl.db.containerSegmentsUsed(CA) === 0, 5000, 'CA empty');
    clean();
  });

  it('a migration to one container puts one leg of each segment there: the leg of its domain moves, the other stays', async () => {
    const { id, a } = await setup();
    for (const s of [0, 1, 2, 3]) await write(a, id, s, SegmentState.Zero);
    const before = [0, 1, 2, 3].map((s) => legs('d', s));
    const toMove = before.filter((l) => !l.some((x) => x.containerId === CC)).length;
    ctl.admin.MigrateVdisk({ vdisk: 'd', toContainer: CC.slice(0, 8) });
    await until(() => ctl.admin.GetMigration({ vdisk: 'd' }).state !== 'running', 10_000, 'migration done');
    expect(ctl.admin.GetMigration({ vdisk: 'd' })).to.deep.include({ state: 'done', segmentsDone: toMove, error: '' });
    for (const s of [0, 1, 2, 3]) {
      const now = legs('d', s);
      expect(now.map((l) => l.containerId)).to.have.members([CC, CB]);
      expect(now).to.deep.include(before[s]!.find((l) => l.containerId === CB));
    }
    clean();
  });

  it('a migration whose only target shares a domain with the other leg fails, moving nothing', async () => {
    const { id, a } = await setup();
    await write(a, id, 0, SegmentState.Zero);
    const before = legs('d', 0);
    // Off CB (domain y): CA and CC are both in domain x, where the other leg is.
    ctl.admin.EvacuateContainer({ id: CB });
    await until(() => ctl.admin.GetMigration({ vdisk: 'd' }).state !== 'running', 10_000, 'migration ended');
    const m = ctl.admin.GetMigration({ vdisk: 'd' });
    expect(m.state).to.equal('failed');
    expect(m.error).to.match(/failure domain/);
    expect(legs('d', 0)).to.deep.equal(before);
    clean();
  });

  it('growing a thick mirrored vdisk gives the new segments a leg per copy; segment set-state normal on a zero segment too', async () => {
    await setup();
    const v = ctl.admin.CreateVdisk({ name: 't', size: 2 * MiB, thick: true, copies: 2 });
    await ctl.admin.ResizeVdisk({ name: 't', size: 4 * MiB });
    for (const s of [0, 1, 2, 3]) {
      const l = legs('t', s);
      expect(l, `segment ${s}`).to.have.length(2);
      expect(new Set(domainsOf(l)).size).to.equal(2);
    }
    await ctl.admin.SetSegmentState({ vdisk: 'd', first: 2, count: 1, state: NORMAL });
    expect(legs('d', 2)).to.have.length(2);
    expect(ctl.db.vdisk(v.id)!.copies).to.equal(2);
    clean();
  });
});

describe('controller paths on mirrored vdisks: pure parts', () => {
  it('segmentRefcount is the highest count over the legs', () => {
    const counts = new Map([
      ['a:1', 1],
      ['b:2', 2],
    ]);
    const db = { refcount: (l: Location) => counts.get(`${l.containerId}:${l.offset}`) ?? 0 };
    expect(segmentRefcount(db, [])).to.equal(0);
    expect(segmentRefcount(db, [{ containerId: 'a', offset: 1 }])).to.equal(1);
    expect(segmentRefcount(db, [{ containerId: 'a', offset: 1 }, { containerId: 'b', offset: 2 }])).to.equal(2);
  });

  it('sameLocations compares legs in order', () => {
    const a = { containerId: 'a', offset: 1 };
    const b = { containerId: 'b', offset: 2 };
    expect(sameLocations([a, b], [{ ...a }, { ...b }])).to.equal(true);
    expect(sameLocations([a, b], [b, a])).to.equal(false);
    expect(sameLocations([a], [a, b])).to.equal(false);
  });
});

describe('tabula check on mirrored vdisks', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  let v: VdiskRow;

  /** Containers CA, CB (domain x) and CC (domain y); a 2-copy vdisk m with segment 0 on CA+CC, segment 1 on CB+CC. */
  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 'c.db'));
    for (const [id, domain] of [
      [CA, 'x'],
      [CB, 'x'],
      [CC, 'y'],
    ] as const) {
      db.insertContainer({ id, path: `/${id.slice(0, 1)}`, size: 11 * MiB, dataOffset: MiB, segmentSize: MiB, segmentsTotal: 10, state: 'online', domain });
    }
    v = db.insertVdisk({ id: 'm1', name: 'm', size: 4 * MiB, blockSize: 512, segmentSize: MiB, segmentCount: 4, thin: true, version: 1, copies: 2 });
    db.setSegment(v, 0, { state: NORMAL, location: { containerId: CA, offset: 0 }, legs: [{ containerId: CC, offset: 0 }] }, 1);
    db.setSegment(v, 1, { state: NORMAL, location: { containerId: CB, offset: 0 }, legs: [{ containerId: CC, offset: 1 }] }, 1);
  });
  afterEach(() => {
    db.close();
    t.cleanup();
  });

  const run = (sql: string, ...args: unknown[]) => {
    db.sql.pragma('foreign_keys = OFF');
    db.sql.prepare(sql).run(...args);
    db.sql.pragma('foreign_keys = ON');
  };

  it('finds nothing wrong, and no warning, with every segment on two legs in two domains', () => {
    expect(checkInvariants(db)).to.deep.equal([]);
    expect(checkWarnings(db)).to.deep.equal([]);
  });

  it('finds legs in one failure domain, and in one container', () => {
    db.setContainerDomain(CC, 'x');
    expect(checkInvariants(db)).to.have.members([
      'vdisk m segment 0 has legs 0 and 1 in the same failure domain x',
      'vdisk m segment 1 has legs 0 and 1 in the same failure domain x',
    ]);
    db.setContainerDomain(CC, 'y');
    run('UPDATE segment_legs SET container_id = ?, offset = 5 WHERE vdisk_id = ? AND seg = 0', CA, 'm1');
    run('UPDATE container_segments SET container_id = ?, offset = 5 WHERE container_id = ? AND offset = 0', CA, CC);
    expect(checkInvariants(db)).to.deep.equal([`vdisk m segment 0 leg 1 on container ${CA} offset 5: leg in the same container as another leg of its segment`]);
  });

  it('finds more legs than copies', () => {
    db.setVdiskCopies(v.id, 1);
    expect(checkInvariants(db)).to.have.members(['vdisk m segment 0 has 2 legs but the vdisk keeps 1 copy', 'vdisk m segment 1 has 2 legs but the vdisk keeps 1 copy']);
  });

  it('counts legs and stale legs in reference counts; a stale leg must sit beside a live leg on another container', () => {
    run('UPDATE container_segments SET refcount = 2 WHERE container_id = ? AND offset = 1', CC);
    expect(checkInvariants(db)).to.deep.equal([`container ${CC} offset 1 has reference count 2 but 1 table entries reference it`]);
    run('UPDATE container_segments SET refcount = 1 WHERE container_id = ? AND offset = 1', CC);
    db.addStaleLeg({ vdiskId: v.id, seg: 1, containerId: CA, offset: 7 });
    expect(db.refcount({ containerId: CA, offset: 7 })).to.equal(1);
    expect(checkInvariants(db)).to.deep.equal([]);
    db.addStaleLeg({ vdiskId: v.id, seg: 1, containerId: CB, offset: 8 });
    expect(checkInvariants(db)).to.deep.equal([`vdisk m segment 1 has a stale leg on container ${CB} offset 8, a container the segment still uses`]);
  });

  it('lists degraded segments as a warning, one line per vdisk, not as a violation', () => {
    db.setSegment(v, 2, { state: NORMAL, location: { containerId: CA, offset: 2 } }, 1);
    db.setSegment(v, 3, { state: NO_WRITE, location: { containerId: CA, offset: 3 } }, 1);
    db.setSegment(v, 1, { state: NORMAL, location: { containerId: CB, offset: 0 }, legs: [] }, 1);
    expect(checkInvariants(db)).to.deep.equal([]);
    expect(checkWarnings(db)).to.deep.equal(['vdisk m: 3 segments are degraded (fewer legs than its 2 copies): 1-3']);
  });
});
