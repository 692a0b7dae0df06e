import { expect } from 'chai';
import { join } from 'node:path';
import { Allocator, ContainerFullError, runLocations } from '../../../src/controller/allocator.js';
import { ControllerDb } from '../../../src/controller/db.js';
import { SegmentState } from '../../../src/table/index.js';
import { CA, CB, CC, MiB, tempDir } from './helpers.js';

describe('controller allocator', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  const add = (id: string, segs: number, segmentSize = MiB) =>
    db.insertContainer({ id, path: `/${id}`, size: (segs + 1) * segmentSize, dataOffset: segmentSize, segmentSize, segmentsTotal: segs, state: 'online' });
  const vdisk = (name: string, n: number) =>
    db.insertVdisk({ id: `id-${name}`, name, size: n * MiB, blockSize: 512, segmentSize: MiB, segmentCount: n, thin: true, version: 1 });

  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 'a.db'));
  });
  afterEach(() => {
    db.close();
    t.cleanup();
  });

  it('spreads single-segment allocations across containers', () => {
    add(CA, 10);
    add(CB, 10);
    const a = new Allocator(db);
    const v = vdisk('d', 8);
    const used = new Map<string, number>();
    for (let i = 0; i < 6; i++) {
      const [loc] = runLocations(a.allocate(v, 1));
      used.set(loc!.containerId, (used.get(loc!.containerId) ?? 0) + 1);
    }
    expect(used.get(CA)).to.equal(3);
    expect(used.get(CB)).to.equal(3);
  });

  it('gives a large request contiguous runs shared among containers', () => {
    add(CA, 100);
    add(CB, 100);
    const a = new Allocator(db);
    const runs = a.allocate(vdisk('d', 100), 100);
    expect(runs).to.deep.equal([
      { containerId: CA, offset: 0, count: 50 },
      { containerId: CB, offset: 0, count: 50 },
    ]);
  });

  it('throws ContainerFullError naming the vdisk and what it needs, taking nothing', () => {
    add(CA, 2);
    const a = new Allocator(db);
    const v = vdisk('bigdisk', 5);
    expect(() => a.allocate(v, 3)).to.throw(ContainerFullError, /vdisk bigdisk needs 3 more segments of 1MiB.*only 2 free/);
    expect(a.freeSegments(CA)).to.equal(2);
  });

  it('only uses containers every exporting agent reaches, and of the vdisk segment size', () => {
    add(CA, 10);
    add(CB, 10);
    add(CC, 10, 2 * MiB);
    const v = vdisk('d', 4);
    db.registerAgent('a1', [], [{ id: CA, path: '/a' }, { id: CB, path: '/b' }, { id: CC, path: '/c' }]);
    db.registerAgent('a2', [], [{ id: CB, path: '/b' }, { id: CC, path: '/c' }]);
    db.insertExport({ vdiskId: v.id, agent: 'a1', targetIqn: 'iqn.2026-11.org.tabula:d', lun: 0, readOnly: false, ackedVersion: 1 });
    db.insertExport({ vdiskId: v.id, agent: 'a2', targetIqn: 'iqn.2026-11.org.tabula:d', lun: 0, readOnly: false, ackedVersion: 1 });
    const a = new Allocator(db);
    expect(a.eligibleContainers(v)).to.deep.equal([CB]);
    const runs = a.allocate(v, 4);
    expect(runs.every((r) => r.containerId === CB)).to.equal(true);
  });

  it('rebuilds free maps from the DB and reuses freed holes', () => {
    add(CA, 6);
    const v = vdisk('d', 6);
    db.tx(() => {
      for (const o of [0, 1, 3]) db.setSegment(v, o, { state: SegmentState.Normal, location: { containerId: CA, offset: o } }, 1);
    });
    const a = new Allocator(db);
    expect(a.freeSegments(CA)).to.equal(3);
    expect(a.allocate(v, 2)).to.deep.equal([
      { containerId: CA, offset: 2, count: 1 },
      { containerId: CA, offset: 4, count: 1 },
    ]);
    a.free([{ containerId: CA, offset: 4 }, { containerId: CA, offset: 2 }]);
    expect(a.freeSegments(CA)).to.equal(3);
    expect(a.allocate(v, 3)).to.deep.equal([
      { containerId: CA, offset: 2, count: 1 },
      { containerId: CA, offset: 4, count: 2 },
    ]);
  });
});
