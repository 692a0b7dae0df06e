import { expect } from 'chai';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { ControllerDb, type Location, type VdiskRow } from '../../../src/controller/db.js';
import { MIGRATIONS, SCHEMA_VERSION, migrate } from '../../../src/controller/schema.js';
import { SegmentState } from '../../../src/table/index.js';
import { CA, CB, CC, MiB, tempDir } from './helpers.js';

const N = SegmentState.Normal;
const loc = (containerId: string, offset: number): Location => ({ containerId, offset });

describe('controller db: mirrored segments (legs, stale legs, domains, copies)', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  let v: VdiskRow;
  let version: number;
  const set = (seg: number, state: SegmentState, location: Location | null, legs?: Location[]) =>
    db.tx(() => db.setSegment(v, seg, legs === undefined ? { state, location } : { state, location, legs }, ++version));
  const rc = (l: Location) => db.containerSegment(l.containerId, l.offset)?.refcount;

  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 'c.db'));
    for (const id of [CA, CB, CC]) {
      db.insertContainer({ id, path: `/${id}`, size: 17 * MiB, dataOffset: MiB, segmentSize: MiB, segmentsTotal: 16, state: 'online' });
    }
    v = db.insertVdisk({ id: 'v1', name: 'm', size: 8 * MiB, blockSize: 512, segmentSize: MiB, segmentCount: 8, thin: true, version: 1, copies: 2 });
    version = 1;
  });
  afterEach(() => {
    db.close();
    t.cleanup();
  });

  it('migration 9 upgrades an older database: default domain and one copy, legs empty, the view lists entries', () => {
    const path = join(t.dir, 'old.db');
    const raw = new Database(path);
    migrate(raw, MIGRATIONS.slice(0, 8));
    const now = '2026-11-01T00:00:00.000Z';
    raw.exec(`
      INSERT INTO containers (id, path, size, data_offset, segment_size, segments_total, added) VALUES ('${CA}', '/c0', ${9 * MiB}, ${MiB}, ${MiB}, 8, '${now}');
      INSERT INTO vdisks (id, name, size, block_size, segment_size, segment_count, thin, version, created) VALUES ('v-id', 'old', ${4 * MiB}, 512, ${MiB}, 4, 1, 7, '${now}');
      INSERT INTO segments (vdisk_id, seg, state, container_id, offset) VALUES ('v-id', 1, 0, '${CA}', 3);
      INSERT INTO container_segments (container_id, offset, refcount) VALUES ('${CA}', 3, 1);
    `);
    raw.close();
    const old = new ControllerDb(path);
    try {
      expect(old.container(CA)?.domain).to.equal('');
      expect(old.vdisk('v-id')?.copies).to.equal(1);
      expect(old.locationsOfSegment('v-id', 1)).to.deep.equal([loc(CA, 3)]);
      expect(old.references(loc(CA, 3))).to.deep.equal([{ vdiskId: 'v-id', seg: 1, state: N, leg: 0 }]);
      expect(old.refcountMismatches()).to.deep.equal([]);
      expect(old.sql.prepare('SELECT version FROM schema_version').pluck().get()).to.equal(SCHEMA_VERSION);
    } finally {
      old.close();
    }
  });

  it('stores copies and domains, and refuses copies outside 1..3', () => {
    expect(db.vdisk('v1')?.copies).to.equal(2);
    db.setVdiskCopies('v1', 3);
    expect(db.vdisk('v1')?.copies).to.equal(3);
    expect(() => db.setVdiskCopies('v1', 4)).to.throw(/copies 4 out of range 1-3/);
    expect(() => db.setVdiskCopies('v1', 0)).to.throw(/out of range/);
    expect(db.container(CA)?.domain).to.equal('');
    db.setContainerDomain(CA, 'rack1');
    expect(db.container(CA)?.domain).to.equal('rack1');
    expect(() => db.setContainerDomain('nope', 'x')).to.throw(/does not exist/);
    const c = db.insertContainer({ id: 'dddd', path: '/d', size: 3 * MiB, dataOffset: MiB, segmentSize: MiB, segmentsTotal: 2, state: 'online', domain: 'rack2' });
    expect(c.domain).to.equal('rack2');
    expect(db.container('dddd')?.domain).to.equal('rack2');
  });

  it('sets a segment with legs: every leg gains a reference, and the entry lists them in order', () => {
    expect(set(0, N, loc(CA, 0), [loc(CB, 5)])).to.equal(true);
    expect(db.segmentLegs('v1', 0)).to.deep.equal([loc(CB, 5)]);
    expect(db.locationsOfSegment('v1', 0)).to.deep.equal([loc(CA, 0), loc(CB, 5)]);
    expect(rc(loc(CA, 0))).to.equal(1);
    expect(rc(loc(CB, 5))).to.equal(1);
    expect(db.references(loc(CB, 5))).to.deep.equal([{ vdiskId: 'v1', seg: 0, state: N, leg: 1 }]);
    expect(db.vdisksOnContainer(CB)).to.deep.equal(['v1']);
    expect(db.containersOfVdisk('v1').sort()).to.deep.equal([CA, CB].sort());
    expect(db.refcountMismatches()).to.deep.equal([]);
    // The same entry again changes nothing.
    expect(set(0, N, loc(CA, 0), [loc(CB, 5)])).to.equal(false);
  });

  it('keeps the legs on a state change, drops them (released) when the first location changes', () => {
    set(0, N, loc(CA, 0), [loc(CB, 0)]);
    set(0, SegmentState.NoWrite, loc(CA, 0));
    expect(db.segmentLegs('v1', 0)).to.deep.equal([loc(CB, 0)]);
    set(0, N, loc(CC, 0));
    expect(db.segmentLegs('v1', 0)).to.deep.equal([]);
    expect(rc(loc(CB, 0))).to.equal(0);
    expect(db.containerSegment(CB, 0)?.releaseVdisk).to.equal('v1');
    expect(db.refcountMismatches()).to.deep.equal([]);
  });

  it('releases every leg when the segment goes back to zero', () => {
    set(0, N, loc(CA, 0), [loc(CB, 0), loc(CC, 0)]);
    set(0, SegmentState.Zero, null);
    expect(db.locationsOfSegment('v1', 0)).to.deep.equal([]);
    expect(db.sql.prepare('SELECT COUNT(*) FROM segment_legs').pluck().get()).to.equal(0);
    for (const c of [CA, CB, CC]) expect(rc(loc(c, 0))).to.equal(0);
    expect(db.reclaim('v1', version)).to.have.length(3);
  });

  it('promotes leg 1 when leg 0 goes, without touching its reference', () => {
    set(0, N, loc(CA, 0), [loc(CB, 1), loc(CC, 2)]);
    set(0, N, loc(CB, 1), [loc(CC, 2)]);
    expect(db.locationsOfSegment('v1', 0)).to.deep.equal([loc(CB, 1), loc(CC, 2)]);
    expect(rc(loc(CA, 0))).to.equal(0);
    expect(rc(loc(CB, 1))).to.equal(1);
    expect(rc(loc(CC, 2))).to.equal(1);
    expect(db.refcountMismatches()).to.deep.equal([]);
  });

  it('setSegmentLegs replaces the extra legs and keeps state and first location', () => {
    set(3, SegmentState.NoWrite, loc(CA, 3));
    expect(db.tx(() => db.setSegmentLegs(v, 3, [loc(CB, 3)], ++version))).to.equal(true);
    expect(db.segment('v1', 3)).to.include({ state: SegmentState.NoWrite, containerId: CA, offset: 3 });
    expect(db.segmentLegs('v1', 3)).to.deep.equal([loc(CB, 3)]);
    expect(db.tx(() => db.setSegmentLegs(v, 3, [], ++version))).to.equal(true);
    expect(rc(loc(CB, 3))).to.equal(0);
    expect(() => db.setSegmentLegs(v, 4, [loc(CB, 4)], ++version)).to.throw(/need a first location/);
  });

  it('refuses two legs in one container, legs without a location, more than three, and a leg on space being scrubbed', () => {
    expect(() => set(0, N, loc(CA, 0), [loc(CA, 1)])).to.throw(/two legs in one container/);
    expect(() => set(0, SegmentState.Zero, null, [loc(CB, 1)])).to.throw(/extra legs need a first location/);
    expect(() => set(0, N, loc(CA, 0), [loc(CB, 1), loc(CC, 1), loc('dddd', 1)])).to.throw(/at most 3/);
    db.markScrub([loc(CB, 9)]);
    expect(() => set(0, N, loc(CA, 0), [loc(CB, 9)])).to.throw(/waiting to be scrubbed/);
    expect(() => set(0, N, loc(CA, 0), [loc(CB, 99)])).to.throw(/outside container/);
    expect(db.refcountMismatches()).to.deep.equal([]);
  });

  it('stale legs keep their reference, count in the invariants, and are dropped with a release', () => {
    set(0, N, loc(CA, 0), [loc(CB, 0)]);
    // The leg on CB failed: removed from the entry, kept as stale, in one change.
    db.tx(() => {
      db.setSegmentLegs(v, 0, [], ++version);
      db.addStaleLeg({ vdiskId: 'v1', seg: 0, containerId: CB, offset: 0 });
    });
    expect(rc(loc(CB, 0))).to.equal(1);
    expect(db.containerSegment(CB, 0)?.releaseVdisk).to.equal(null);
    expect(db.refcountMismatches()).to.deep.equal([]);
    expect(db.vdisksOnContainer(CB)).to.deep.equal(['v1']);
    expect(db.references(loc(CB, 0))).to.deep.equal([]);
    const [s] = db.staleLegs({ containerId: CB });
    expect(s).to.include({ vdiskId: 'v1', seg: 0, containerId: CB, offset: 0, dirty: false });
    expect(db.staleLegs({ vdiskId: 'v1' })).to.have.length(1);
    expect(db.staleLegs({ vdiskId: 'other' })).to.have.length(0);
    expect(db.markDirty('v1', 0)).to.equal(1);
    expect(db.markDirty('v1', 0)).to.equal(0);
    expect(db.markDirty('v1', 1)).to.equal(0);
    expect(db.staleLegs()[0]?.dirty).to.equal(true);
    expect(db.tx(() => db.dropStaleLeg('v1', 0, CB, version))).to.equal(true);
    expect(db.dropStaleLeg('v1', 0, CB, version)).to.equal(false);
    expect(rc(loc(CB, 0))).to.equal(0);
    expect(db.containerSegment(CB, 0)?.releaseVdisk).to.equal('v1');
    expect(db.refcountMismatches()).to.deep.equal([]);
  });

  it('a stale leg added back as a leg takes over its reference (resync)', () => {
    set(0, N, loc(CA, 0), [loc(CB, 0)]);
    db.tx(() => {
      db.setSegmentLegs(v, 0, [], ++version);
      db.addStaleLeg({ vdiskId: 'v1', seg: 0, containerId: CB, offset: 0, dirty: true });
    });
    db.tx(() => db.setSegmentLegs(v, 0, [loc(CB, 0)], ++version));
    expect(db.staleLegs()).to.deep.equal([]);
    expect(rc(loc(CB, 0))).to.equal(1);
    expect(db.refcountMismatches()).to.deep.equal([]);
  });

  it('a stale leg goes when the data moves wholesale (zero, copy-on-write), not on a promotion', () => {
    set(0, N, loc(CA, 0), [loc(CB, 0), loc(CC, 0)]);
    db.tx(() => {
      db.setSegmentLegs(v, 0, [loc(CC, 0)], ++version);
      db.addStaleLeg({ vdiskId: 'v1', seg: 0, containerId: CB, offset: 0 });
    });
    // Leg 0 fails next: leg 1 is promoted, the older stale leg stays.
    set(0, N, loc(CC, 0), []);
    expect(db.staleLegs()).to.have.length(1);
    // Moved to fresh locations: the stale copy is of data the segment no longer holds.
    set(0, N, loc(CA, 5), [loc(CB, 5)]);
    expect(db.staleLegs()).to.deep.equal([]);
    expect(rc(loc(CB, 0))).to.equal(0);
    expect(db.refcountMismatches()).to.deep.equal([]);
  });

  it('loads legs into the table entries, and coalesces runs only where every leg continues', () => {
    for (let s = 0; s < 4; s++) set(s, N, loc(CA, s), [loc(CB, 8 + s)]);
    set(4, N, loc(CA, 4), [loc(CC, 12)]);
    set(5, N, loc(CA, 5));
    const table = db.loadTable(db.vdisk('v1') as VdiskRow);
    expect(table.containerOf(0)).to.equal(CA);
    expect(table.containerOffsetOf(5)).to.equal(5);
    expect(table.locationsOf(3)).to.deep.equal([
      { container: CA, offset: 3 },
      { container: CB, offset: 11 },
    ]);
    expect(table.locationsOf(4)).to.deep.equal([
      { container: CA, offset: 4 },
      { container: CC, offset: 12 },
    ]);
    expect(table.locationsOf(5)).to.deep.equal([{ container: CA, offset: 5 }]);
    expect(table.get(5).legs).to.equal(undefined);
    expect(table.get(3).legs).to.deep.equal([{ container: CB, offset: 11 }]);
    expect(table.maxLegs).to.equal(2);
    // Segments 0-3 are one run (every leg continues), 4 and 5 runs of their own.
    expect(table.runEnd(0)).to.equal(4);
    expect(table.runEnd(4)).to.equal(5);
    expect(table.equals(db.loadTable(db.vdisk('v1') as VdiskRow))).to.equal(true);
  });

  it('shares legs into a snapshot (each leg location gains a reference) with the source copies', () => {
    set(0, N, loc(CA, 0), [loc(CB, 0)]);
    set(1, N, loc(CA, 1));
    db.tx(() => {
      db.insertVdisk({ id: 's1', name: 'snap', size: 8 * MiB, blockSize: 512, segmentSize: MiB, segmentCount: 8, thin: true, version: 1, kind: 'snapshot' });
      expect(db.shareInto('v1', 's1')).to.equal(2);
    });
    expect(db.vdisk('s1')?.copies).to.equal(2);
    expect(db.locationsOfSegment('s1', 0)).to.deep.equal([loc(CA, 0), loc(CB, 0)]);
    expect(rc(loc(CB, 0))).to.equal(2);
    expect(rc(loc(CA, 1))).to.equal(2);
    expect(db.refcountMismatches()).to.deep.equal([]);
    expect(db.sharedLocations().map((l) => `${l.containerId}:${l.offset}`).sort()).to.deep.equal([`${CA}:0`, `${CA}:1`, `${CB}:0`].sort());
  });

  it('lists degraded and over-copied segments, and the invariant queries see legs', () => {
    set(0, N, loc(CA, 0), [loc(CB, 0)]);
    set(1, N, loc(CA, 1));
    set(2, N, loc(CA, 2), [loc(CB, 2), loc(CC, 2)]);
    expect(db.legShortfalls('degraded')).to.deep.equal([{ vdiskId: 'v1', seg: 1, legs: 1, copies: 2 }]);
    expect(db.legShortfalls('over', 'v1')).to.deep.equal([{ vdiskId: 'v1', seg: 2, legs: 3, copies: 2 }]);
    expect(db.legsOfVdisk('v1')).to.deep.equal([
      { seg: 0, legs: [loc(CB, 0)] },
      { seg: 2, legs: [loc(CB, 2), loc(CC, 2)] },
    ]);
    // A leg mapping free space, and one whose reference count is off: both found.
    db.sql.prepare('DELETE FROM container_segments WHERE container_id = ? AND offset = 2').run(CC);
    expect(db.entriesOnFreeSpace()).to.deep.equal([{ vdiskId: 'v1', seg: 2, leg: 2, containerId: CC, offset: 2 }]);
    db.sql.prepare('UPDATE container_segments SET refcount = 2 WHERE container_id = ? AND offset = 0').run(CB);
    expect(db.refcountMismatches()).to.deep.equal([{ containerId: CB, offset: 0, refcount: 2, refs: 1 }]);
  });

  it('finds mirrored segments in one read, counts degraded ones, and names broken legs and stale legs', () => {
    set(0, N, loc(CA, 0), [loc(CB, 0)]);
    set(1, N, loc(CA, 1));
    set(2, SegmentState.NoWrite, loc(CA, 2), [loc(CB, 2), loc(CC, 2)]);
    const seen: [number, SegmentState, Location[]][] = [];
    db.forEachMirroredSegment((vd, seg, state, locs) => {
      expect(vd).to.equal('v1');
      seen.push([seg, state, locs]);
    });
    expect(seen).to.deep.equal([
      [0, N, [loc(CA, 0), loc(CB, 0)]],
      [2, SegmentState.NoWrite, [loc(CA, 2), loc(CB, 2), loc(CC, 2)]],
    ]);
    let n = 0;
    db.forEachMirroredSegment(() => n++, 'other');
    expect(n).to.equal(0);
    expect(db.degradedCount('v1')).to.equal(1);
    expect(db.suspectLegs()).to.deep.equal([]);
    // Planted: a leg on its segment's own container, a leg 2 alone, a stale leg that is also a leg.
    db.sql.prepare('INSERT INTO segment_legs (vdisk_id, seg, leg, container_id, offset) VALUES (?, ?, ?, ?, ?)').run('v1', 1, 1, CA, 9);
    db.sql.prepare('DELETE FROM segment_legs WHERE vdisk_id = ? AND seg = 2 AND leg = 1').run('v1');
    db.sql.prepare("INSERT INTO stale_legs (vdisk_id, seg, container_id, offset, since) VALUES ('v1', 0, ?, 0, 'now')").run(CB);
    expect(db.suspectLegs().map((p) => [p.seg, p.leg, p.problem])).to.deep.equal([
      [0, -1, 'stale leg that is also a leg of its segment'],
      [1, 1, 'leg in the same container as another leg of its segment'],
      [2, 2, 'leg 2 without a leg 1'],
    ]);
  });
});
