// Mirror rebuild (docs/architecture.md, "Rebuild"): a segment of a mirrored
// vdisk with fewer legs than the vdisk's copies is *degraded*; the
// controller gives it a new leg in a failure domain the segment does not
// use yet and copies a healthy leg there, while agents keep serving it.
// Per segment, as the migration engine moves one (migration.ts), a few at
// a time (REBUILD_CONCURRENCY):
//
//   1. its locations join `migrating` (faults on it WAIT);
//   2. a new location is reserved in another domain, and one agent reaching
//      a healthy leg and it is picked;
//   3. a normal entry becomes no-write: push, acks (reads go on, writes
//      fault and wait);
//   4. the agent copies the healthy leg to the new location
//      (segment-copy.ts);
//   5. the leg is added, the entry normal again (no-write while shared or
//      a snapshot's): push, acks; held writes get RETRY and from then on
//      reach every leg.
//
// What is degraded comes from the tables, so a restarted controller finds
// the same segments again and goes on. A segment with a stale leg (its
// container failed, mirrors.ts) is not rebuilt while it may still be
// resynced: its stale legs are dropped (released) once older than the
// rebuild delay, or at once by `vdisk repair` and by `container evacuate`
// of the failed container. `vdisk set-copies` raises the copies (every
// allocated segment is degraded, so rebuilt) or lowers them (the last legs
// of every segment removed in one table change, released after the acks).

import { SegmentState } from '../table/index.js';
import { log } from '../util/log.js';
import { ContainerFullError, locKey } from './allocator.js';
import type { ControllerDb, Location, StaleLeg, VdiskRow } from './db.js';
import type { AgentCommands } from './agent-commands.js';
import type { Allocator } from './allocator.js';
import type { CommitResult, TableChanges } from './table-changes.js';
import { copySegmentData, frozenEverywhere, pauseRun, type SegmentCopyHost } from './segment-copy.js';

/** Segments of one vdisk rebuilt at once (as a migration moves them: the copies overlap the table changes). */
export const REBUILD_CONCURRENCY = 4;
/** How long a failed container's stale legs wait for it to come back (and be resynced) before they are rebuilt elsewhere. */
export const DEFAULT_REBUILD_DELAY_MS = 10 * 60_000;
/** How often degraded segments and expired stale legs are looked for without being asked. */
export const DEFAULT_REBUILD_SCAN_MS = 5_000;
/** Pause before a pass that could rebuild nothing is tried again. */
const RETRY_MS = 500;

/** The change context a rebuild uses (table-changes.ts ChangeContext, with legs). */
export interface RebuildChange {
  set(seg: number, state: SegmentState, location: Location | null, legs?: readonly Location[]): void;
  setLegs(seg: number, legs: readonly Location[]): void;
}

/** The table rebuild scans (src/table MappingTable). */
export interface RebuildTable {
  readonly segmentCount: number;
  /** 0 without a location, else 1 + extra legs. */
  legCountOf(seg: number): number;
  stateOf(seg: number): SegmentState;
}

/** What a rebuild needs of the database. */
export type RebuildDb = Pick<
  ControllerDb,
  'vdisk' | 'vdisks' | 'exportsOfVdisk' | 'segment' | 'refcount' | 'event' | 'locationsOfSegment' | 'staleLegs' | 'dropStaleLeg' | 'setVdiskCopies'
>;

/** What a rebuild needs of the controller. */
export interface RebuildHost extends SegmentCopyHost {
  readonly db: RebuildDb;
  readonly allocator: Pick<Allocator, 'eligibleContainers' | 'reserve' | 'unreserve'>;
  /** Locations (locKey) being copied: a rebuild adds a segment's legs while it copies them, so writes on it wait. */
  readonly migrating: Set<string>;
  readonly tables: Pick<TableChanges, 'quiesce' | 'serialize' | 'reclaim'> & {
    table(vdiskId: string): RebuildTable;
    changeTable(vdiskId: string, change: (c: RebuildChange) => void): Promise<CommitResult | null>;
  };
  readonly commands: Pick<AgentCommands, 'copyAgent' | 'copy'>;
}

export interface RebuildOptions {
  /** Failure domain of every container (domains.ts containerDomains). */
  domains: () => ReadonlyMap<string, string>;
  /** Age at which a stale leg is dropped and its segment rebuilt (default DEFAULT_REBUILD_DELAY_MS). */
  delayMs?: number;
  /** Whether the container's stale legs are being resynced now (mirrors.ts): they are not dropped under its copies. */
  resyncing?: (containerId: string) => boolean;
  scanIntervalMs?: number;
  concurrency?: number;
}

/** Told of every rebuilt leg (the metrics). */
export interface RebuildObserver {
  copied(bytes: number): void;
}

export interface RebuildProgress {
  /** Segments given a new leg since this run started. */
  done: number;
  /** done + the degraded segments still to do. */
  total: number;
  bytes: number;
}

/** `vdiskHealth`: what `vdisk show` and `vdisk ls` say about a vdisk's copies. */
export interface VdiskHealth {
  copies: number;
  /** Allocated segments. */
  segments: number;
  /** Allocated segments with fewer legs than copies. */
  degraded: number;
  /** Legs removed because their container failed, kept for a resync. */
  stale: number;
  /** Of those, legs written to since (a resync copies them). */
  dirty: number;
  rebuilding?: RebuildProgress;
  /** Why the rebuild cannot go on now (no room in another domain, say); '' when it can. */
  blocked: string;
}

export class RebuildError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RebuildError';
  }
}

type Outcome = 'rebuilt' | 'skipped' | 'no-agent' | 'no-room' | 'failed';

interface Run {
  vdiskId: string;
  cancel: boolean;
  done: Promise<void>;
  progress: RebuildProgress;
  /** Why the last pass rebuilt nothing; '' while it goes on. */
  blocked: string;
  wake: (() => void) | null;
}

/** The copies of a vdisk row. */
export function copiesOf(v: VdiskRow): number {
  return v.copies;
}

export class RebuildManager {
  /** Told of every rebuilt leg; null when nobody counts. */
  observer: RebuildObserver | null = null;
  readonly #host: RebuildHost;
  /** Writes held on a vdisk's segment look again: it left `migrating`. */
  readonly #released: (vdiskId: string) => void;
  readonly #opts: Required<RebuildOptions>;
  readonly #runs = new Map<string, Run>();
  #timer: NodeJS.Timeout | null = null;
  #stopped = false;

  constructor(host: RebuildHost, released: (vdiskId: string) => void, opts: RebuildOptions) {
    this.#host = host;
    this.#released = released;
    const concurrency = opts.concurrency ?? REBUILD_CONCURRENCY;
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error(`rebuild concurrency must be a positive integer, not ${concurrency}`);
    this.#opts = {
      domains: opts.domains,
      resyncing: opts.resyncing ?? (() => false),
      delayMs: opts.delayMs ?? DEFAULT_REBUILD_DELAY_MS,
      scanIntervalMs: opts.scanIntervalMs ?? DEFAULT_REBUILD_SCAN_MS,
      concurrency,
    };
  }

  get #db(): RebuildDb {
    return this.#host.db;
  }

  get delayMs(): number {
    return this.#opts.delayMs;
  }

  /** Looks for work now and then every scan interval (controller start: resumes what a restart interrupted). */
  start(): void {
    this.#stopped = false;
    this.scan();
    this.#timer ??= setInterval(() => this.scan(), this.#opts.scanIntervalMs);
    this.#timer.unref();
  }

  /** Stops looking and lets the runs end after their segments in flight (controller shutdown). */
  stop(): void {
    this.#stopped = true;
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    for (const run of this.#runs.values()) {
      run.cancel = true;
      run.wake?.();
    }
  }

  /** Whether a rebuild of this vdisk is running. */
  running(vdiskId: string): boolean {
    return this.#runs.has(vdiskId);
  }

  /** Stops the vdisk's rebuild after the segments in flight (a removal or a shrink comes); the next scan starts it again if still needed. */
  async cancel(vdiskId: string): Promise<void> {
    const run = this.#runs.get(vdiskId);
    if (!run) return;
    run.cancel = true;
    run.wake?.();
    await run.done;
  }

  /** Resolves when the vdisk's rebuild (if any) has stopped. */
  async settled(vdiskId: string): Promise<void> {
    await this.#runs.get(vdiskId)?.done;
  }

  /**
   * One look at every mirrored vdisk: stale legs past the delay are
   * dropped, and a vdisk with degraded segments gets a rebuild.
   */
  scan(): void {
    if (this.#stopped || this.#host.closed) return;
    const cutoff = Date.now() - this.#opts.delayMs;
    const expired = this.#db.staleLegs({}).filter((s) => Date.parse(s.since) <= cutoff);
    const dropping = [...new Set(expired.map((s) => s.vdiskId))].map((id) =>
      this.#dropStale(
        id,
        expired.filter((s) => s.vdiskId === id),
        `older than the rebuild delay (${Math.round(this.#opts.delayMs / 1000)} s)`,
      ),
    );
    void Promise.all(dropping)
      .then(() => {
        if (this.#stopped || this.#host.closed) return;
        for (const v of this.#db.vdisks()) {
          if (copiesOf(v) > 1 && !this.#runs.has(v.id) && this.#degraded(v).length > 0) this.#launch(v.id);
        }
      })
      .catch((err: Error) => log.warn(`rebuild scan: ${err.message}`));
  }

  /** `vdisk repair`: the vdisk's stale legs are dropped now and its degraded segments rebuilt. */
  async repair(vdiskId: string): Promise<void> {
    await this.#dropStale(vdiskId, this.#db.staleLegs({ vdiskId }), 'repair');
    this.#kick(vdiskId);
  }

  /** Rebuilds the vdisk's degraded segments now (its stale legs stay): `container rm --dead` took legs away. */
  rebuildNow(vdiskId: string): void {
    this.#kick(vdiskId);
  }

  /** `container evacuate` of a failed container: its stale legs are dropped now and their segments rebuilt. Returns the vdisks touched. */
  async evacuate(containerId: string): Promise<string[]> {
    const stale = this.#db.staleLegs({ containerId });
    const vdisks = [...new Set(stale.map((s) => s.vdiskId))];
    for (const id of vdisks) {
      await this.#dropStale(
        id,
        stale.filter((s) => s.vdiskId === id),
        `container ${containerId} evacuated`,
      );
      this.#kick(id);
    }
    return vdisks;
  }

  /**
   * `vdisk set-copies`. More: every allocated segment is now degraded and
   * rebuilt (the run starts before this returns). Fewer: the running
   * rebuild stops, and the last legs (and stale legs beyond the new count)
   * of every segment go in one table change; their locations are released
   * once every exporter has acked it.
   */
  async setCopies(vdiskId: string, copies: number): Promise<void> {
    const db = this.#db;
    const v = db.vdisk(vdiskId);
    if (!v) throw new RebuildError(`vdisk ${vdiskId} does not exist`);
    const was = copiesOf(v);
    if (copies === was) {
      this.#kick(vdiskId);
      return;
    }
    if (copies > was) {
      db.setVdiskCopies(vdiskId, copies);
      db.event('vdisk', v.name, `copies ${was} -> ${copies}: rebuilding`);
      log.info(`vdisk ${v.name}: copies ${was} -> ${copies}; rebuilding every allocated segment`);
      this.#kick(vdiskId);
      return;
    }
    await this.cancel(vdiskId);
    let removed = 0;
    const r = await this.#host.tables.changeTable(vdiskId, (c) => {
      db.setVdiskCopies(vdiskId, copies);
      const t = this.#host.tables.table(vdiskId);
      for (let seg = 0; seg < t.segmentCount; seg++) {
        if (t.legCountOf(seg) <= copies) continue;
        const legs = db.locationsOfSegment(vdiskId, seg);
        c.setLegs(seg, legs.slice(1, copies));
        removed += legs.length - copies;
      }
    });
    // Nothing allocated had more legs: no version to push, so the copies are set on their own.
    if (r === null) db.setVdiskCopies(vdiskId, copies);
    // Stale legs beyond the new count would be resynced into segments that no longer want them.
    const stale = db.staleLegs({ vdiskId });
    const extra = stale.filter((s) => this.#host.tables.table(vdiskId).legCountOf(s.seg) + stale.filter((o) => o.seg === s.seg).length > copies);
    await this.#dropStale(vdiskId, extra, `copies lowered to ${copies}`);
    db.event('vdisk', v.name, `copies ${was} -> ${copies}: ${removed} legs removed`);
    log.info(`vdisk ${v.name}: copies ${was} -> ${copies}; ${removed} legs removed`);
  }

  /** vdiskHealth. `allocated` (segments with a location) saves a scan of a one-copy table. */
  health(vdiskId: string, allocated?: number): VdiskHealth {
    const v = this.#db.vdisk(vdiskId);
    if (!v) throw new RebuildError(`vdisk ${vdiskId} does not exist`);
    const copies = copiesOf(v);
    const stale = this.#db.staleLegs({ vdiskId });
    let segments = allocated ?? 0;
    let degraded = 0;
    if (copies > 1 || allocated === undefined) {
      const t = this.#host.tables.table(vdiskId);
      segments = 0;
      for (let seg = 0; seg < t.segmentCount; seg++) {
        const n = t.legCountOf(seg);
        if (n === 0) continue;
        segments++;
        if (n < copies) degraded++;
      }
    }
    const h: VdiskHealth = {
      copies,
      segments,
      degraded,
      stale: stale.length,
      dirty: stale.filter((s) => s.dirty).length,
      blocked: '',
    };
    const run = this.#runs.get(vdiskId);
    if (run) {
      h.rebuilding = { ...run.progress };
      h.blocked = run.blocked;
    }
    return h;
  }

  /** Degraded segments of `v` that may be rebuilt now: some legs, fewer than copies, no stale leg waiting for a resync. */
  #degraded(v: VdiskRow): number[] {
    const copies = copiesOf(v);
    if (copies <= 1) return [];
    const t = this.#host.tables.table(v.id);
    const stale = new Set(this.#db.staleLegs({ vdiskId: v.id }).map((s) => s.seg));
    const out: number[] = [];
    for (let seg = 0; seg < t.segmentCount; seg++) {
      const n = t.legCountOf(seg);
      if (n === 0 || n >= copies || stale.has(seg)) continue;
      const state = t.stateOf(seg);
      // Invalid and error entries are an admin's to repair first.
      if (state !== SegmentState.Normal && state !== SegmentState.NoWrite) continue;
      out.push(seg);
    }
    return out;
  }

  /**
   * Drops stale legs still present, each released at the version current
   * when it goes (every holder has the table without it). Not one a resync
   * may be copying onto: a copy landing after the scrub would leave data in
   * free space.
   */
  async #dropStale(vdiskId: string, legs: readonly StaleLeg[], why: string): Promise<void> {
    if (legs.length === 0) return;
    const db = this.#db;
    const dropped = await this.#host.tables.serialize(vdiskId, async () => {
      const v = db.vdisk(vdiskId);
      if (!v) return 0;
      const present = new Set(db.staleLegs({ vdiskId }).map((s) => `${s.seg}:${s.containerId}`));
      let n = 0;
      for (const s of legs) {
        if (!present.has(`${s.seg}:${s.containerId}`) || this.#opts.resyncing(s.containerId)) continue;
        if (db.locationsOfSegment(vdiskId, s.seg).some((l) => this.#host.migrating.has(locKey(l)))) continue;
        db.dropStaleLeg(vdiskId, s.seg, s.containerId, v.version);
        n++;
      }
      return n;
    });
    if (dropped === 0) return;
    this.#host.tables.reclaim(vdiskId);
    const name = db.vdisk(vdiskId)?.name ?? vdiskId;
    db.event('rebuild', name, `${dropped} stale leg${dropped === 1 ? '' : 's'} dropped (${why})`);
    log.info(`vdisk ${name}: ${dropped} stale leg${dropped === 1 ? '' : 's'} dropped (${why}); rebuilding their segments`);
  }

  /** Starts a rebuild of the vdisk, or has a running one look again now. */
  #kick(vdiskId: string): void {
    const run = this.#runs.get(vdiskId);
    if (run) {
      run.wake?.();
      return;
    }
    const v = this.#db.vdisk(vdiskId);
    if (v && this.#degraded(v).length > 0) this.#launch(vdiskId);
  }

  #launch(vdiskId: string): void {
    if (this.#stopped || this.#host.closed) return;
    const run: Run = { vdiskId, cancel: false, done: Promise.resolve(), progress: { done: 0, total: 0, bytes: 0 }, blocked: '', wake: null };
    this.#runs.set(vdiskId, run);
    const name = this.#db.vdisk(vdiskId)?.name ?? vdiskId;
    run.done = this.#loop(run)
      .catch((err: Error) => {
        if (this.#host.closed) return;
        log.error(`rebuild of vdisk ${name} stopped: ${err.message}`);
        this.#db.event('rebuild', name, `stopped: ${err.message}`);
      })
      .finally(() => {
        if (this.#runs.get(vdiskId) === run) this.#runs.delete(vdiskId);
      });
  }

  /** Passes over the degraded segments until none is left (or the run is cancelled). */
  async #loop(run: Run): Promise<void> {
    const db = this.#db;
    let started = false;
    /** The blocking reason last logged. */
    let told = '';
    for (;;) {
      if (run.cancel || this.#host.closed) return;
      const vdisk = db.vdisk(run.vdiskId);
      if (!vdisk) return;
      const todo = this.#degraded(vdisk);
      if (todo.length === 0) {
        if (started) {
          db.event('rebuild', vdisk.name, `done: ${run.progress.done} segments given a new leg`);
          log.info(`rebuild of vdisk ${vdisk.name} done (${run.progress.done} segments)`);
        }
        return;
      }
      if (!started) {
        started = true;
        db.event('rebuild', vdisk.name, `started: ${todo.length} degraded segments`);
        log.info(`rebuild of vdisk ${vdisk.name} started: ${todo.length} degraded segments`);
      }
      run.progress.total = run.progress.done + todo.length;
      let rebuilt = 0;
      let why = '';
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < todo.length && !run.cancel && !this.#host.closed) {
          const seg = todo[next++] as number;
          const { outcome, reason } = await this.#rebuildSegment(vdisk, seg);
          if (outcome === 'rebuilt') {
            rebuilt++;
            run.progress.done++;
            run.progress.bytes += vdisk.segmentSize;
            run.blocked = '';
            this.observer?.copied(vdisk.segmentSize);
          } else if (reason !== '') {
            why = reason;
            // Out of room in the other domains, or a leg that cannot be read: an admin's to see.
            if (outcome === 'no-room' || outcome === 'failed') run.blocked = reason;
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(this.#opts.concurrency, todo.length) }, worker));
      if (rebuilt === 0) {
        // Nothing could be done this pass (no agent, no room, segments busy): look again later.
        if (run.blocked !== '' && run.blocked !== told) {
          // Once per reason: it needs an admin (room in another domain, a leg that reads again).
          told = run.blocked;
          log.warn(`rebuild of vdisk ${vdisk.name} cannot go on: ${run.blocked}; it retries every ${Math.round(this.#opts.scanIntervalMs / 1000)} s`);
          db.event('rebuild', vdisk.name, `waiting: ${run.blocked}`);
        } else if (why !== '') log.debug(`rebuild of vdisk ${vdisk.name} waits: ${why}`);
        await pauseRun(run, run.blocked !== '' ? this.#opts.scanIntervalMs : RETRY_MS);
      }
    }
  }

  /** Steps 1-5 above for one segment. */
  async #rebuildSegment(vdisk: VdiskRow, seg: number): Promise<{ outcome: Outcome; reason: string }> {
    const host = this.#host;
    const db = this.#db;
    const what = `rebuild of vdisk ${vdisk.name} segment ${seg}`;
    const legs = db.locationsOfSegment(vdisk.id, seg);
    const copies = copiesOf(db.vdisk(vdisk.id) ?? vdisk);
    if (legs.length === 0 || legs.length >= copies) return { outcome: 'skipped', reason: '' };
    const keys = legs.map(locKey);
    // A migration, a resync or a copy-on-write of it is under way: next pass.
    if (keys.some((k) => host.migrating.has(k))) return { outcome: 'skipped', reason: `${what}: being copied` };
    for (const k of keys) host.migrating.add(k);
    const same = (now: readonly Location[]): boolean => now.length === legs.length && now.every((l, i) => locKey(l) === keys[i]);
    let fresh: Location | undefined;
    let committed = false;
    let overdue = false;
    try {
      const row = db.segment(vdisk.id, seg);
      const state = row.state;
      if (state !== SegmentState.Normal && state !== SegmentState.NoWrite) return { outcome: 'skipped', reason: '' };
      // Step 2: a container in a domain the segment does not use, that some online agent reaches with one of its legs.
      const domains = this.#opts.domains();
      const used = new Set(legs.map((l) => domains.get(l.containerId) ?? `container:${l.containerId}`));
      const eligible = host.allocator.eligibleContainers(vdisk).filter((c) => !used.has(domains.get(c) ?? `container:${c}`));
      if (eligible.length === 0) {
        return { outcome: 'no-room', reason: `${what}: no eligible container in a failure domain other than ${[...used].join(', ')}` };
      }
      let src: Location | undefined;
      let copyable: string[] = [];
      for (const l of legs) {
        copyable = eligible.filter((c) => host.commands.copyAgent([l.containerId, c]) !== null);
        if (copyable.length > 0) {
          src = l;
          break;
        }
      }
      if (src === undefined) return { outcome: 'no-agent', reason: `${what}: waiting for an online agent that reaches a leg and a container in another domain` };
      try {
        [fresh] = host.allocator.reserve(vdisk, 1, copyable) as [Location];
      } catch (err) {
        if (err instanceof ContainerFullError) return { outcome: 'no-room', reason: `${what}: ${err.message}` };
        throw err;
      }
      const agent = host.commands.copyAgent([src.containerId, fresh.containerId]);
      if (agent === null) return { outcome: 'no-agent', reason: `${what}: no online agent reaches ${src.containerId} and ${fresh.containerId}` };
      // Step 3: the version from which every exporter sees the entry no-write.
      let frozenAt = db.vdisk(vdisk.id)?.version ?? 0;
      if (state === SegmentState.Normal) {
        const r = await host.tables.changeTable(vdisk.id, (c) => {
          const now = db.segment(vdisk.id, seg);
          if (now.state === SegmentState.Normal && same(db.locationsOfSegment(vdisk.id, seg))) c.set(seg, SegmentState.NoWrite, legs[0] as Location);
        });
        if (r !== null) frozenAt = r.version;
      }
      if (db.segment(vdisk.id, seg).state !== SegmentState.NoWrite || !same(db.locationsOfSegment(vdisk.id, seg))) return { outcome: 'skipped', reason: '' };
      const lag = await frozenEverywhere(host, vdisk, frozenAt);
      if (lag !== null) return { outcome: 'no-agent', reason: `${what}: ${lag}` };
      // Step 4.
      const copied = await copySegmentData(host, agent, vdisk, src, fresh);
      if (copied.kind === 'retry') {
        overdue = copied.overdue;
        return { outcome: 'no-agent', reason: `${what}: ${copied.reason}` };
      }
      if (copied.kind === 'failed') {
        log.warn(`${what}: ${copied.reason}`);
        return { outcome: 'failed', reason: `${what}: ${copied.reason}` };
      }
      if (host.closed) return { outcome: 'skipped', reason: '' };
      // Step 5: the new leg last, and writable when this table alone holds
      // every leg (as a write's make-writable would: it saves that fault);
      // else no-write (a snapshot's, or shared: its next write copies it).
      const leg = fresh;
      const primary = legs[0] as Location;
      await host.tables.changeTable(vdisk.id, (c) => {
        if (db.segment(vdisk.id, seg).state !== SegmentState.NoWrite || !same(db.locationsOfSegment(vdisk.id, seg))) return;
        const alone = vdisk.kind !== 'snapshot' && legs.every((l) => db.refcount(l) === 1);
        c.set(seg, alone ? SegmentState.Normal : SegmentState.NoWrite, primary, [...legs.slice(1), leg]);
        committed = true;
      });
      return committed ? { outcome: 'rebuilt', reason: '' } : { outcome: 'skipped', reason: '' };
    } finally {
      if (fresh && !overdue) host.allocator.unreserve([fresh], !committed);
      for (const k of keys) host.migrating.delete(k);
      // Held writes look again now that the change is acked (also after an abandoned step,
      // which leaves an exclusive entry no-write: its next write makes it writable).
      if (!host.closed) this.#released(vdisk.id);
    }
  }
}
