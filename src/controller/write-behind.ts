// Bookkeeping writes that no answer and no durability guarantee waits for:
// acked versions, the fault log, agents' last-seen times. They are queued
// while messages are handled and written together in one relaxed
// transaction (db.relaxed: no fsync of its own; the next durable commit
// syncs them) from setImmediate. Node flushes the socket writes of the
// messages sent meanwhile (native immediates run first), so a fault's
// delta or reply never waits behind them, and a burst of acks (a delta to
// many agents) costs one transaction instead of one each.
//
// Code that reads these rows and must see the latest calls flush() first:
// admin listings, the invariant check, a backup, shutdown, and whatever
// reads exports.acked_version or exports.fenced right after awaiting acks
// (snapshots, migration; Controller's laggard waits are woken after it).

import { log } from '../util/log.js';
import type { ControllerDb } from './db.js';

export class WriteBehind {
  readonly #db: ControllerDb;
  #writes: (() => void)[] = [];
  /** Run after the writes have committed (they may read them). */
  #after: (() => void)[] = [];
  /** Keys of pending writes queued with `once`. */
  readonly #keys = new Set<string>();
  #scheduled: NodeJS.Immediate | null = null;

  constructor(db: ControllerDb) {
    this.#db = db;
  }

  /** Writes queued and not yet committed. */
  get pending(): number {
    return this.#writes.length;
  }

  /** Queues a write, and optionally what to do once it has committed. */
  add(write: () => void, after?: () => void): void {
    this.#writes.push(write);
    if (after !== undefined) this.#after.push(after);
    this.#schedule();
  }

  /** Runs `fn` once the writes queued by then have committed. */
  afterWrites(fn: () => void): void {
    this.#after.push(fn);
    this.#schedule();
  }

  /** Queues a write unless one with the same key is still pending (the later one would say the same). */
  once(key: string, write: () => void): void {
    if (this.#keys.has(key)) return;
    this.#keys.add(key);
    this.add(() => {
      this.#keys.delete(key);
      write();
    });
  }

  /** Commits every queued write now, then runs their follow-ups. */
  flush(): void {
    if (this.#scheduled !== null) {
      clearImmediate(this.#scheduled);
      this.#scheduled = null;
    }
    if (this.#writes.length === 0 && this.#after.length === 0) return;
    const writes = this.#writes;
    const after = this.#after;
    this.#writes = [];
    this.#after = [];
    this.#keys.clear();
    if (writes.length > 0 && this.#db.sql.open) {
      this.#db.relaxed(() =>
        this.#db.tx(() => {
          for (const w of writes) {
            try {
              w();
            } catch (err) {
              // Bookkeeping only: a lost row delays reuse of space or leaves a
              // fault record without its outcome; the others still commit.
              log.error(`controller bookkeeping write failed: ${(err as Error).message}`);
            }
          }
        }),
      );
    }
    for (const fn of after) {
      try {
        fn();
      } catch (err) {
        log.error(`controller bookkeeping follow-up failed: ${(err as Error).message}`);
      }
    }
  }

  #schedule(): void {
    this.#scheduled ??= setImmediate(() => {
      this.#scheduled = null;
      this.flush();
    });
  }
}
