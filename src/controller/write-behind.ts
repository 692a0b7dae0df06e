// Bookkeeping writes that no answer and no durability guarantee waits for:
// acked versions, the fault log, agents' last-seen times. They are queued
// while messages are handled and written together in one relaxed
// transaction (db.relaxed: no fsync of its own; the next durable commit
// syncs them) from setImmediate. Node flushes the socket writes of the
// messages sent meanwhile (native immediates run first), so a fault's
// delta or reply never waits behind them. At most one flush per
// MIN_GAP_MS: a burst (acks of a delta from many agents, arriving over a
// few milliseconds) costs a transaction or two instead of one per ack.
//
// Code that reads these rows and must see the latest calls flush() first:
// admin listings, the invariant check, a backup, shutdown, and whatever
// reads exports.acked_version or exports.fenced right after awaiting acks
// (snapshots, migration; Controller's laggard waits are woken after it).

import { log } from '../util/log.js';
import type { ControllerDb } from './db.js';

/** Least time between two flushes; what comes sooner waits for the next. */
export const MIN_GAP_MS = 5;

export class WriteBehind {
  readonly #db: ControllerDb;
  #writes: (() => void)[] = [];
  /** Run after the writes have committed (they may read them). */
  #after: (() => void)[] = [];
  /** Keys of pending writes queued with `once`. */
  readonly #keys = new Set<string>();
  #scheduled: { immediate: NodeJS.Immediate } | { timer: NodeJS.Timeout } | null = null;
  /** performance.now() of the last flush. */
  #lastFlush = Number.NEGATIVE_INFINITY;

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
    this.#cancel();
    this.#lastFlush = performance.now();
    if (this.#writes.length === 0 && this.#after.length === 0) return;
    const writes = this.#writes;
    const after = this.#after;
    this.#writes = [];
    this.#after = [];
    this.#keys.clear();
    if (writes.length > 0 && this.#db.open) {
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
    if (this.#scheduled !== null) return;
    const run = (): void => {
      this.#scheduled = null;
      this.flush();
    };
    const wait = this.#lastFlush + MIN_GAP_MS - performance.now();
    if (wait <= 0) {
      this.#scheduled = { immediate: setImmediate(run) };
      return;
    }
    const timer = setTimeout(run, wait);
    // Shutdown flushes what is left (Controller.close): nothing to keep the process up for.
    timer.unref();
    this.#scheduled = { timer };
  }

  #cancel(): void {
    const s = this.#scheduled;
    if (s === null) return;
    if ('immediate' in s) clearImmediate(s.immediate);
    else clearTimeout(s.timer);
    this.#scheduled = null;
  }
}
