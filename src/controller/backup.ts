// Online backup and offline restore of the controller database.
//
// Backup: SQLite's online backup API (better-sqlite3 `db.backup`) copies the
// live database page by page into a temp file next to it, in steps, so the
// controller keeps serving; writes made through the same connection while
// it runs are carried into the copy, so the result is one consistent
// snapshot. The file is then streamed in chunks and deleted.
//
// Restore (controller stopped): the file must be a Tabula database at a
// schema version this build knows (an older one is migrated when the
// controller next opens it); the database in place must not be open in any
// controller, which SQLite's own locks tell us (see assertNotInUse).

import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readSync, renameSync, rmSync, statSync } from 'node:fs';
import { copyFile, open, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { BackupChunk } from '../wire/proto-types.js';
import { log } from '../util/log.js';
import { countRows, probeExclusiveLock, quickCheck, sqlTableNames, useRollbackJournal, type ControllerDb } from './db.js';
import { SCHEMA_VERSION, storedSchemaVersion } from './schema.js';

/** gRPC messages stay well below the 4 MiB default limit. */
export const BACKUP_CHUNK_SIZE = 1 << 20;

/** Tables every schema version has; a file without them is not a Tabula database. */
const CORE_TABLES = ['schema_version', 'containers', 'vdisks', 'segments', 'container_segments', 'agents', 'exports'] as const;

const SQLITE_MAGIC = 'SQLite format 3\0';

/** What a database file holds, as `tabula backup` and `tabula restore` report it. */
export interface DatabaseSummary {
  path: string;
  bytes: number;
  schemaVersion: number;
  /** SQL tables in the file (schema objects, not mapping tables). */
  tables: number;
  vdisks: number;
  snapshots: number;
  containers: number;
  exports: number;
  agents: number;
}

/** The file is missing, not SQLite, not Tabula's, damaged, or from a newer version. */
export class DatabaseFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DatabaseFileError';
  }
}

/** A temp path in the directory of `path` (same filesystem, so a rename is atomic). */
export function siblingTemp(path: string, tag: string): string {
  return join(dirname(path), `.${basename(path)}.${tag}-${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
}

/**
 * Copies the live database into a temp file next to it; resolves with its
 * path. The caller deletes it (backupChunks does).
 */
export async function snapshotDatabase(db: ControllerDb): Promise<string> {
  const tmp = siblingTemp(db.path, 'backup');
  try {
    await db.backupTo(tmp);
    // The copy keeps the WAL flag of its source; a rollback-journal file is
    // self-contained, and reading it does not make -wal/-shm files appear
    // next to it. The controller switches it back to WAL when it opens it.
    const copy = new Database(tmp, { fileMustExist: true });
    try {
      useRollbackJournal(copy);
    } finally {
      copy.close();
    }
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new Error(`backup of ${db.path} into ${tmp} failed: ${(err as Error).message}`);
  }
  return tmp;
}

/**
 * The online backup as a stream of chunks of at most `chunkSize` bytes
 * (one empty chunk for an empty file, which SQLite never makes). The temp
 * file is removed when the iteration ends, early or not.
 */
export async function* backupChunks(db: ControllerDb, chunkSize = BACKUP_CHUNK_SIZE): AsyncGenerator<BackupChunk> {
  const tmp = await snapshotDatabase(db);
  try {
    const fh = await open(tmp, 'r');
    try {
      const totalBytes = (await fh.stat()).size;
      log.info('database backup taken', { db: db.path, bytes: totalBytes });
      let pos = 0;
      do {
        // A fresh buffer per chunk: gRPC may still hold the previous one while we read.
        const data = Buffer.allocUnsafe(Math.min(chunkSize, totalBytes - pos));
        let got = 0;
        while (got < data.length) {
          const { bytesRead } = await fh.read(data, got, data.length - got, pos + got);
          if (bytesRead === 0) throw new Error(`backup file ${tmp} shrank while being sent (at ${pos + got} of ${totalBytes} bytes)`);
          got += bytesRead;
        }
        pos += data.length;
        yield { data, totalBytes };
      } while (pos < totalBytes);
    } finally {
      await fh.close();
    }
  } finally {
    await rm(tmp, { force: true });
  }
}

/**
 * Opens `path` read-only and checks that it is a sound Tabula database this
 * build can run (schema version 1..SCHEMA_VERSION); throws DatabaseFileError
 * naming what is wrong.
 */
export function inspectDatabase(path: string): DatabaseSummary {
  if (!existsSync(path)) throw new DatabaseFileError(`${path}: no such file`);
  const bytes = statSync(path).size;
  // Check the header first: better-sqlite3 opens anything and fails on first use.
  const head = Buffer.alloc(16);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, head, 0, 16, 0);
  } finally {
    closeSync(fd);
  }
  if (head.toString('latin1') !== SQLITE_MAGIC) throw new DatabaseFileError(`${path} is not an SQLite database (bad header)`);
  // A WAL-mode file (a copy of a live database rather than a backup) gets
  // -wal and -shm files when opened; those we made go again afterwards.
  const sides = [`${path}-wal`, `${path}-shm`].filter((p) => !existsSync(p));
  let sql: Database.Database;
  try {
    sql = new Database(path, { readonly: true, fileMustExist: true });
  } catch (err) {
    throw new DatabaseFileError(`${path} cannot be opened: ${(err as Error).message}`);
  }
  try {
    const names = sqlTableNames(sql);
    const missing = CORE_TABLES.filter((t) => !names.has(t));
    if (missing.length > 0) throw new DatabaseFileError(`${path} is not a Tabula controller database (no table${missing.length > 1 ? 's' : ''} ${missing.join(', ')})`);
    const version = storedSchemaVersion(sql);
    if (version === undefined || !Number.isInteger(version) || version < 1) throw new DatabaseFileError(`${path} has no schema version`);
    if (version > SCHEMA_VERSION) {
      throw new DatabaseFileError(`${path} is at schema version ${version}, newer than this tabula understands (${SCHEMA_VERSION}); use a newer tabula`);
    }
    const check = quickCheck(sql);
    if (check !== 'ok') throw new DatabaseFileError(`${path} is damaged: ${check}`);
    return { path, bytes, schemaVersion: version, tables: names.size, ...countRows(sql) };
  } catch (err) {
    if (err instanceof DatabaseFileError) throw err;
    throw new DatabaseFileError(`${path} cannot be read as a Tabula database: ${(err as Error).message}`);
  } finally {
    sql.close();
    for (const p of sides) if (existsSync(p) && (!p.endsWith('-wal') || statSync(p).size === 0)) rmSync(p, { force: true });
  }
}

/**
 * Throws when a process holds `path` open as an SQLite database. A running
 * controller keeps its WAL-mode connection open, so its shared lock on the
 * shared-memory index stops anyone else from taking SQLite's EXCLUSIVE lock;
 * we try exactly that, without waiting, and let go at once. (A lock file of
 * our own would miss a controller of an older version, and a stale one
 * would outlive a crash; SQLite's locks go with the process.)
 */
export function assertNotInUse(path: string): void {
  if (!existsSync(path)) return;
  let sql: Database.Database | undefined;
  try {
    sql = new Database(path, { fileMustExist: true, timeout: 0 });
    probeExclusiveLock(sql);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED') {
      throw new DatabaseFileError(`${path} is in use (a controller has it open); stop the controller before restoring`);
    }
    throw new DatabaseFileError(`${path} cannot be opened to check that no controller uses it: ${(err as Error).message}`);
  } finally {
    sql?.close();
  }
}

export interface RestoreResult {
  summary: DatabaseSummary;
  /** Where the database that was in place went (null when there was none). */
  previous: string | null;
}

/**
 * Puts the backup `file` in place as the database at `dbPath`. The file is
 * checked first; the database in place (with its WAL) is moved aside, never
 * deleted, because a WAL left next to the restored file would be replayed
 * into it.
 */
export async function restoreDatabase(file: string, dbPath: string, opts: { force?: boolean } = {}): Promise<RestoreResult> {
  const summary = inspectDatabase(file);
  const exists = existsSync(dbPath);
  if (exists && opts.force !== true) throw new DatabaseFileError(`${dbPath} exists; give --force to replace it (it is kept as ${dbPath}.before-restore-*)`);
  assertNotInUse(dbPath);
  // A new place for the database (a new controller's data directory) is made as a controller would need it.
  mkdirSync(dirname(dbPath), { recursive: true });
  const tmp = siblingTemp(dbPath, 'restore');
  try {
    await copyFile(file, tmp);
    const fd = openSync(tmp, 'r+');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    let previous: string | null = null;
    if (exists) {
      previous = `${dbPath}.before-restore-${new Date().toISOString().replace(/[:.]/g, '-')}`;
      renameSync(dbPath, previous);
    }
    for (const suffix of ['-wal', '-shm', '-journal']) {
      const side = `${dbPath}${suffix}`;
      if (!existsSync(side)) continue;
      if (previous !== null && suffix === '-wal') renameSync(side, `${previous}-wal`);
      else rmSync(side, { force: true });
    }
    renameSync(tmp, dbPath);
    fsyncDir(dirname(dbPath));
    log.info('database restored', { from: file, to: dbPath, previous });
    return { summary: { ...summary, path: dbPath }, previous };
  } finally {
    rmSync(tmp, { force: true });
  }
}

/** Makes a rename in `dir` durable. */
export function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** The part of a gRPC server stream that streamBackup uses. */
export interface ChunkSink {
  write(chunk: BackupChunk): boolean;
  end(): void;
  emit(event: 'error', err: { code: number; details: string }): boolean;
  once(event: 'drain' | 'cancelled' | 'close', fn: () => void): unknown;
  readonly cancelled: boolean;
}

/** gRPC INTERNAL, without importing grpc-js into this module's users' types. */
const STATUS_INTERNAL = 13;

/**
 * Sends `chunks` down a server stream, waiting for 'drain' when the stream
 * is full (a large database is never all in memory), and stops early, the
 * temp file removed, when the client goes away.
 */
export async function streamBackup(chunks: AsyncGenerator<BackupChunk>, sink: ChunkSink): Promise<void> {
  let gone = false;
  sink.once('cancelled', () => (gone = true));
  try {
    for await (const chunk of chunks) {
      if (gone || sink.cancelled) break;
      if (!sink.write(chunk)) {
        await new Promise<void>((resolve) => {
          sink.once('drain', resolve);
          sink.once('cancelled', resolve);
          sink.once('close', resolve);
        });
      }
    }
    if (gone || sink.cancelled) {
      await chunks.return(undefined);
      log.info('database backup abandoned by the client');
      return;
    }
    sink.end();
  } catch (err) {
    log.error('database backup failed', { err: (err as Error).message });
    sink.emit('error', { code: STATUS_INTERNAL, details: `backup failed: ${(err as Error).message}` });
  }
}
