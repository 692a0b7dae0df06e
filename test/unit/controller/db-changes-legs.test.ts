// ChangeContext with legs: a table change that sets, replaces and allocates
// the extra legs of mirrored segments commits them with their references and
// leaves the cached table (what agents are sent) with the same legs.
import { expect } from 'chai';
import { join } from 'node:path';
import { Admin } from '../../../src/controller/admin.js';
import { Controller } from '../../../src/controller/controller.js';
import { ControllerDb, type Location } from '../../../src/controller/db.js';
import { checkInvariants } from '../../../src/controller/check.js';
import { containerDomains } from '../../../src/controller/domains.js';
import { SegmentState } from '../../../src/table/index.js';
import { CA, CB, CC, MiB, tempDir } from './helpers.js';

const N = SegmentState.Normal;
const loc = (containerId: string, offset: number): Location => ({ containerId, offset });

describe('controller table changes: set with legs, setLegs, allocateLegs', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  let ctrl: Controller;
  let vdiskId: string;
  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 'c.db'));
    ctrl = new Controller(db, { ackTimeoutMs: 60_000 });
    const admin = new Admin(ctrl);
    for (const [id, d] of [
      [CA, 'd1'],
      [CB, 'd2'],
      [CC, 'd3'],
    ] as const) {
      admin.AddContainer({ id, path: `/c/${d}`, size: 17 * MiB, dataOffset: MiB, domain: d });
    }
    vdiskId = admin.CreateVdisk({ name: 'm', size: 8 * MiB, copies: 2 }).id;
  });
  afterEach(() => {
    ctrl.close();
    db.close();
    t.cleanup();
  });

  it('set(seg, state, location, legs) commits the legs and the cached table carries them', () => {
    const r = ctrl.tables.commitAndSend(vdiskId, (c) => c.set(1, N, loc(CA, 4), [loc(CB, 9)]));
    expect(r?.ranges).to.deep.equal([[1, 2]]);
    expect(ctrl.tables.table(vdiskId).locationsOf(1)).to.deep.equal([
      { container: CA, offset: 4 },
      { container: CB, offset: 9 },
    ]);
    // State only: the legs stay.
    ctrl.tables.commitAndSend(vdiskId, (c) => c.set(1, SegmentState.NoWrite, loc(CA, 4)));
    expect(ctrl.tables.table(vdiskId).legCountOf(1)).to.equal(2);
    expect(ctrl.tables.table(vdiskId).equals(db.loadTable(db.vdisk(vdiskId)!))).to.equal(true);
    expect(checkInvariants(db)).to.deep.equal([]);
  });

  it('setLegs adds and removes extra legs; the same legs again is no change (no version)', () => {
    ctrl.tables.commitAndSend(vdiskId, (c) => c.set(0, N, loc(CA, 0)));
    const before = db.vdisk(vdiskId)!.version;
    ctrl.tables.commitAndSend(vdiskId, (c) => c.setLegs(0, [loc(CC, 3)]));
    expect(ctrl.tables.table(vdiskId).locationsOf(0)).to.deep.equal([
      { container: CA, offset: 0 },
      { container: CC, offset: 3 },
    ]);
    expect(ctrl.tables.commitAndSend(vdiskId, (c) => c.setLegs(0, [loc(CC, 3)]))).to.equal(null);
    expect(db.vdisk(vdiskId)!.version).to.equal(before + 1);
    ctrl.tables.commitAndSend(vdiskId, (c) => c.setLegs(0, []));
    expect(ctrl.tables.table(vdiskId).legCountOf(0)).to.equal(1);
    expect(db.refcount(loc(CC, 3))).to.equal(0);
    expect(checkInvariants(db)).to.deep.equal([]);
  });

  it('allocateLegs gives a first write its copies in distinct domains, avoiding those asked', () => {
    ctrl.tables.commitAndSend(vdiskId, (c) => {
      const [locs] = c.allocateLegs(1, c.vdisk.copies);
      c.set(2, N, locs![0]!, locs!.slice(1));
    });
    const domains = containerDomains(db);
    const placed = db.locationsOfSegment(vdiskId, 2);
    expect(placed).to.have.length(2);
    expect(new Set(placed.map((l) => domains.get(l.containerId))).size).to.equal(2);
    ctrl.tables.commitAndSend(vdiskId, (c) => {
      const [locs] = c.allocateLegs(1, 2, (d) => d !== 'd3');
      c.set(3, N, locs![0]!, locs!.slice(1));
    });
    expect(db.locationsOfSegment(vdiskId, 3).map((l) => l.containerId)).to.deep.equal([CC]);
    expect(db.legShortfalls('degraded', vdiskId).map((s) => s.seg)).to.deep.equal([3]);
  });

  it('a failed change gives its allocated legs back (rolled back, free map reloaded)', () => {
    const free = [CA, CB, CC].map((c) => ctrl.allocator.freeSegments(c));
    expect(() =>
      ctrl.tables.commitAndSend(vdiskId, (c) => {
        c.allocateLegs(4, 2);
        throw new Error('changed my mind');
      }),
    ).to.throw(/changed my mind/);
    expect([CA, CB, CC].map((c) => ctrl.allocator.freeSegments(c))).to.deep.equal(free);
  });
});
