// Durable reservations for lazy allocations (allocator.ts): a lazily
// committed allocation takes only locations recorded in space_reservations by
// an earlier durable commit; pools are reserved in batches, refilled off the
// caller's path, and a rolled-back transaction leaves nothing inconsistent.
import { expect } from 'chai';
import { join } from 'node:path';
import { Allocator, UnreservedSpaceError, runLocations } from '../../../src/controller/allocator.js';
import { checkInvariants } from '../../../src/controller/check.js';
import { ControllerDb, type Location, type VdiskRow } from '../../../src/controller/db.js';
import { CA, CB, CC, MiB, tempDir, until } from './helpers.js';

describe('controller allocator: durable reservations for lazy allocations', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  const add = (id: string, segs: number) =>
    db.insertContainer({ id, path: `/${id}`, size: (segs + 1) * MiB, dataOffset: MiB, segmentSize: MiB, segmentsTotal: segs, state: 'online' });
  const vdisk = (name: string, n: number, copies = 1): VdiskRow =>
    db.insertVdisk({ id: `id-${name}`, name, size: n * MiB, blockSize: 512, segmentSize: MiB, segmentCount: n, thin: true, version: 1, copies });
  const rows = () => db.spaceReservations().map((r) => [r.containerId, r.first, r.count]);
  /** Every location of `locs` lies in a reservation row now in the DB. */
  const inRows = (locs: readonly Location[]): boolean =>
    locs.every((l) => db.spaceReservations().some((r) => r.containerId === l.containerId && l.offset >= r.first && l.offset < r.first + r.count));
  /** Counts the durable reservation commits. */
  const countCommits = (): { n: number } => {
    const c = { n: 0 };
    const orig = db.replaceSpaceReservations.bind(db);
    db.replaceSpaceReservations = (changes) => {
      c.n++;
      return orig(changes);
    };
    return c;
  };
  const nextTurn = () => new Promise((r) => setImmediate(r));

  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 'r.db'));
  });
  afterEach(() => {
    db.close();
    t.cleanup();
  });

  it('reserves a batch of the lowest free segments in every eligible container in one commit, then commits nothing while the pools last', () => {
    add(CA, 100);
    add(CB, 100);
    const a = new Allocator(db, { reserveBatch: 16 });
    const v = vdisk('d', 50);
    const commits = countCommits();
    expect(a.prepareLazy(v, 1)).to.equal(true);
    expect(commits.n).to.equal(1);
    expect(rows()).to.deep.equal([
      [CA, 0, 16],
      [CB, 0, 16],
    ]);
    const got: Location[] = [];
    for (let i = 0; i < 6; i++) {
      expect(a.prepareLazy(v, 1)).to.equal(true);
      got.push(...runLocations(a.allocate(v, 1, undefined, { lazy: true })));
    }
    expect(commits.n, 'the pools cover them: no commit').to.equal(1);
    expect(inRows(got)).to.equal(true);
    // Placement as always: spread evenly, lowest offsets first.
    expect(got.filter((l) => l.containerId === CA).map((l) => l.offset)).to.deep.equal([0, 1, 2]);
    expect(got.filter((l) => l.containerId === CB).map((l) => l.offset)).to.deep.equal([0, 1, 2]);
  });

  it('places lazy allocations where non-lazy ones would go', () => {
    add(CA, 40);
    add(CB, 40);
    const lazy = new Allocator(db, { reserveBatch: 256 });
    const v = vdisk('d', 40);
    lazy.prepareLazy(v, 10);
    const a = lazy.allocate(v, 10, undefined, { lazy: true });
    // A second allocator over the same DB state (nothing recorded): the same answer non-lazily.
    const plain = new Allocator(db);
    expect(a).to.deep.equal(plain.allocate(v, 10));
  });

  it('never hands out unreserved space lazily: refuses, taking nothing, when a pool does not cover the request', () => {
    add(CA, 20);
    const a = new Allocator(db, { reserveBatch: 4 });
    const v = vdisk('d', 20);
    expect(() => a.allocate(v, 1, undefined, { lazy: true }), 'nothing reserved yet').to.throw(UnreservedSpaceError, /needs 1 segment of container .* only 0 free are durably reserved/);
    expect(a.freeSegments(CA)).to.equal(20);
    a.prepareLazy(v, 1);
    expect(a.reservedFree(CA)).to.equal(4);
    expect(() => a.allocate(v, 5, undefined, { lazy: true })).to.throw(UnreservedSpaceError);
    expect(a.freeSegments(CA)).to.equal(20);
    expect(a.reservedFree(CA)).to.equal(4);
    // Asked for up front, a big request is covered.
    a.prepareLazy(v, 5);
    const locs = runLocations(a.allocate(v, 5, undefined, { lazy: true }));
    expect(inRows(locs)).to.equal(true);
  });

  it('mirrored legs: every leg lazily from reserved space, refused as a whole when a domain is not covered', () => {
    add(CA, 20);
    add(CB, 20);
    add(CC, 20);
    db.setContainerDomain(CA, 'rack1');
    db.setContainerDomain(CB, 'rack2');
    db.setContainerDomain(CC, 'rack3');
    const a = new Allocator(db, { reserveBatch: 2 });
    const v = vdisk('m', 10, 2);
    a.prepareLazy(v, 1);
    expect(() => a.allocateLegs(v, 4, 2, undefined, { lazy: true }), "8 legs: 3 from some domain").to.throw(UnreservedSpaceError);
    expect([CA, CB, CC].map((c) => a.freeSegments(c)), 'nothing taken').to.deep.equal([20, 20, 20]);
    const [legs] = a.allocateLegs(v, 1, 2, undefined, { lazy: true });
    expect(legs).to.have.length(2);
    expect(inRows(legs!)).to.equal(true);
  });

  it('refills a pool below half off the caller\'s path, dropping what was allocated from it', async () => {
    add(CA, 100);
    const a = new Allocator(db, { reserveBatch: 8 });
    const v = vdisk('d', 50);
    a.prepareLazy(v, 1);
    const commits = countCommits();
    const taken: Location[] = [];
    db.tx(() => {
      for (let i = 0; i < 5; i++) {
        const locs = runLocations(a.allocate(v, 1, undefined, { lazy: true }));
        db.insertAllocatedRun(v, i, CA, (locs[0] as Location).offset, 1);
        taken.push(...locs);
      }
      expect(commits.n, 'nothing durable inside the transaction').to.equal(0);
    });
    expect(a.reservedFree(CA)).to.equal(3);
    await nextTurn();
    // Written without an fsync of its own: not handed out before one made it durable.
    expect(commits.n).to.equal(1);
    expect(rows()).to.deep.equal([[CA, 5, 8]]);
    expect(a.reservedFree(CA)).to.equal(3);
    await until(() => a.reservedFree(CA) === 8, 5000, 'the refill usable once fsynced');
    expect(a.reservedRanges(CA)).to.deep.equal([{ first: 5, count: 8 }]);
    expect(checkInvariants(db)).to.deep.equal([]);
  });

  it('inside a lazy commit every allocation is lazy: refused, taking nothing, outside the reservations, taken from them when prepared', () => {
    add(CA, 100);
    add(CB, 100);
    const a = new Allocator(db, { reserveBatch: 8 });
    const v = vdisk('d', 50);
    expect(() => db.lazy(() => a.allocate(v, 1))).to.throw(UnreservedSpaceError);
    a.reload(); // as TableChanges does after a failed transaction
    expect([a.freeSegments(CA), a.freeSegments(CB)]).to.deep.equal([100, 100]);
    expect(a.prepareLazy(v, 1)).to.equal(true);
    const got = [0, 1].map((seg) =>
      db.lazy(() => {
        const [l] = runLocations(a.allocate(v, 1));
        db.insertAllocatedRun(v, seg, (l as Location).containerId, (l as Location).offset, 1);
        return l as Location;
      }),
    );
    expect(new Set(got.map((l) => l.containerId)).size, 'levelled over both containers, both prepared at once').to.equal(2);
    expect(inRows(got)).to.equal(true);
  });

  it('a lazy commit that rolled back leaves the rows, the free map and the pool as they were', () => {
    add(CA, 100);
    const a = new Allocator(db, { reserveBatch: 8 });
    const v = vdisk('d', 50);
    a.prepareLazy(v, 1);
    const before = rows();
    expect(() =>
      db.lazy(() => {
        const [l] = runLocations(a.allocate(v, 1));
        db.insertAllocatedRun(v, 0, CA, (l as Location).offset, 1);
        throw new Error('change failed');
      }),
    ).to.throw('change failed');
    a.reload();
    expect(rows()).to.deep.equal(before);
    expect(a.reservedFree(CA)).to.equal(8);
    expect(db.containerSegmentsUsed(CA)).to.equal(0);
  });

  it('non-lazy allocations use reserved space too; prepareLazy tops the pool up', () => {
    add(CA, 100);
    const a = new Allocator(db, { reserveBatch: 8 });
    const v = vdisk('d', 50);
    a.prepareLazy(v, 1);
    expect(a.allocate(v, 8)).to.deep.equal([{ containerId: CA, offset: 0, count: 8 }]);
    expect(a.reservedFree(CA)).to.equal(0);
    expect(a.prepareLazy(v, 1)).to.equal(true);
    expect(a.reservedRanges(CA)).to.deep.equal([{ first: 8, count: 8 }]);
    expect(runLocations(a.allocate(v, 1, undefined, { lazy: true }))).to.deep.equal([{ containerId: CA, offset: 8 }]);
  });

  it('a rolled-back lazy transaction leaves the rows, the free map and the pool as they were', () => {
    add(CA, 40);
    const a = new Allocator(db, { reserveBatch: 8 });
    const v = vdisk('d', 20);
    a.prepareLazy(v, 1);
    const before = rows();
    expect(() =>
      db.tx(() => {
        const [l] = runLocations(a.allocate(v, 2, undefined, { lazy: true }));
        db.insertAllocatedRun(v, 0, CA, (l as Location).offset, 2);
        throw new Error('change failed');
      }),
    ).to.throw('change failed');
    a.reload(); // as TableChanges does after a failed transaction
    expect(rows()).to.deep.equal(before);
    expect(a.freeSegments(CA)).to.equal(40);
    expect(a.reservedFree(CA)).to.equal(8);
    expect(db.containerSegmentsUsed(CA)).to.equal(0);
    expect(runLocations(a.allocate(v, 1, undefined, { lazy: true }))).to.deep.equal([{ containerId: CA, offset: 0 }]);
  });

  it('cannot reserve inside a transaction: says so when short, and is fine when the pool covers it', () => {
    add(CA, 30);
    const a = new Allocator(db, { reserveBatch: 8 });
    const v = vdisk('d', 20);
    db.tx(() => expect(a.prepareLazy(v, 1)).to.equal(false));
    expect(rows()).to.deep.equal([]);
    a.prepareLazy(v, 1);
    db.tx(() => expect(a.prepareLazy(v, 1)).to.equal(true));
  });

  it('close ends the reservations durably (a clean restart finds none); no lazy allocation after it', () => {
    add(CA, 30);
    const a = new Allocator(db, { reserveBatch: 8 });
    const v = vdisk('d', 20);
    a.prepareLazy(v, 1);
    expect(db.hasSpaceReservations()).to.equal(true);
    a.close();
    expect(db.hasSpaceReservations()).to.equal(false);
    expect(a.prepareLazy(v, 1)).to.equal(false);
    expect(() => a.allocate(v, 1, undefined, { lazy: true })).to.throw(UnreservedSpaceError);
  });

  it('a pool is at most a quarter of the container\'s free space, unless the request needs more', () => {
    add(CA, 20);
    const a = new Allocator(db, { reserveBatch: 256 });
    const v = vdisk('d', 20);
    a.prepareLazy(v, 1);
    expect(a.reservedFree(CA)).to.equal(5);
    a.prepareLazy(v, 9);
    expect(a.reservedFree(CA)).to.equal(9);
  });

  it('suspect space stays out of the free map across reloads until released', () => {
    add(CA, 10);
    const a = new Allocator(db);
    const held = a.holdSuspect([{ containerId: CA, first: 2, count: 3 }]);
    expect(held.map((l) => l.offset)).to.deep.equal([2, 3, 4]);
    a.reload();
    expect(a.freeSegments(CA)).to.equal(7);
    const v = vdisk('d', 10);
    const offsets = runLocations(a.allocate(v, 7)).map((l) => l.offset);
    expect(offsets).to.deep.equal([0, 1, 5, 6, 7, 8, 9]);
    a.releaseSuspect(held);
    expect(a.suspectCount).to.equal(0);
  });

  it('tabula check: reserved ranges are no error, free or allocated', () => {
    add(CA, 10);
    const a = new Allocator(db, { reserveBatch: 4 });
    const v = vdisk('d', 10);
    a.prepareLazy(v, 1);
    db.tx(() => {
      const [l] = runLocations(a.allocate(v, 1, undefined, { lazy: true }));
      db.insertAllocatedRun(v, 0, CA, (l as Location).offset, 1);
    });
    expect(checkInvariants(db)).to.deep.equal([]);
    db.sql.prepare('INSERT INTO space_reservations (container_id, first, count) VALUES (?, 8, 4)').run(CA);
    expect(checkInvariants(db)).to.deep.equal([`container ${CA} reservation of segments 8+4 is beyond the container's 10 segments`]);
  });
});
