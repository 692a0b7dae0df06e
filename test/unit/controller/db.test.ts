import { expect } from 'chai';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { ControllerDb, type VdiskRow } from '../../../src/controller/db.js';
import { MIGRATIONS, SCHEMA_VERSION, migrate, schemaVersion } from '../../../src/controller/schema.js';
import { SegmentState } from '../../../src/table/index.js';
import { CA, MiB, tempDir } from './helpers.js';

describe('controller db', () => {
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => {
    t = tempDir();
  });
  afterEach(() => t.cleanup());

  it('creates the schema at the latest version, in WAL mode with foreign keys on', () => {
    const db = new ControllerDb(join(t.dir, 'c.db'));
    expect(schemaVersion(db.sql)).to.equal(SCHEMA_VERSION);
    expect(db.sql.pragma('journal_mode', { simple: true })).to.equal('wal');
    expect(db.sql.pragma('foreign_keys', { simple: true })).to.equal(1);
    const tables = db.sql.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").pluck().all();
    for (const n of ['agents', 'agent_containers', 'container_segments', 'containers', 'events', 'exports', 'faults', 'schema_version', 'segments', 'vdisks']) {
      expect(tables).to.include(n);
    }
    db.close();
  });

  it('applies only missing migrations, in order, and reopening is a no-op', () => {
    const path = join(t.dir, 'm.db');
    const raw = new Database(path);
    const ran: number[] = [];
    const steps = [
      (d: Database.Database) => {
        ran.push(1);
        d.exec('CREATE TABLE a (x INTEGER)');
      },
      (d: Database.Database) => {
        ran.push(2);
        d.exec('ALTER TABLE a ADD COLUMN y INTEGER');
      },
    ];
    expect(migrate(raw, steps.slice(0, 1))).to.equal(1);
    expect(migrate(raw, steps)).to.equal(2);
    expect(migrate(raw, steps)).to.equal(2);
    expect(ran).to.deep.equal([1, 2]);
    raw.close();
  });

  it('upgrades a database written by an older version (schema 2) and keeps its data', () => {
    // What an upgrade meets: tables written by the previous release's schema.
    const path = join(t.dir, 'old.db');
    const raw = new Database(path);
    expect(migrate(raw, MIGRATIONS.slice(0, 2))).to.equal(2);
    const now = '2026-11-01T00:00:00.000Z';
    raw.exec(`
      INSERT INTO containers (id, path, size, data_offset, segment_size, segments_total, added) VALUES ('${CA}', '/c0', ${9 * MiB}, ${MiB}, ${MiB}, 8, '${now}');
      INSERT INTO vdisks (id, name, size, block_size, segment_size, segment_count, thin, version, created) VALUES ('v-id', 'old', ${4 * MiB}, 512, ${MiB}, 4, 1, 7, '${now}');
      INSERT INTO segments (vdisk_id, seg, state, container_id, offset) VALUES ('v-id', 1, 0, '${CA}', 3);
      INSERT INTO container_segments (container_id, offset, refcount) VALUES ('${CA}', 3, 1);
      INSERT INTO agents (name, portals, last_seen, registered) VALUES ('a1', '["127.0.0.1:3260"]', '${now}', '${now}');
      INSERT INTO exports (vdisk_id, agent, target_iqn, lun, acked_version) VALUES ('v-id', 'a1', 'iqn.2026-11.org.tabula:old', 0, 7);
    `);
    raw.close();

    const db = new ControllerDb(path);
    try {
      expect(schemaVersion(db.sql)).to.equal(SCHEMA_VERSION);
      expect(db.vdiskByName('old')).to.include({ id: 'v-id', version: 7, segmentCount: 4 });
      expect(db.segment('v-id', 1)).to.include({ state: SegmentState.Normal, containerId: CA, offset: 3 });
      expect(db.segment('v-id', 0).state).to.equal(SegmentState.Zero);
      expect(db.containerSegment(CA, 3)).to.include({ refcount: 1, scrub: false });
      expect(db.export('v-id', 'a1')).to.include({ targetIqn: 'iqn.2026-11.org.tabula:old', ackedVersion: 7 });
      expect(db.export('v-id', 'a1')?.allowedInitiators).to.deep.equal([]);
    } finally {
      db.close();
    }
  });

  it('rolls back a failing migration and keeps the old version', () => {
    const raw = new Database(join(t.dir, 'f.db'));
    const steps = [
      (d: Database.Database) => d.exec('CREATE TABLE a (x INTEGER)'),
      (d: Database.Database) => {
        d.exec('CREATE TABLE b (x INTEGER)');
        throw new Error('boom');
      },
    ];
    expect(() => migrate(raw, steps)).to.throw('boom');
    expect(schemaVersion(raw)).to.equal(1);
    expect(raw.prepare("SELECT COUNT(*) FROM sqlite_master WHERE name = 'b'").pluck().get()).to.equal(0);
    raw.close();
  });

  it('refuses a database from a newer schema', () => {
    const path = join(t.dir, 'n.db');
    new ControllerDb(path).close();
    const raw = new Database(path);
    raw.prepare('UPDATE schema_version SET version = ?').run(MIGRATIONS.length + 5);
    raw.close();
    expect(() => new ControllerDb(path)).to.throw(/newer than this controller/);
  });

  it('keeps reference counts with segment changes and holds released locations until reclaimed', () => {
    const db = new ControllerDb(join(t.dir, 'r.db'));
    db.insertContainer({ id: CA, path: '/x', size: 11 * MiB, dataOffset: MiB, segmentSize: MiB, segmentsTotal: 10, state: 'online' });
    const v: VdiskRow = db.insertVdisk({ id: 'v1', name: 'd', size: 4 * MiB, blockSize: 512, segmentSize: MiB, segmentCount: 4, thin: true, version: 1 });
    db.tx(() => {
      db.setSegment(v, 0, { state: SegmentState.Normal, location: { containerId: CA, offset: 3 } }, 2);
      db.setSegment(v, 1, { state: SegmentState.NoWrite, location: { containerId: CA, offset: 3 } }, 2);
    });
    expect(db.containerSegment(CA, 3)?.refcount).to.equal(2);
    db.setSegment(v, 1, { state: SegmentState.Zero, location: null }, 3);
    expect(db.containerSegment(CA, 3)?.refcount).to.equal(1);
    db.setSegment(v, 0, { state: SegmentState.Invalid, location: { containerId: CA, offset: 3 } }, 4);
    expect(db.containerSegment(CA, 3)?.refcount, 'invalid keeps its location').to.equal(1);
    db.setSegment(v, 0, { state: SegmentState.Zero, location: null }, 5);
    const rel = db.containerSegment(CA, 3);
    expect(rel).to.include({ refcount: 0, releaseVdisk: 'v1', releaseVersion: 5 });
    expect(db.reclaim('v1', 4)).to.deep.equal([]);
    expect(db.reclaim('v1', 5)).to.deep.equal([{ containerId: CA, offset: 3 }]);
    expect(db.containerSegment(CA, 3), 'still allocated until zeroed').to.include({ refcount: 0, releaseVdisk: null, scrub: true });
    expect(db.finishScrub(CA, 3, 1)).to.deep.equal([{ containerId: CA, offset: 3 }]);
    expect(db.containerSegment(CA, 3)).to.equal(undefined);
    db.close();
  });

  it('rejects entries that break the table rules', () => {
    const db = new ControllerDb(join(t.dir, 'e.db'));
    db.insertContainer({ id: CA, path: '/x', size: 11 * MiB, dataOffset: MiB, segmentSize: MiB, segmentsTotal: 10, state: 'online' });
    const v = db.insertVdisk({ id: 'v1', name: 'd', size: 4 * MiB, blockSize: 512, segmentSize: MiB, segmentCount: 4, thin: true, version: 1 });
    expect(() => db.setSegment(v, 4, { state: SegmentState.Invalid, location: null }, 2)).to.throw(/out of range/);
    expect(() => db.setSegment(v, 0, { state: SegmentState.Normal, location: null }, 2)).to.throw(/needs a location/);
    expect(() => db.setSegment(v, 0, { state: SegmentState.Zero, location: { containerId: CA, offset: 1 } }, 2)).to.throw(/no location/);
    expect(() => db.setSegment(v, 0, { state: SegmentState.Normal, location: { containerId: CA, offset: 10 } }, 2)).to.throw(/outside container/);
    expect(() => db.setSegment(v, 0, { state: SegmentState.Normal, location: { containerId: 'nope', offset: 1 } }, 2)).to.throw(/unknown container/);
    db.close();
  });

  it('loads a table with invalid segments losing their location only on the wire', () => {
    const db = new ControllerDb(join(t.dir, 't.db'));
    db.insertContainer({ id: CA, path: '/x', size: 11 * MiB, dataOffset: MiB, segmentSize: MiB, segmentsTotal: 10, state: 'online' });
    const v = db.insertVdisk({ id: 'v1', name: 'd', size: 4 * MiB, blockSize: 512, segmentSize: MiB, segmentCount: 4, thin: true, version: 7 });
    db.setSegment(v, 1, { state: SegmentState.Normal, location: { containerId: CA, offset: 5 } }, 7);
    db.setSegment(v, 2, { state: SegmentState.Invalid, location: { containerId: CA, offset: 6 } }, 7);
    const table = db.loadTable(v);
    expect(table.version).to.equal(7);
    expect(table.get(0)).to.deep.equal({ state: SegmentState.Zero, container: null, offset: 0 });
    expect(table.get(1)).to.deep.equal({ state: SegmentState.Normal, container: CA, offset: 5 });
    expect(table.get(2)).to.deep.equal({ state: SegmentState.Invalid, container: null, offset: 0 });
    expect(db.segment('v1', 2).offset).to.equal(6);
    db.close();
  });
});
