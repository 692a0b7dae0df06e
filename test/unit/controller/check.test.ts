import { expect } from 'chai';
import { join } from 'node:path';
import { checkInvariants } from '../../../src/controller/check.js';
import { ControllerDb } from '../../../src/controller/db.js';
import { SegmentState } from '../../../src/table/index.js';
import { CA, CB, MiB, tempDir } from './helpers.js';

describe('controller check', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;

  /** Two vdisks over container CA (10 segments), a few allocated segments, consistent. */
  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 'c.db'));
    db.insertContainer({ id: CA, path: '/a', size: 11 * MiB, dataOffset: MiB, segmentSize: MiB, segmentsTotal: 10, state: 'online' });
    db.insertContainer({ id: CB, path: '/b', size: 11 * 2 * MiB, dataOffset: 2 * MiB, segmentSize: 2 * MiB, segmentsTotal: 10, state: 'online' });
    const v1 = db.insertVdisk({ id: 'v1', name: 'one', size: 4 * MiB, blockSize: 512, segmentSize: MiB, segmentCount: 4, thin: true, version: 1 });
    const v2 = db.insertVdisk({ id: 'v2', name: 'two', size: 4 * MiB, blockSize: 512, segmentSize: MiB, segmentCount: 4, thin: true, version: 1 });
    db.setSegment(v1, 0, { state: SegmentState.Normal, location: { containerId: CA, offset: 0 } }, 1);
    db.setSegment(v1, 1, { state: SegmentState.NoWrite, location: { containerId: CA, offset: 1 } }, 1);
    db.setSegment(v2, 2, { state: SegmentState.NoWrite, location: { containerId: CA, offset: 1 } }, 1);
    db.setSegment(v2, 3, { state: SegmentState.Error, location: { containerId: CA, offset: 2 } }, 1);
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

  it('finds nothing wrong in a consistent database', () => {
    expect(checkInvariants(db)).to.deep.equal([]);
  });

  it('finds a wrong reference count', () => {
    run('UPDATE container_segments SET refcount = 3 WHERE container_id = ? AND offset = 1', CA);
    expect(checkInvariants(db)).to.deep.equal([`container ${CA} offset 1 has reference count 3 but 2 table entries reference it`]);
  });

  it('finds a referenced location that is in the free map', () => {
    run('DELETE FROM container_segments WHERE container_id = ? AND offset = 0', CA);
    expect(checkInvariants(db)).to.deep.equal([`vdisk one segment 0 references container ${CA} offset 0, which is in the free map`]);
  });

  it('finds an allocated location nobody references and nobody is releasing (a leak)', () => {
    run('INSERT INTO container_segments (container_id, offset, refcount) VALUES (?, 7, 0)', CA);
    expect(checkInvariants(db)).to.deep.equal([`container ${CA} offset 7 is allocated with reference count 0 and no pending release`]);
  });

  it('finds a shared location writable in one table, and two vdisks writing one location', () => {
    run('UPDATE segments SET state = ? WHERE vdisk_id = ? AND seg = 2', SegmentState.Normal, 'v2');
    const v = checkInvariants(db);
    expect(v).to.include(`container ${CA} offset 1 is referenced 2 times but vdisk two segment 2 is normal, not no-write`);
    expect(v).to.include(`container ${CA} offset 1 is shared by 2 vdisks and writable by vdisk two segment 2`);
    expect(v).to.have.length(2);
  });

  it('finds malformed entries: beyond the end, stored zero, normal without location, wrong segment size, beyond the container', () => {
    run('INSERT INTO segments (vdisk_id, seg, state) VALUES (?, 9, ?)', 'v1', SegmentState.Invalid);
    run('INSERT INTO segments (vdisk_id, seg, state) VALUES (?, 2, ?)', 'v1', SegmentState.Zero);
    run('INSERT INTO segments (vdisk_id, seg, state) VALUES (?, 3, ?)', 'v1', SegmentState.Normal);
    run('INSERT INTO segments (vdisk_id, seg, state, container_id, offset) VALUES (?, 0, ?, ?, 4)', 'v2', SegmentState.Normal, CB);
    run('INSERT INTO container_segments (container_id, offset, refcount) VALUES (?, 4, 1)', CB);
    run('INSERT INTO container_segments (container_id, offset, refcount, release_vdisk, release_version) VALUES (?, 12, 0, ?, 1)', CA, 'v1');
    const v = checkInvariants(db);
    expect(v).to.have.members([
      'vdisk one segment 9 is beyond the vdisk\'s 4 segments',
      'vdisk one segment 2 is stored as zero (zero segments have no entry)',
      'vdisk one segment 3 is normal without a location',
      `vdisk two segment 0 is in container ${CB} of segment size ${2 * MiB}, vdisk has ${MiB}`,
      `container ${CA} offset 12 is beyond the container's 10 segments`,
    ]);
  });

  it('finds an export on an agent that does not reach a container the vdisk uses', () => {
    db.registerAgent('ag', [], [{ id: CB, path: '/b' }]);
    db.insertExport({ vdiskId: 'v1', agent: 'ag', targetIqn: 'iqn.2026-11.org.tabula:one', lun: 0, readOnly: false, ackedVersion: 1 });
    expect(checkInvariants(db)).to.deep.equal([`agent ag exports vdisk one but does not reach container ${CA} it uses`]);
  });
});
