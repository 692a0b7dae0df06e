// Online migration (docs/architecture.md, "Migration"): a vdisk's segments move
// to another container, a few at a time (MIGRATION_CONCURRENCY), each on
// its own, while agents keep serving it:
//
//   1. the location joins MigrationHost.migrating (faults on it WAIT);
//   2. an exclusive normal entry becomes no-write: push, acks (reads go on,
//      writes fault and wait); a shared entry is no-write already;
//   3. a new location is reserved on the target and one agent reaching both
//      containers copies the segment (CopyCommand / CopyDone; the steps
//      rebuild and resync share, segment-copy.ts);
//   4. the entry is remapped to the new location (normal, or no-write in a
//      snapshot): push, acks; the old location loses its reference and is
//      freed once every exporter has acked (TableChanges.reclaim);
//   5. the location leaves `migrating` and held writes get RETRY.
//
// A copy that misses its deadline (agent-commands.ts) is tried again, by
// another agent when one reaches both containers; its new location stays
// reserved until the silent agent answers or is gone.
//
// A write therefore waits for its own segment's copy at most. A shared location
// is copied for this vdisk only (its other holders keep it, and one left
// alone becomes writable again, as after copy-on-write).
//
// Progress is in the `migrations` table after every segment; a controller
// that restarts resumes every migration still 'running'. A crash between
// steps leaves at worst, per segment in flight, an exclusive entry no-write
// (the next write makes it writable) and an uncommitted copy in free space.

import { SegmentState } from '../table/index.js';
import { formatSize } from '../util/size.js';
import { log } from '../util/log.js';
import { ContainerFullError, locKey } from './allocator.js';
import type { ControllerDb, Location, MigrationRow, VdiskRow } from './db.js';
import { containerDomains } from './domains.js';
import type { AgentCommands } from './agent-commands.js';
import { copySegmentData, frozenEverywhere, pauseRun } from './segment-copy.js';
import type { AgentRegistry } from './agent-registry.js';
import type { Allocator } from './allocator.js';
import type { TableChanges } from './table-changes.js';
import type { WriteBehind } from './write-behind.js';

/** What a migration needs of the controller. */
export interface MigrationHost {
  readonly db: ControllerDb;
  readonly allocator: Pick<Allocator, 'eligibleContainers' | 'reserve' | 'unreserve'>;
  /** Flushed before reading acked versions. */
  readonly writeBehind: Pick<WriteBehind, 'flush'>;
  /** The controller is shutting down: loops stop (and resume on restart). */
  readonly closed: boolean;
  /** Locations (locKey) being copied: a migration adds each while it moves it. */
  readonly migrating: Set<string>;
  readonly tables: Pick<TableChanges, 'quiesce' | 'changeTable' | 'settleShared'>;
  readonly agents: Pick<AgentRegistry, 'link'>;
  readonly commands: Pick<AgentCommands, 'copyAgent' | 'copy'>;
}

/** How long a migration waits before trying again when no agent can copy. */
const NO_AGENT_RETRY_MS = 500;
/** Pause after a segment that could not be moved this time. */
const SKIP_PAUSE_MS = 20;
/**
 * Segments of one vdisk in flight at once. Each still goes through every
 * step on its own (a write waits for its own segment's copy only); the
 * copies overlap the table changes of the others, which are serialized per
 * vdisk anyway. One at a time spent half of each segment waiting for its
 * two table changes (freeze, remap: ~10 ms each under load).
 */
export const MIGRATION_CONCURRENCY = 4;

export interface MigrationProgress {
  row: MigrationRow;
  /** Bytes per second since this controller (re)started the migration; 0 when unknown. */
  bytesPerSecond: number;
  /** Seconds left at that rate; -1 when unknown. */
  etaSeconds: number;
  percent: number;
}

type Outcome = 'moved' | 'skipped' | 'no-agent';

interface Run {
  vdiskId: string;
  cancel: boolean;
  /** Settles when the loop has stopped. */
  done: Promise<void>;
  startMs: number;
  startBytes: number;
  wake: (() => void) | null;
}

export class MigrationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MigrationError';
  }
}

const now = (): string => new Date().toISOString();

export class MigrationManager {
  readonly #host: MigrationHost;
  /** Writes held on a vdisk's location (WAIT) look again: it left `migrating`. */
  readonly #released: (vdiskId: string) => void;
  readonly #runs = new Map<string, Run>();
  readonly #concurrency: number;

  constructor(host: MigrationHost, released: (vdiskId: string) => void, concurrency = MIGRATION_CONCURRENCY) {
    this.#host = host;
    this.#released = released;
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error(`migration concurrency must be a positive integer, not ${concurrency}`);
    this.#concurrency = concurrency;
  }

  get #db() {
    return this.#host.db;
  }

  /** Whether a migration loop of this vdisk is running in this controller. */
  running(vdiskId: string): boolean {
    return this.#runs.has(vdiskId);
  }

  /** Restarts every migration the database shows as running (controller start). */
  resumeAll(): void {
    for (const m of this.#db.migrations()) {
      if (m.state !== 'running' || this.#runs.has(m.vdiskId)) continue;
      log.info(`resuming migration of vdisk ${this.#db.vdisk(m.vdiskId)?.name ?? m.vdiskId} (${m.segmentsDone}/${m.segmentsTotal} segments done)`);
      this.#launch(m.vdiskId);
    }
  }

  /**
   * Starts (or restarts) a migration of `vdisk`: to `to` (every segment not
   * there), or off `from` (evacuation: segments on it, to any other
   * eligible container). Returns the persisted row.
   */
  start(vdisk: VdiskRow, target: { to: string | null; from: string | null }): MigrationRow {
    const existing = this.#db.migration(vdisk.id);
    if (existing?.state === 'running' && this.#runs.has(vdisk.id)) {
      throw new MigrationError(`vdisk ${vdisk.name} is already being migrated; cancel that migration first`);
    }
    const t = now();
    const row: MigrationRow = {
      vdiskId: vdisk.id,
      toContainer: target.to,
      fromContainer: target.from,
      state: 'running',
      segmentsTotal: this.#remaining(vdisk.id, target.to, target.from),
      segmentsDone: 0,
      bytesDone: 0,
      started: t,
      updated: t,
      finished: null,
      error: '',
    };
    this.#db.saveMigration(row);
    this.#db.event('migration', vdisk.name, `started: ${describe(row)} (${row.segmentsTotal} segments)`);
    log.info(`migration of vdisk ${vdisk.name} started: ${describe(row)}, ${row.segmentsTotal} segments`);
    this.#launch(vdisk.id);
    return row;
  }

  /** Stops a running migration after the segments in progress; resolves with the final row. */
  async cancel(vdiskId: string): Promise<MigrationRow | undefined> {
    const run = this.#runs.get(vdiskId);
    if (run) {
      run.cancel = true;
      run.wake?.();
      await run.done;
    }
    const m = this.#db.migration(vdiskId);
    if (m && m.state === 'running') {
      // Not running in this controller (e.g. stopped while shutting down): mark it anyway.
      m.state = 'cancelled';
      m.updated = now();
      m.finished = m.updated;
      this.#db.saveMigration(m);
    }
    return this.#db.migration(vdiskId);
  }

  /** Stops every loop without changing the persisted state (controller shutdown): they resume on restart. */
  stopAll(): void {
    for (const run of this.#runs.values()) run.wake?.();
  }

  /** Resolves when the vdisk's migration loop (if any) has stopped. */
  async settled(vdiskId: string): Promise<void> {
    await this.#runs.get(vdiskId)?.done;
  }

  progress(vdiskId: string): MigrationProgress | undefined {
    const row = this.#db.migration(vdiskId);
    if (!row) return undefined;
    const run = this.#runs.get(vdiskId);
    const total = Math.max(row.segmentsTotal, row.segmentsDone);
    const percent = total === 0 ? 100 : (100 * row.segmentsDone) / total;
    let bytesPerSecond = 0;
    let etaSeconds = row.state === 'running' ? -1 : 0;
    if (run && row.state === 'running') {
      const secs = (Date.now() - run.startMs) / 1000;
      const moved = row.bytesDone - run.startBytes;
      if (secs > 0 && moved > 0) {
        bytesPerSecond = moved / secs;
        const segSize = this.#db.vdisk(vdiskId)?.segmentSize ?? 0;
        etaSeconds = ((total - row.segmentsDone) * segSize) / bytesPerSecond;
      }
    }
    return { row: { ...row, segmentsTotal: total }, bytesPerSecond, etaSeconds, percent };
  }

  /** Segments still to move. */
  #remaining(vdiskId: string, to: string | null, from: string | null): number {
    return this.#db.countToMigrate(vdiskId, to, from);
  }

  #next(vdiskId: string, to: string | null, from: string | null, after: number): { seg: number; loc: Location } | undefined {
    return this.#db.nextToMigrate(vdiskId, to, from, after);
  }

  #launch(vdiskId: string): void {
    const row = this.#db.migration(vdiskId);
    const run: Run = { vdiskId, cancel: false, done: Promise.resolve(), startMs: Date.now(), startBytes: row?.bytesDone ?? 0, wake: null };
    this.#runs.set(vdiskId, run);
    run.done = this.#loop(run)
      .catch((err: Error) => {
        if (this.#host.closed) return;
        log.error(`migration of vdisk ${vdiskId} stopped: ${err.message}`);
        this.#finish(vdiskId, 'failed', err.message);
      })
      .finally(() => {
        if (this.#runs.get(vdiskId) === run) this.#runs.delete(vdiskId);
      });
  }

  #finish(vdiskId: string, state: 'done' | 'cancelled' | 'failed', error = ''): void {
    const m = this.#db.migration(vdiskId);
    if (!m) return;
    m.state = state;
    m.error = error;
    m.updated = now();
    m.finished = m.updated;
    this.#db.saveMigration(m);
    const name = this.#db.vdisk(vdiskId)?.name ?? vdiskId;
    this.#db.event('migration', name, `${state}${error ? `: ${error}` : ''} (${m.segmentsDone} segments moved)`);
    log.info(`migration of vdisk ${name} ${state}${error ? `: ${error}` : ''}`);
  }

  async #loop(run: Run): Promise<void> {
    const host = this.#host;
    let after = -1;
    let wrapped = false;
    /** Segments being moved now, each settling with its segment number. */
    const inFlight = new Map<number, Promise<{ seg: number; outcome: Outcome }>>();
    const vdiskId = run.vdiskId;
    let failure: Error | null = null;
    // Lets the segments in flight end before the loop stops (cancel, failure, shutdown).
    const drain = async (): Promise<void> => {
      await Promise.allSettled(inFlight.values());
    };
    for (;;) {
      if (host.closed) return drain();
      if (failure !== null) {
        await drain();
        throw failure;
      }
      if (run.cancel) {
        await drain();
        return this.#finish(vdiskId, 'cancelled');
      }
      const m = this.#db.migration(vdiskId);
      const vdisk = this.#db.vdisk(vdiskId);
      if (!m || !vdisk || m.state !== 'running') return drain();
      // Fill the pipeline with the next segments to move, in order.
      let next: { seg: number; loc: Location } | undefined;
      while (inFlight.size < this.#concurrency) {
        next = this.#next(vdisk.id, m.toContainer, m.fromContainer, after);
        while (next !== undefined && inFlight.has(next.seg)) next = this.#next(vdisk.id, m.toContainer, m.fromContainer, next.seg);
        if (next === undefined) {
          // Wrap around once per pass: segments allocated behind us (thin writes) or skipped.
          if (after < 0 || wrapped) break;
          after = -1;
          wrapped = true;
          continue;
        }
        after = next.seg;
        const seg = next.seg;
        inFlight.set(
          seg,
          this.#moveSegment(run, vdisk, m, seg, next.loc).then(
            (outcome) => ({ seg, outcome }),
            (err: unknown) => {
              failure ??= err instanceof Error ? err : new Error(String(err));
              return { seg, outcome: 'skipped' as Outcome };
            },
          ),
        );
      }
      if (inFlight.size === 0) return this.#finish(vdisk.id, 'done');
      const { seg, outcome } = await Promise.race(inFlight.values());
      inFlight.delete(seg);
      if (host.closed) return drain();
      if (failure !== null) continue;
      if (outcome === 'no-agent') {
        // Looked at again after the pause (it is behind the cursor: next pass).
        wrapped = false;
        await pauseRun(run, NO_AGENT_RETRY_MS);
        continue;
      }
      // A skipped entry (changed under us, or being moved by another vdisk's
      // migration) is looked at again on the next pass; never spin on it.
      if (outcome === 'skipped') {
        wrapped = false;
        await pauseRun(run, SKIP_PAUSE_MS);
      }
      if (outcome === 'moved') wrapped = false;
      const fresh = this.#db.migration(vdisk.id);
      if (!fresh || fresh.state !== 'running') continue;
      if (outcome === 'moved') {
        fresh.segmentsDone++;
        fresh.bytesDone += vdisk.segmentSize;
      }
      fresh.segmentsTotal = fresh.segmentsDone + this.#remaining(vdisk.id, fresh.toContainer, fresh.fromContainer);
      fresh.error = '';
      fresh.updated = now();
      this.#db.saveMigration(fresh);
    }
  }

  #note(vdiskId: string, error: string): void {
    const m = this.#db.migration(vdiskId);
    if (!m || m.error === error) return;
    m.error = error;
    m.updated = now();
    this.#db.saveMigration(m);
  }

  /**
   * The location of `seg` this migration moves: the leg on its from-container;
   * else (a target only) the one location of a single-copy entry, or of a
   * mirrored one the leg in the target's failure domain (no two legs share a
   * domain), else its last leg. Undefined when no leg is to move.
   */
  #legToMove(vdisk: VdiskRow, m: MigrationRow, seg: number, domainOf: (id: string) => string): Location | undefined {
    const locs = this.#db.locationsOfSegment(vdisk.id, seg);
    if (m.fromContainer !== null) return locs.find((l) => l.containerId === m.fromContainer);
    if (locs.length <= 1 || m.toContainer === null) return locs[0];
    if (locs.some((l) => l.containerId === m.toContainer)) return undefined;
    const d = domainOf(m.toContainer);
    return locs.find((l) => domainOf(l.containerId) === d) ?? locs[locs.length - 1];
  }

  /** One segment (one of its legs), steps 1-5 above. 'skipped' when the entry changed under us (looked at again later). */
  async #moveSegment(run: Run, vdisk: VdiskRow, m: MigrationRow, seg: number, first: Location): Promise<Outcome> {
    const host = this.#host;
    const db = this.#db;
    const what = `migration of vdisk ${vdisk.name} segment ${seg}`;
    // Mirrored entries: the moved leg's target must be in a domain the other legs do not use.
    const mirrored = db.segmentLegs(vdisk.id, seg).length > 0;
    const domains = mirrored ? containerDomains(db) : new Map<string, string>();
    const domainOf = (id: string): string => domains.get(id) ?? `container:${id}`;
    const old = mirrored ? this.#legToMove(vdisk, m, seg, domainOf) : first;
    if (old === undefined) return 'skipped';
    const key = locKey(old);
    // Target containers: the chosen one, or (evacuation) any the vdisk may use but the source.
    const eligible = host.allocator.eligibleContainers(vdisk).filter((c) => (m.toContainer !== null ? c === m.toContainer : c !== m.fromContainer));
    if (eligible.length === 0) {
      const which = m.toContainer !== null ? `target container ${m.toContainer} is` : `no container other than ${m.fromContainer ?? '?'} is`;
      throw new MigrationError(
        `${which} eligible for vdisk ${vdisk.name} (it must be online, of segment size ${formatSize(vdisk.segmentSize)}, and reached by every agent exporting the vdisk)`,
      );
    }
    if (host.migrating.has(key)) return 'skipped';
    host.migrating.add(key);
    let fresh: Location | undefined;
    let committed = false;
    /** The copy missed its deadline: its `late` gives up the new location. */
    let overdue = false;
    try {
      const row = db.segment(vdisk.id, seg);
      const legs = mirrored ? db.locationsOfSegment(vdisk.id, seg) : [{ containerId: row.containerId ?? '', offset: row.offset ?? -1 }];
      if (!legs.some((l) => same(l, old))) return 'skipped';
      const others = legs.filter((l) => !same(l, old));
      const placeable = mirrored
        ? eligible.filter((c) => !others.some((l) => l.containerId === c || domainOf(l.containerId) === domainOf(c)))
        : eligible;
      if (placeable.length === 0) {
        throw new MigrationError(
          `${what}: no eligible target for its leg on container ${old.containerId} is in a failure domain its other legs (${others.map((l) => domainOf(l.containerId)).join(', ')}) do not use`,
        );
      }
      // Any leg holds the data once the entry is no-write: the moved one, else another that an agent reaches with the target.
      const sources = [old, ...others.filter((l) => db.container(l.containerId)?.state !== 'failed')];
      const agentFor = (dst: string): { agent: string; src: Location } | null => {
        for (const src of sources) {
          const agent = host.commands.copyAgent([src.containerId, dst]);
          if (agent !== null) return { agent, src };
        }
        return null;
      };
      // Space and a copying agent first, so nothing is frozen for a copy that
      // cannot run: only targets some online agent reaches with the source.
      const copyable = placeable.filter((c) => agentFor(c) !== null);
      if (copyable.length === 0) {
        this.#note(vdisk.id, `waiting for an online agent that reaches container ${old.containerId} and a target container`);
        return 'no-agent';
      }
      try {
        [fresh] = host.allocator.reserve(vdisk, 1, copyable) as [Location];
      } catch (err) {
        if (err instanceof ContainerFullError) throw new MigrationError(`${what}: ${err.message}`);
        throw err;
      }
      const via = agentFor(fresh.containerId);
      if (via === null) {
        this.#note(vdisk.id, `waiting for an online agent that reaches containers ${old.containerId} and ${fresh.containerId}`);
        return 'no-agent';
      }
      const { agent, src } = via;
      // The version from which every exporter sees the entry no-write.
      let frozenAt = db.vdisk(vdisk.id)?.version ?? 0;
      if (row.state === SegmentState.Normal) {
        // Step 2: reads go on, writes fault (and wait: the location is in `migrating`).
        const r = await host.tables.changeTable(vdisk.id, (c) => {
          const r = db.segment(vdisk.id, seg);
          if (r.state !== SegmentState.Normal || r.containerId === null || r.offset === null) return;
          // The primary stays, and with it the extra legs.
          if (mirrored ? db.locationsOfSegment(vdisk.id, seg).some((l) => same(l, old)) : r.containerId === old.containerId && r.offset === old.offset) {
            c.set(seg, SegmentState.NoWrite, { containerId: r.containerId, offset: r.offset });
          }
        });
        if (r !== null) frozenAt = r.version;
      }
      const frozen = db.segment(vdisk.id, seg);
      const stillThere = mirrored ? db.locationsOfSegment(vdisk.id, seg).some((l) => same(l, old)) : frozen.containerId === old.containerId && frozen.offset === old.offset;
      if (frozen.state !== SegmentState.NoWrite || !stillThere) return 'skipped';
      // An exporter that has not acked a table with the entry no-write (offline,
      // fenced) might still write the old location: copy only once all have.
      const lag = await frozenEverywhere(host, vdisk, frozenAt);
      if (lag !== null) {
        this.#note(vdisk.id, lag);
        return 'no-agent';
      }
      const copied = await copySegmentData(host, agent, vdisk, src, fresh);
      if (copied.kind === 'retry') {
        // Overdue: tried again with another agent (AgentCommands.copyAgent puts this one last),
        // and the new location is given up only once the silent one is done. Else the agent went away mid-copy.
        overdue = copied.overdue;
        this.#note(vdisk.id, copied.overdue ? `${what}: ${copied.reason}` : copied.reason);
        return host.closed ? 'skipped' : 'no-agent';
      }
      if (host.closed) return 'skipped';
      if (copied.kind === 'failed') throw new MigrationError(`${what}: ${copied.reason}`);
      const target = fresh;
      await host.tables.changeTable(vdisk.id, (c) => {
        const r = db.segment(vdisk.id, seg);
        if (r.state !== SegmentState.NoWrite) return;
        if (!mirrored) {
          if (r.containerId !== old.containerId || r.offset !== old.offset) return;
          c.set(seg, vdisk.kind === 'snapshot' ? SegmentState.NoWrite : SegmentState.Normal, target);
          committed = true;
          return;
        }
        const now = db.locationsOfSegment(vdisk.id, seg);
        const i = now.findIndex((l) => same(l, old));
        if (i < 0) return;
        const next = now.map((l, j) => (j === i ? target : l));
        // Writable again only when no other leg is still shared (with a snapshot, say).
        const writable = vdisk.kind !== 'snapshot' && next.every((l, j) => j === i || db.refcount(l) === 1);
        const state = writable ? SegmentState.Normal : SegmentState.NoWrite;
        // Leg 0 moved: a new first location beside the same extra legs; an
        // extra leg: the first location stays. Stale legs stay either way.
        if (i === 0) c.set(seg, state, target, next.slice(1));
        else {
          c.setLegs(seg, next.slice(1));
          c.set(seg, state, next[0] as Location);
        }
        committed = true;
      });
      return committed ? 'moved' : 'skipped';
    } finally {
      if (fresh && !overdue) host.allocator.unreserve([fresh], !committed);
      host.migrating.delete(key);
      if (!host.closed) {
        // Held writes look again now that the remap is acked; a location
        // left to one writable holder becomes writable (also after an
        // abandoned step, which leaves an exclusive entry no-write).
        this.#released(vdisk.id);
        await host.tables.settleShared(old).catch((e: Error) => log.warn(`${what}: ${e.message}`));
      }
    }
  }
}

const same = (a: Location, b: Location): boolean => a.containerId === b.containerId && a.offset === b.offset;

function describe(m: MigrationRow): string {
  if (m.toContainer !== null && m.fromContainer !== null) return `from container ${m.fromContainer} to ${m.toContainer}`;
  if (m.toContainer !== null) return `to container ${m.toContainer}`;
  return `off container ${m.fromContainer ?? '?'}`;
}
