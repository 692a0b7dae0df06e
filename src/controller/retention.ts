// Retention of the fault log and the event log: each keeps at most its
// newest `maxRows` rows and nothing older than `maxAgeDays`. Every thin
// first write adds a fault row, so without this a vdisk filled once grows
// the database by a row per segment, forever (issue 19).
//
// Pruning runs in the background, in small batches (db.pruneLog: one
// short read and one delete by rowid range each, without an fsync), each
// batch its own turn of the event loop, so the fault path never waits
// behind a long write. Between passes a log may hold up to `maxRows` plus
// what arrives in one interval. The Prometheus counters
// (metrics/controller-metrics.ts) count every fault and are not affected.
//
// docs/deploy.md, "Retention and deadlines", documents the keys and the
// database bound they give.

import { log } from '../util/log.js';
import type { ControllerDb, LogTable } from './db.js';

export interface RetentionLimits {
  /** Newest rows kept (0 keeps none). */
  maxRows: number;
  /** Rows older than this are removed (days, may be fractional). */
  maxAgeDays: number;
}

export interface RetentionOptions {
  faults?: Partial<RetentionLimits>;
  events?: Partial<RetentionLimits>;
  /** Time between passes (default 30 s). */
  intervalMs?: number;
  /** Rows deleted per batch, each in its own turn (default 500). */
  batchRows?: number;
}

/**
 * Defaults: 20,000 faults (about 6 MB in SQLite, docs/deploy.md) cover
 * 20 GiB of first writes at 1 MiB segments, far more than `tabula fault ls`
 * shows; events are rarer and kept longer.
 */
export const DEFAULT_RETENTION: Readonly<Record<LogTable, RetentionLimits>> = {
  faults: { maxRows: 20_000, maxAgeDays: 14 },
  events: { maxRows: 20_000, maxAgeDays: 90 },
};
export const DEFAULT_RETENTION_INTERVAL_MS = 30_000;
export const DEFAULT_RETENTION_BATCH_ROWS = 500;

const DAY_MS = 86_400_000;

export class Retention {
  readonly #db: ControllerDb;
  readonly #limits: Record<LogTable, RetentionLimits>;
  readonly #intervalMs: number;
  readonly #batchRows: number;
  #timer: NodeJS.Timeout | null = null;
  #running: Promise<Record<LogTable, number>> | null = null;
  #stopped = false;
  /** Rows removed since start, per log (for tests and the log line). */
  readonly removed: Record<LogTable, number> = { faults: 0, events: 0 };

  constructor(db: ControllerDb, opts: RetentionOptions = {}) {
    this.#db = db;
    this.#limits = {
      faults: { ...DEFAULT_RETENTION.faults, ...defined(opts.faults) },
      events: { ...DEFAULT_RETENTION.events, ...defined(opts.events) },
    };
    for (const [table, l] of Object.entries(this.#limits)) {
      if (!Number.isInteger(l.maxRows) || l.maxRows < 0) throw new Error(`retention of ${table}: maxRows must be a whole number >= 0, not ${l.maxRows}`);
      if (!(l.maxAgeDays > 0)) throw new Error(`retention of ${table}: maxAgeDays must be more than 0, not ${l.maxAgeDays}`);
    }
    this.#intervalMs = opts.intervalMs ?? DEFAULT_RETENTION_INTERVAL_MS;
    this.#batchRows = Math.max(1, opts.batchRows ?? DEFAULT_RETENTION_BATCH_ROWS);
  }

  get limits(): Readonly<Record<LogTable, RetentionLimits>> {
    return this.#limits;
  }

  /** Starts the background passes (the first one at once). */
  start(): void {
    if (this.#stopped || this.#timer !== null) return;
    const tick = (): void => {
      void this.prune().finally(() => {
        if (this.#stopped) return;
        this.#timer = setTimeout(tick, this.#intervalMs);
        this.#timer.unref();
      });
    };
    this.#timer = setTimeout(tick, 0);
    this.#timer.unref();
  }

  /** Stops the passes; a batch in progress ends the pass (controller shutdown). */
  stop(): void {
    this.#stopped = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  /**
   * One pass over both logs, batch by batch, each batch in its own turn;
   * resolves with the rows removed. A pass asked for while one runs joins it.
   */
  prune(): Promise<Record<LogTable, number>> {
    this.#running ??= this.#pass().finally(() => {
      this.#running = null;
    });
    return this.#running;
  }

  async #pass(): Promise<Record<LogTable, number>> {
    const out: Record<LogTable, number> = { faults: 0, events: 0 };
    for (const table of ['faults', 'events'] as const) {
      const l = this.#limits[table];
      const before = new Date(Date.now() - l.maxAgeDays * DAY_MS).toISOString();
      for (;;) {
        if (this.#stopped || !this.#db.open) return out;
        let n: number;
        try {
          n = this.#db.pruneLog(table, l.maxRows, before, this.#batchRows);
        } catch (e) {
          log.warn(`retention of the ${table} log failed; tried again next pass: ${(e as Error).message}`);
          break;
        }
        out[table] += n;
        this.removed[table] += n;
        if (n < this.#batchRows) break;
        // Lets the messages waiting (faults, acks) in before the next batch.
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    }
    if (out.faults + out.events > 0) log.debug(`retention removed ${out.faults} faults and ${out.events} events`);
    return out;
  }
}

function defined<T extends object>(o: T | undefined): Partial<T> {
  const out: Partial<T> = {};
  if (o === undefined) return out;
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}
