import { expect } from 'chai';
import Database from 'better-sqlite3';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  DatabaseFileError,
  assertNotInUse,
  backupChunks,
  inspectDatabase,
  restoreDatabase,
} from '../../../src/controller/backup.js';
import { ControllerDb } from '../../../src/controller/db.js';
import { SCHEMA_VERSION } from '../../../src/controller/schema.js';
import { AdminClient } from '../../../src/wire/grpc.js';
import type { BackupChunk } from '../../../src/wire/proto-types.js';
import { CA, MiB, startTestController, tempDir } from './helpers.js';

type Ctl = Awaited<ReturnType<typeof startTestController>>;

const tempsIn = (dir: string): string[] => readdirSync(dir).filter((n) => n.endsWith('.tmp') || n.includes('.tmp-'));

function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).to.be.instanceOf(DatabaseFileError);
    return (e as Error).message;
  }
  throw new Error('expected a DatabaseFileError');
}

describe('controller database backup and restore', () => {
  let ctl: Ctl;
  const dirs: { cleanup: () => void }[] = [];
  const dir = (): string => {
    const t = tempDir();
    dirs.push(t);
    return t.dir;
  };

  beforeEach(async () => {
    ctl = await startTestController();
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 65 * MiB, dataOffset: MiB });
    ctl.admin.CreateVdisk({ name: 'thick', size: 8 * MiB, thick: true });
    ctl.admin.CreateVdisk({ name: 'thin', size: 16 * MiB });
  });
  afterEach(async () => {
    await ctl.cleanup();
    for (const d of dirs.splice(0)) d.cleanup();
  });

  it('streams a consistent copy in bounded chunks and removes its temp file', async () => {
    const chunks: BackupChunk[] = [];
    for await (const c of backupChunks(ctl.db, 4096)) chunks.push(c);
    expect(chunks.length).to.be.greaterThan(1);
    const total = chunks[0]?.totalBytes ?? -1;
    for (const c of chunks) {
      expect(c.data.length).to.be.at.most(4096);
      expect(c.totalBytes).to.equal(total);
    }
    const out = join(dir(), 'b.db');
    writeFileSync(out, Buffer.concat(chunks.map((c) => c.data)));
    expect(readFileSync(out).length).to.equal(total);
    const s = inspectDatabase(out);
    expect(s).to.include({ schemaVersion: SCHEMA_VERSION, vdisks: 2, snapshots: 0, containers: 1, exports: 0 });
    // The copy is self-contained (not WAL) and holds the rows.
    const copy = new Database(out, { readonly: true });
    try {
      expect(copy.pragma('journal_mode', { simple: true })).to.equal('delete');
      expect(copy.prepare('SELECT COUNT(*) FROM segments').pluck().get()).to.equal(8);
      expect(copy.prepare('SELECT name FROM vdisks ORDER BY name').pluck().all()).to.deep.equal(['thick', 'thin']);
    } finally {
      copy.close();
    }
    expect(tempsIn(join(ctl.db.path, '..'))).to.deep.equal([]);
  });

  it('removes the temp file when the reader stops early', async () => {
    const it = backupChunks(ctl.db, 1024);
    const first = await it.next();
    expect(first.done).to.equal(false);
    expect(tempsIn(join(ctl.db.path, '..')).length).to.equal(1);
    await it.return(undefined);
    expect(tempsIn(join(ctl.db.path, '..'))).to.deep.equal([]);
  });

  it('serves Backup over gRPC as a server stream', async () => {
    const client = new AdminClient(ctl.address);
    try {
      const parts: Buffer[] = [];
      let total = -1;
      for await (const c of client.backup()) {
        const chunk = c as BackupChunk;
        parts.push(chunk.data);
        total = chunk.totalBytes;
      }
      const out = join(dir(), 'grpc.db');
      writeFileSync(out, Buffer.concat(parts));
      expect(readFileSync(out).length).to.equal(total);
      expect(inspectDatabase(out)).to.include({ vdisks: 2, containers: 1 });
    } finally {
      client.close();
    }
  });

  it('refuses files that are not a Tabula database this version runs', () => {
    const d = dir();
    const junk = join(d, 'junk.db');
    writeFileSync(junk, Buffer.alloc(8192, 0x41));
    expect(errorOf(() => inspectDatabase(junk))).to.match(/not an SQLite database/);
    expect(errorOf(() => inspectDatabase(join(d, 'missing.db')))).to.match(/no such file/);
    const other = join(d, 'other.db');
    const o = new Database(other);
    o.exec('CREATE TABLE t (x)');
    o.close();
    expect(errorOf(() => inspectDatabase(other))).to.match(/not a Tabula controller database \(no tables schema_version, containers/);
    // A database from a newer tabula.
    const newer = join(d, 'newer.db');
    new ControllerDb(newer).close();
    const n = new Database(newer);
    n.prepare('UPDATE schema_version SET version = ?').run(SCHEMA_VERSION + 1);
    n.close();
    expect(errorOf(() => inspectDatabase(newer))).to.match(new RegExp(`schema version ${SCHEMA_VERSION + 1}, newer than this tabula understands \\(${SCHEMA_VERSION}\\)`));
  });

  it('refuses to restore over a database a controller holds open, and keeps the one it replaces', async () => {
    const d = dir();
    const backup = join(d, 'b.db');
    const chunks: Buffer[] = [];
    for await (const c of backupChunks(ctl.db)) chunks.push(c.data);
    writeFileSync(backup, Buffer.concat(chunks));

    const live = join(d, 'live.db');
    const held = new ControllerDb(live);
    held.sql.exec("INSERT INTO events (time, kind, message) VALUES ('t', 'k', 'still in the WAL')");
    expect(errorOf(() => assertNotInUse(live))).to.match(/in use \(a controller has it open\)/);
    let refused = '';
    await restoreDatabase(backup, live, { force: true }).catch((e: Error) => (refused = e.message));
    expect(refused).to.match(/in use/);
    held.close();

    assertNotInUse(live);
    let noForce = '';
    await restoreDatabase(backup, live).catch((e: Error) => (noForce = e.message));
    expect(noForce).to.match(/exists; give --force/);

    const r = await restoreDatabase(backup, live, { force: true });
    expect(r.previous).to.be.a('string');
    expect(existsSync(r.previous as string)).to.equal(true);
    expect(existsSync(`${live}-wal`)).to.equal(false);
    expect(inspectDatabase(live)).to.include({ vdisks: 2 });
    expect(inspectDatabase(r.previous as string)).to.include({ vdisks: 0 });
    // A controller opens the restored database and sees the vdisks.
    const reopened = new ControllerDb(live);
    try {
      expect(reopened.vdisks().map((v) => v.name)).to.deep.equal(['thick', 'thin']);
    } finally {
      reopened.close();
    }
  });

  it('restores into a new path without --force', async () => {
    const d = dir();
    const backup = join(d, 'b.db');
    const chunks: Buffer[] = [];
    for await (const c of backupChunks(ctl.db)) chunks.push(c.data);
    writeFileSync(backup, Buffer.concat(chunks));
    const r = await restoreDatabase(backup, join(d, 'fresh.db'));
    expect(r.previous).to.equal(null);
    expect(r.summary).to.include({ path: join(d, 'fresh.db'), vdisks: 2, containers: 1 });
    expect(tempsIn(d)).to.deep.equal([]);
  });
});
