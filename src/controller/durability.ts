// When table versions become durable against power loss (issue 18,
// docs/architecture.md). A thin allocation commits lazily (ControllerDb.lazy:
// no fsync of its own; it survives a controller crash at once), and this
// module makes it durable:
//
// - by group commit: one fsync of the WAL covers every commit made before
//   it (the WAL is one sequential file), run off the event loop;
// - within `durableIntervalMs` of the first commit not yet durable (a timer);
// - at once when an agent must promise durability (SYNCHRONIZE CACHE, a FUA
//   write) and asks with SyncRequest: the answer (SyncReply) goes out once
//   every commit of the vdisk up to the asked version is durable;
// - and by any FULL commit meanwhile (ControllerDb.onDurable), which syncs
//   the whole WAL too.
//
// Tracks, per vdisk, the lazy versions not yet durable (the first and the
// last): a version is durable when it is below the first. Versions between
// two lazy ones are lazy too, since any FULL commit would have cleared them.
//
// Power-loss simulation for tests: with env TABULA_TEST_POWER_SNAPSHOT=<dir>,
// after every durable point (every FULL commit that wrote, every group
// commit) the database and its -wal are copied into <dir> (temp + rename,
// synchronously, in the same turn: nothing newer gets in), so <dir> always
// holds the last state that would survive a power cut. A test "pulls the
// plug" by SIGKILLing the controller, copying <dir>/<db name> and
// <dir>/<db name>-wal over the database (deleting -wal when the snapshot has
// none, and always -shm), and starting it again. In that mode the group
// commit fsyncs synchronously (so the copy is exactly what it covered),
// SQLite's automatic checkpoints are off (the database file then changes
// only at open and close, so the two files of a snapshot always belong
// together even if the kill falls between their renames), and FULL writes
// made outside a transaction (which no hook sees) are picked up by a poll
// whenever no lazy commit is pending.

import { copyFileSync, existsSync, renameSync, rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { log } from '../util/log.js';
import type { SyncRequestMsg } from '../wire/proto-types.js';
import type { ControllerDb } from './db.js';

export const DEFAULT_DURABLE_INTERVAL_MS = 1000;
/** Env var naming the power-loss snapshot directory (tests only; see the header). */
export const POWER_SNAPSHOT_ENV = 'TABULA_TEST_POWER_SNAPSHOT';
/** How often the power-snapshot mode looks for FULL writes made outside transactions. */
const SNAPSHOT_POLL_MS = 50;

export interface DurabilityOptions {
  /** Every lazy commit is durable at most this long after it (default DEFAULT_DURABLE_INTERVAL_MS). */
  intervalMs?: number;
  /** Power-loss snapshot directory (default: env TABULA_TEST_POWER_SNAPSHOT; none when unset). */
  powerSnapshotDir?: string;
}

/** Where SyncReply goes (an AgentLink). */
export interface SyncReplySink {
  send(msg: { body: 'syncReply'; syncReply: { requestId: number; ok: boolean; durableVersion: number; reason: string } }): unknown;
}

interface Pending {
  /** The first lazy version not yet durable; every version below it is. */
  first: number;
  /** The last lazy version committed. */
  last: number;
  /** performance.now() of the first one. */
  at: number;
}

interface Waiter {
  version: number;
  resolve: () => void;
}

/** Checks a durable interval (config, options): a whole number of ms from 1 to 60 000. */
export function checkDurableIntervalMs(ms: number): string | null {
  return Number.isInteger(ms) && ms >= 1 && ms <= 60_000 ? null : `durable interval must be 1 ms to 60 s, got ${ms} ms`;
}

export class Durability {
  readonly #db: ControllerDb;
  readonly #intervalMs: number;
  readonly #snapshotDir: string | null;
  readonly #pending = new Map<string, Pending>();
  readonly #waiters = new Map<string, Waiter[]>();
  #timer: NodeJS.Timeout | null = null;
  #poll: NodeJS.Timeout | null = null;
  #running = false;
  #rerun = false;
  #closed = false;
  /** Group commits done (tests, metrics). */
  groupCommits = 0;
  /** total_changes() at the last snapshot (power-snapshot mode). */
  #snapshotChanges = -1;
  readonly #totalChanges: (() => number) | null = null;

  constructor(db: ControllerDb, opts: DurabilityOptions = {}) {
    this.#db = db;
    const interval = opts.intervalMs ?? DEFAULT_DURABLE_INTERVAL_MS;
    const bad = checkDurableIntervalMs(interval);
    if (bad !== null) throw new Error(bad);
    this.#intervalMs = interval;
    const dir = opts.powerSnapshotDir ?? process.env[POWER_SNAPSHOT_ENV];
    this.#snapshotDir = dir === undefined || dir === '' ? null : dir;
    db.onDurable(() => this.#durablePoint());
    if (this.#snapshotDir !== null) {
      db.sql.pragma('wal_autocheckpoint = 0');
      const st = db.sql.prepare('SELECT total_changes()').pluck();
      this.#totalChanges = () => st.get() as number;
      log.warn(`power-loss simulation: the database is copied to ${this.#snapshotDir} at every durable point (${POWER_SNAPSHOT_ENV}; tests only)`);
      this.#snapshot();
      this.#poll = setInterval(() => {
        if (this.#pending.size === 0 && this.#db.open && this.#totalChanges!() !== this.#snapshotChanges) this.#snapshot();
      }, SNAPSHOT_POLL_MS);
      this.#poll.unref();
    }
  }

  get intervalMs(): number {
    return this.#intervalMs;
  }

  /** Vdisks with lazy commits not yet durable. */
  get pendingVdisks(): number {
    return this.#pending.size;
  }

  /**
   * A lazy commit of `version` of the vdisk (table-changes.ts, right after
   * it). The fault path: a map update, and a timer when none is armed.
   */
  committedLazily(vdiskId: string, version: number): void {
    const p = this.#pending.get(vdiskId);
    if (p === undefined) this.#pending.set(vdiskId, { first: version, last: version, at: performance.now() });
    else if (version > p.last) p.last = version;
    if (this.#timer === null && !this.#closed) this.#arm(this.#intervalMs);
  }

  /** Whether `version` of the vdisk is committed lazily and not yet durable (its table goes out with lazy=true). */
  isPending(vdiskId: string, version: number): boolean {
    const p = this.#pending.get(vdiskId);
    return p !== undefined && version >= p.first;
  }

  /** The vdisk's highest durable version, given its current version. */
  durableVersion(vdiskId: string, current: number): number {
    const p = this.#pending.get(vdiskId);
    return p === undefined ? current : Math.min(current, p.first - 1);
  }

  /** Resolves once every commit of the vdisk up to `version` is durable; starts a group commit when one is needed. */
  whenDurable(vdiskId: string, version: number): Promise<void> {
    if (!this.isPending(vdiskId, version)) return Promise.resolve();
    return new Promise((resolve) => {
      let list = this.#waiters.get(vdiskId);
      if (list === undefined) {
        list = [];
        this.#waiters.set(vdiskId, list);
      }
      list.push({ version, resolve });
      this.#kick();
    });
  }

  /** An agent's SyncRequest: answered once durable, or at once with ok=false when the database lost the version or the vdisk is gone. */
  onSyncRequest(link: SyncReplySink, r: SyncRequestMsg): void {
    const reply = (ok: boolean, durableVersion: number, reason: string): void => {
      link.send({ body: 'syncReply', syncReply: { requestId: r.requestId, ok, durableVersion, reason } });
    };
    const check = (): boolean => {
      const v = this.#db.open ? this.#db.vdisk(r.vdiskId) : undefined;
      if (v === undefined) {
        reply(false, 0, `vdisk ${r.vdiskId} does not exist`);
        return false;
      }
      if (v.version < r.version) {
        // The database lost versions the agent got (a power loss): what was written through them is not durable.
        log.warn(`sync of vdisk ${v.name} at table version ${r.version} refused: the database has version ${v.version}`);
        reply(false, this.durableVersion(r.vdiskId, v.version), `vdisk ${v.name} table version ${r.version} was lost (the database has ${v.version})`);
        return false;
      }
      return true;
    };
    if (!check()) return;
    void this.whenDurable(r.vdiskId, r.version).then(() => {
      if (this.#closed || !check()) return;
      const v = this.#db.vdisk(r.vdiskId);
      reply(true, this.durableVersion(r.vdiskId, v?.version ?? r.version), '');
    });
  }

  /** Makes every lazy commit so far durable (group commit); resolves when done (tests, shutdown paths). */
  async flush(): Promise<void> {
    if (this.#pending.size === 0) return;
    const last = new Map([...this.#pending].map(([id, p]) => [id, p.last]));
    await Promise.all([...last].map(([id, v]) => this.whenDurable(id, v)));
  }

  /** Stops the timers; makes what is pending durable (synchronously) while the database is open. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    if (this.#poll !== null) clearInterval(this.#poll);
    this.#timer = null;
    this.#poll = null;
    if (this.#pending.size > 0 && this.#db.open) {
      try {
        this.#db.syncNow();
      } catch (err) {
        log.error(`making the last lazy commits durable at shutdown failed: ${(err as Error).message}`);
      }
    }
  }

  #arm(ms: number): void {
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#kick();
    }, ms);
    // The timer alone does not keep a process alive: a closing controller syncs in close().
    this.#timer.unref();
  }

  /** Starts a group commit, or asks for one more after the one running (commits made meanwhile are not covered by it). */
  #kick(): void {
    if (this.#closed) return;
    if (this.#running) {
      this.#rerun = true;
      return;
    }
    this.#running = true;
    void this.#run();
  }

  async #run(): Promise<void> {
    try {
      do {
        this.#rerun = false;
        if (this.#pending.size === 0 || !this.#db.open) break;
        if (this.#snapshotDir !== null) {
          // Synchronous, so the snapshot is exactly what the fsync covered.
          this.#db.syncNow();
          this.groupCommits++;
          continue;
        }
        // What this fsync covers: the commits made before it starts.
        const covered = new Map<string, number>();
        for (const [id, p] of this.#pending) covered.set(id, p.last);
        const synced = await this.#db.fsyncWal();
        if (!this.#db.open) break;
        this.groupCommits++;
        if (!synced) {
          // No -wal file: a FULL commit instead (a durable point: clears everything).
          this.#db.syncNow();
          continue;
        }
        for (const [id, last] of covered) {
          const p = this.#pending.get(id);
          if (p === undefined) continue;
          if (p.last <= last) this.#pending.delete(id);
          // Lazy commits made during the fsync stay pending (everything between is lazy too).
          else p.first = Math.max(p.first, last + 1);
        }
        this.#wake();
      } while (this.#rerun && !this.#closed);
    } catch (err) {
      // Left pending: the timer tries again (and a FULL commit would cover it).
      log.error(`group commit (fsync of the WAL) failed: ${(err as Error).message}`);
    } finally {
      this.#running = false;
    }
    if (this.#closed) return;
    if (this.#rerun) {
      this.#kick();
      return;
    }
    // Lazy commits made during the last fsync: durable within the interval of the first of them.
    if (this.#pending.size > 0 && this.#timer === null) {
      let oldest = Number.POSITIVE_INFINITY;
      for (const p of this.#pending.values()) oldest = Math.min(oldest, p.at);
      this.#arm(Math.max(0, this.#intervalMs - (performance.now() - oldest)));
    }
  }

  /** A FULL commit or a synchronous fsync: every commit so far is durable. */
  #durablePoint(): void {
    this.#pending.clear();
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    this.#wake();
    if (this.#snapshotDir !== null) this.#snapshot();
  }

  /** Resolves the waiters whose versions are durable now. */
  #wake(): void {
    if (this.#waiters.size === 0) return;
    for (const [id, list] of this.#waiters) {
      const still = list.filter((w) => {
        if (this.isPending(id, w.version)) return true;
        w.resolve();
        return false;
      });
      if (still.length === 0) this.#waiters.delete(id);
      else this.#waiters.set(id, still);
    }
  }

  /** Copies the database and its -wal into the snapshot directory (temp + rename; see the header). */
  #snapshot(): void {
    const dir = this.#snapshotDir;
    if (dir === null || !this.#db.open) return;
    const name = basename(this.#db.path);
    const copy = (from: string, to: string): void => {
      copyFileSync(from, `${to}.tmp`);
      renameSync(`${to}.tmp`, to);
    };
    const wal = `${this.#db.path}-wal`;
    if (existsSync(wal)) copy(wal, join(dir, `${name}-wal`));
    else rmSync(join(dir, `${name}-wal`), { force: true });
    copy(this.#db.path, join(dir, name));
    if (this.#totalChanges !== null) this.#snapshotChanges = this.#totalChanges();
  }
}
