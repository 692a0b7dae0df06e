// Free-space allocation of container segments. The free map is the
// complement of `container_segments` in the DB (which also holds freed
// segments until they are scrubbed); this keeps it in memory as
// sorted free runs per container so an allocation does not scan the map.
// The DB stays the truth: callers allocate inside the transaction that
// records the allocation, and `reload()` after a failed transaction.
//
// Placement: a request goes to the eligible containers with the most free
// segments, levelling them (so vdisks spread across containers), as
// contiguous runs where possible (so a thick vdisk is a few extents, not a
// million). A mirrored segment's legs go to distinct failure domains
// (domains.ts), the emptiest first.
//
// Lazy allocations (a thin segment's first write, committed without an
// fsync; docs/architecture.md) take only locations inside durable
// reservations: ranges of free space recorded durably before any of it is
// handed out, so that after a power loss the space an agent may have
// written through a lost commit is known (space-recovery.ts). Each
// container a lazy allocation may use keeps a pool of its lowest free
// segments reserved (where allocations go anyway, so placement is
// unchanged), in batches: prepareLazy, called before the lazy commit,
// reserves with a FULL commit only when a pool is short (one fsync for every
// container); a pool below half is refilled off the fault path (written
// without an fsync, used only once an fsync of the WAL made it durable).
// Inside a lazy commit (ControllerDb.inLazyCommit, or {lazy: true}) an
// allocation takes only reserved space, or throws UnreservedSpaceError
// taking nothing (TableChanges then commits the change FULL). Reserved
// space stays in the free map: non-lazy allocations (durable at commit)
// use it too.

import type { ContainerRow, ControllerDb, Location, SpaceReservation, VdiskRow } from './db.js';
import { containerDomains } from './domains.js';
import { formatSize } from '../util/size.js';
import { log } from '../util/log.js';
import { POWER_SNAPSHOT_ENV } from './durability.js';

/** Segments a container's reservation pool is filled to (allocator option reserveBatch). */
export const DEFAULT_RESERVE_BATCH = 256;

interface FreeRun {
  start: number;
  count: number;
}

interface ContainerSpace {
  id: string;
  total: number;
  free: number;
  /** Sorted, non-adjacent, non-overlapping. */
  runs: FreeRun[];
}

export class ContainerFullError extends Error {
  constructor(
    readonly vdisk: string,
    readonly needed: number,
    readonly available: number,
    readonly segmentSize: number,
    detail: string,
    /** Segments of those containers freed but not yet zeroed (they become free once scrubbed). */
    readonly scrubbing = 0,
  ) {
    super(
      `container full: vdisk ${vdisk} needs ${needed} more segment${needed === 1 ? '' : 's'} of ${formatSize(segmentSize)}` +
        ` but ${detail} ${available === 0 ? 'no free segments' : `only ${available} free`}` +
        (scrubbing > 0 ? `; ${scrubbing} segment${scrubbing === 1 ? ' is' : 's are'} being scrubbed and will be free once zeroed` : ''),
    );
    this.name = 'ContainerFullError';
  }
}

/**
 * A lazy allocation would have taken a location outside the durable
 * reservations (prepareLazy was not called, or could not reserve): nothing
 * was taken; commit the change durably (FULL) instead.
 */
export class UnreservedSpaceError extends Error {
  constructor(readonly containerId: string, readonly needed: number, readonly reserved: number) {
    super(`lazy allocation needs ${needed} segment${needed === 1 ? '' : 's'} of container ${containerId} but only ${reserved} free ${reserved === 1 ? 'is' : 'are'} durably reserved`);
    this.name = 'UnreservedSpaceError';
  }
}

export interface AllocateOptions {
  /** Lazily committed (not fsynced at commit): only reserved locations (UnreservedSpaceError otherwise). */
  lazy?: boolean;
}

export interface AllocatorOptions {
  /** Segments each reservation pool is filled to (default DEFAULT_RESERVE_BATCH). */
  reserveBatch?: number;
}

/** This run's reservations of one container. */
interface Pool {
  /** Sorted, non-adjacent: what lazy allocations may take (durably recorded). */
  ranges: FreeRun[];
  /** This run's rows of the container in the DB (an unsynced refill's included). */
  rowIds: number[];
  /** Bumped by every rewrite: a refill whose fsync ends after another rewrite leaves the ranges to it. */
  gen: number;
}

/** A run of newly allocated container segments. */
export interface AllocatedRun {
  containerId: string;
  offset: number;
  count: number;
}

/** Told of every allocation and free (metrics). */
export interface AllocationObserver {
  allocated(count: number): void;
  freed(count: number): void;
}

export class Allocator {
  /** Set by whoever counts allocations (the metrics); null when nobody does. */
  observer: AllocationObserver | null = null;
  /** Told of locations given up by unreserve, now waiting to be scrubbed (the controller's scrubber). */
  scrubSink: ((locs: Location[]) => void) | null = null;
  readonly #db: ControllerDb;
  #space = new Map<string, ContainerSpace>();
  /**
   * Locations taken for a copy in progress (copy-on-write, migration) and
   * not yet in the DB: nothing references them until the copy's mapping is
   * committed, so a crash forgets them, but until then a reload must not
   * hand them out again.
   */
  readonly #reserved = new Map<string, Location>();
  readonly #batch: number;
  /** This run's reservations for lazy allocations, by container. */
  readonly #pools = new Map<string, Pool>();
  /** Suspect space from an earlier run (space-recovery.ts): out of the free map until it is scrubbed. */
  readonly #suspect = new Map<string, Set<number>>();
  /** Reservation rows found at construction: an earlier run's (space-recovery.ts), not pools of this one. */
  #inherited: SpaceReservation[];
  #gen = 0;
  #refill: NodeJS.Immediate | null = null;
  #refilling = false;
  #closed = false;
  /** The eligible containers prepareLazy found, for the lazy allocation in the same synchronous turn (saves the queries twice per fault). */
  #prepared: { vdiskId: string; eligible: readonly string[] } | null = null;

  constructor(db: ControllerDb, opts: AllocatorOptions = {}) {
    this.#db = db;
    this.#batch = Math.max(1, Math.floor(opts.reserveBatch ?? DEFAULT_RESERVE_BATCH));
    this.#inherited = db.hasSpaceReservations() ? db.spaceReservations() : [];
    this.reload();
  }

  /** Rebuilds every free map from the DB (and the pools: a rolled-back commit may have written reservations). */
  reload(): void {
    this.#space.clear();
    for (const c of this.#db.containers()) this.#load(c);
    if (this.#pools.size > 0) this.#reloadPools();
  }

  /**
   * Each pool keeps what it had that the DB still records: a reservation
   * made in a commit that rolled back is gone, an unsynced refill's rows
   * are not usable yet (not in the ranges); the row ids follow the DB.
   */
  #reloadPools(): void {
    const inherited = new Set(this.#inherited.map((r) => r.id));
    const rows = new Map<string, SpaceReservation[]>();
    for (const r of this.#db.spaceReservations()) {
      if (inherited.has(r.id)) continue;
      const list = rows.get(r.containerId);
      if (list === undefined) rows.set(r.containerId, [r]);
      else list.push(r);
    }
    for (const id of new Set([...this.#pools.keys(), ...rows.keys()])) {
      const list = rows.get(id) ?? [];
      const pool = this.#pools.get(id);
      const recorded = mergeRuns(list.map((r) => ({ start: r.first, count: r.count })));
      this.#pools.set(id, { ranges: intersectRuns(pool?.ranges ?? [], recorded), rowIds: list.map((r) => r.id), gen: ++this.#gen });
    }
  }

  /** The reservation rows of an earlier run found at start (space-recovery.ts). */
  inheritedReservations(): readonly SpaceReservation[] {
    return this.#inherited;
  }

  /** The earlier run's rows are gone (space recovery dropped them). */
  forgetInherited(): void {
    this.#inherited = [];
  }

  /** (Re)loads one container, e.g. after it was added. */
  loadContainer(id: string): void {
    const c = this.#db.container(id);
    if (c) this.#load(c);
    else this.forget(id);
  }

  forget(id: string): void {
    this.#space.delete(id);
    // Its reservation rows went with the container (ON DELETE CASCADE).
    this.#pools.delete(id);
    this.#suspect.delete(id);
  }

  #load(c: ContainerRow): void {
    const used = this.#db.usedOffsets(c.id);
    const runs: FreeRun[] = [];
    let next = 0;
    for (const o of used) {
      if (o >= c.segmentsTotal) continue;
      if (o > next) runs.push({ start: next, count: o - next });
      next = o + 1;
    }
    if (next < c.segmentsTotal) runs.push({ start: next, count: c.segmentsTotal - next });
    const free = runs.reduce((n, r) => n + r.count, 0);
    const space: ContainerSpace = { id: c.id, total: c.segmentsTotal, free, runs };
    this.#space.set(c.id, space);
    for (const r of this.#reserved.values()) if (r.containerId === c.id) takeFree(space, r.offset);
    for (const o of this.#suspect.get(c.id) ?? []) takeFree(space, o);
  }

  /**
   * Takes `count` locations (as allocate) and keeps them reserved until
   * unreserve: for a copy whose mapping is committed only after it is done.
   */
  reserve(vdisk: VdiskRow, count: number, eligible?: readonly string[]): Location[] {
    const locs = runLocations(this.allocate(vdisk, count, eligible));
    for (const l of locs) this.#reserved.set(locKey(l), l);
    return locs;
  }

  /**
   * Ends a reservation. `free` when the mapping was not committed: a copy
   * may have written there, so the locations are scrubbed (zeroed by an
   * agent) before they return to the free map.
   */
  unreserve(locs: readonly Location[], free: boolean): void {
    for (const l of locs) this.#reserved.delete(locKey(l));
    if (!free) return;
    // Only what the DB does not hold (a commit may have raced the caller's view).
    const marked = this.#db.markScrub(locs);
    if (marked.length > 0) this.scrubSink?.(marked);
  }

  get reservedCount(): number {
    return this.#reserved.size;
  }

  /** Locations of one container reserved for a copy in progress (container rm --dead waits for them). */
  reservedOn(containerId: string): number {
    let n = 0;
    for (const l of this.#reserved.values()) if (l.containerId === containerId) n++;
    return n;
  }

  freeSegments(containerId: string): number {
    return this.#space.get(containerId)?.free ?? 0;
  }

  /**
   * Null when some online container is carved into segments of
   * `segmentSize`, else what to do about it. A container's segment size is
   * fixed by its label (`container init --segment-size`) and a vdisk
   * allocates only from containers of exactly its own: table offsets, the
   * reference counts and the checker all count a container in its own
   * segments, so one container never mixes sizes. `whenNone` false: no
   * problem while no container is online at all (capacity still to come).
   */
  segmentSizeProblem(segmentSize: number, whenNone = true): string | null {
    const online = this.#db.containers().filter((c) => c.state === 'online');
    if (online.some((c) => c.segmentSize === segmentSize)) return null;
    if (online.length === 0 && !whenNone) return null;
    const have = [...new Set(online.map((c) => c.segmentSize))].sort((a, b) => a - b).map(formatSize);
    return (
      `no online container has ${formatSize(segmentSize)} segments (${have.length > 0 ? `containers have ${have.join(', ')}` : 'no containers are online'}); ` +
      `add one made for it: tabula container init PATH --size SIZE --segment-size ${formatSize(segmentSize)}, then tabula container add PATH`
    );
  }

  /**
   * Containers a vdisk may allocate on: online, of the vdisk's segment size,
   * and reached by every agent that exports the vdisk (any container when
   * nobody exports it yet).
   */
  eligibleContainers(vdisk: VdiskRow): string[] {
    const exporters = this.#db.exportsOfVdisk(vdisk.id).map((e) => e.agent);
    const reach = exporters.map((a) => new Set(this.#db.agentContainers(a)));
    return this.#db
      .containers()
      .filter((c) => c.state === 'online' && c.segmentSize === vdisk.segmentSize && reach.every((r) => r.has(c.id)))
      .map((c) => c.id);
  }

  /**
   * When an allocation for `vdisk` found no room: the containers that would
   * have had room if every exporting agent reached them now (claimed but
   * reported unreachable, e.g. a storage node that is restarting). Empty when
   * even they would not fit: the vdisk is then really out of space. A fault
   * waits for these to come back instead of failing the write as if the pool
   * were full.
   */
  awayWithRoom(vdisk: VdiskRow, count: number): string[] {
    const exporters = this.#db.exportsOfVdisk(vdisk.id).map((e) => e.agent);
    if (exporters.length === 0) return [];
    const claims = exporters.map((a) => new Map(this.#db.agentClaims(a).map((c) => [c.id, c.reachable])));
    const candidates = this.#db
      .containers()
      .filter((c) => c.state === 'online' && c.segmentSize === vdisk.segmentSize && claims.every((m) => m.has(c.id)));
    const away = candidates.filter((c) => claims.some((m) => m.get(c.id) === false)).map((c) => c.id);
    if (away.length === 0) return [];
    const free = candidates.reduce((n, c) => n + (this.#space.get(c.id)?.free ?? 0), 0);
    return free >= count ? away : [];
  }

  /**
   * Takes `count` free container segments for `vdisk` (marks them used in
   * memory only; the caller records them in the same DB transaction).
   * Throws ContainerFullError, taking nothing, when they do not fit.
   */
  allocate(vdisk: VdiskRow, count: number, eligible?: readonly string[], opts: AllocateOptions = {}): AllocatedRun[] {
    if (count <= 0) return [];
    eligible ??= this.#eligible(vdisk, opts);
    const spaces = eligible.map((id) => this.#space.get(id)).filter((s): s is ContainerSpace => s !== undefined);
    const available = spaces.reduce((n, s) => n + s.free, 0);
    if (available < count) throw this.#full(vdisk, count, eligible, available);
    const take = waterFill(spaces, count);
    // Before anything is taken, so a refusal takes nothing.
    const lazy = opts.lazy === true || this.#db.inLazyCommit;
    if (lazy) this.#ensureReserved(take);
    const order = [...spaces].sort((a, b) => (a.id < b.id ? -1 : 1));
    const out: AllocatedRun[] = [];
    for (const s of order) {
      let n = take.get(s.id) ?? 0;
      if (n === 0) continue;
      if (lazy) {
        // The lowest reserved free pieces (the pool is the lowest free space, so usually the same as below).
        for (const p of freeWithin(s, this.#pools.get(s.id)?.ranges ?? [])) {
          if (n === 0) break;
          const k = Math.min(p.count, n);
          takeSpan(s, p.start, k);
          out.push({ containerId: s.id, offset: p.start, count: k });
          n -= k;
        }
        continue;
      }
      while (n > 0) {
        const run = s.runs[0] as FreeRun;
        const k = Math.min(run.count, n);
        out.push({ containerId: s.id, offset: run.start, count: k });
        run.start += k;
        run.count -= k;
        if (run.count === 0) s.runs.shift();
        s.free -= k;
        n -= k;
      }
    }
    this.observer?.allocated(count);
    if (this.#pools.size > 0) this.#refillLow();
    return out;
  }

  // ---- durable reservations for lazy allocations ----

  /** A lazy allocation right after prepareLazy uses the containers it prepared (the same turn: nothing changed them). */
  #eligible(vdisk: VdiskRow, opts: AllocateOptions): readonly string[] {
    const p = this.#prepared;
    return opts.lazy === true && p !== null && p.vdiskId === vdisk.id ? p.eligible : this.eligibleContainers(vdisk);
  }

  /** Throws UnreservedSpaceError when a container's take exceeds its reserved free space (prepareLazy reserves it ahead). */
  #ensureReserved(take: ReadonlyMap<string, number>): void {
    for (const [id, n] of take) {
      if (n === 0) continue;
      const reserved = this.reservedFree(id);
      if (reserved < n) throw new UnreservedSpaceError(id, n, reserved);
    }
  }

  /** Free segments of a container inside this run's reservations: what lazy allocations may take there. */
  reservedFree(containerId: string): number {
    const s = this.#space.get(containerId);
    const pool = this.#pools.get(containerId);
    if (s === undefined || pool === undefined) return 0;
    return freeWithin(s, pool.ranges).reduce((n, p) => n + p.count, 0);
  }

  /** This run's reserved ranges of a container (tests, diagnostics). */
  reservedRanges(containerId: string): { first: number; count: number }[] {
    return (this.#pools.get(containerId)?.ranges ?? []).map((r) => ({ first: r.start, count: r.count }));
  }

  /**
   * Call before a lazy transaction that allocates up to `entries` table
   * entries for `vdisk` (any number of legs each), outside any transaction
   * and in the same synchronous turn: makes sure every container the
   * allocation may use has that much reserved free space, committing a
   * batch of reservations (FULL, one fsync for all containers) only when a
   * pool is short, so the common case commits nothing. Returns false when
   * it could not (inside a transaction, closed, the commit failed): the
   * change must then commit durably (lazy allocate would throw
   * UnreservedSpaceError).
   */
  prepareLazy(vdisk: VdiskRow, entries = 1, eligible: readonly string[] = this.eligibleContainers(vdisk)): boolean {
    if (this.#closed) return false;
    if (entries <= 0) return true;
    if (this.#prepared === null) queueMicrotask(() => (this.#prepared = null));
    this.#prepared = { vdiskId: vdisk.id, eligible };
    // A container gives one request at most `entries` locations (allocateLegs: one leg per entry per domain).
    const short = eligible.filter((id) => {
      const s = this.#space.get(id);
      return s !== undefined && this.reservedFree(id) < Math.min(entries, s.free);
    });
    if (short.length === 0) return true;
    // A commit inside another transaction is only as durable as that one.
    if (this.#db.sql.inTransaction) return false;
    try {
      this.#reserve(short, entries);
      return true;
    } catch (e) {
      log.warn(`reserving free space for lazy allocations of vdisk ${vdisk.name} failed: ${(e as Error).message}`);
      return false;
    }
  }

  /**
   * Fills the pools of `ids` to the batch size (at least `min`) with their
   * lowest free segments not yet reserved, in one durable commit that also
   * drops ranges no longer free (allocated since: that commit makes any
   * lazy allocation of them durable too, as the WAL is sequential).
   */
  #reserve(ids: readonly string[], min: number): void {
    const changes = this.#plan(ids, min);
    if (changes.length === 0) return;
    const rowIds = this.#db.replaceSpaceReservations(changes);
    changes.forEach((c, i) => this.#pools.set(c.containerId, { ranges: c.runs, rowIds: rowIds[i] ?? [], gen: ++this.#gen }));
    log.debug(`reserved free space for lazy allocations: ${describe(changes)}`);
  }

  /** What #reserve would write: per container, the rows to drop and the ranges to record. */
  #plan(ids: readonly string[], min: number): PoolChange[] {
    const changes: PoolChange[] = [];
    for (const id of ids) {
      const s = this.#space.get(id);
      if (s === undefined) continue;
      const pool = this.#pools.get(id);
      const keep = freeWithin(s, pool?.ranges ?? []);
      let want = Math.max(this.#poolTarget(s), min) - keep.reduce((n, p) => n + p.count, 0);
      if (want <= 0) continue;
      const add: FreeRun[] = [];
      for (const p of freeOutside(s.runs, keep)) {
        const k = Math.min(p.count, want);
        add.push({ start: p.start, count: k });
        want -= k;
        if (want === 0) break;
      }
      if (add.length === 0) continue; // nothing free left to reserve
      const runs = mergeRuns([...keep, ...add]);
      changes.push({ containerId: id, drop: pool?.rowIds ?? [], ranges: runs.map((r) => ({ first: r.start, count: r.count })), runs });
    }
    return changes;
  }

  /** Refills, off the caller's path (after its transaction), the pools that ran below half. */
  #refillLow(): void {
    if (this.#refill !== null || this.#refilling || this.#closed) return;
    if (this.#lowPools().length === 0) return;
    this.#refill = setImmediate(() => {
      this.#refill = null;
      void this.#refillNow();
    });
    this.#refill.unref();
  }

  /**
   * A refill without an fsync on the event loop: the rows are written
   * without one (synchronous = NORMAL), then the WAL is fsynced off it, and
   * only then do lazy allocations take the new ranges. Meanwhile a pool
   * hands out only what both the old and the new rows hold: whichever of
   * the two a power loss leaves, that covers it (the WAL is sequential).
   */
  async #refillNow(): Promise<void> {
    if (this.#closed || this.#refilling || !this.#db.open || this.#db.sql.inTransaction) return;
    this.#refilling = true;
    try {
      const changes = this.#plan(this.#lowPools(), 0);
      if (changes.length === 0) return;
      const rowIds = this.#db.relaxed(() => this.#db.replaceSpaceReservations(changes));
      const gen = ++this.#gen;
      for (const [i, c] of changes.entries()) {
        const old = this.#pools.get(c.containerId)?.ranges ?? [];
        this.#pools.set(c.containerId, { ranges: intersectRuns(old, c.runs), rowIds: rowIds[i] ?? [], gen });
      }
      await this.#syncWal();
      for (const c of changes) {
        const pool = this.#pools.get(c.containerId);
        if (pool !== undefined && pool.gen === gen) pool.ranges = c.runs;
      }
      log.debug(`refilled free space reservations for lazy allocations: ${describe(changes)}`);
    } catch (e) {
      // At shutdown the database may close under the fsync: nothing is lost (close ends the reservations).
      if (!this.#closed) log.warn(`refilling free space reservations failed: ${(e as Error).message}`);
    } finally {
      this.#refilling = false;
    }
  }

  /**
   * Every commit so far durable: an fsync of the WAL off the event loop.
   * Simulating power loss (tests), a synchronous durable point instead, so
   * the snapshot holds what the fsync would have covered (durability.ts).
   */
  async #syncWal(): Promise<void> {
    if (process.env[POWER_SNAPSHOT_ENV] === undefined && (await this.#db.fsyncWal())) return;
    if (this.#db.open) this.#db.syncNow();
  }

  #lowPools(): string[] {
    const low: string[] = [];
    for (const id of this.#pools.keys()) {
      const s = this.#space.get(id);
      if (s === undefined) continue;
      const reserved = this.reservedFree(id);
      if (reserved * 2 < this.#poolTarget(s) && s.free > reserved) low.push(id);
    }
    return low;
  }

  /**
   * What a container's pool is filled to: the batch, but at most a quarter
   * of its free space, so that what a crash leaves suspect (held until
   * agents reconcile, then zeroed) is never most of a small container.
   */
  #poolTarget(s: ContainerSpace): number {
    return Math.min(this.#batch, Math.max(1, Math.floor(s.free / 4)));
  }

  /**
   * Stops reserving (controller shutdown) and ends this run's reservations
   * durably: every allocation made from them is durable with that commit,
   * so a clean restart finds nothing suspect. Lazy allocations after this
   * get UnreservedSpaceError (they commit durably).
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#refill !== null) clearImmediate(this.#refill);
    this.#refill = null;
    const changes = [...this.#pools].map(([containerId, p]) => ({ containerId, drop: p.rowIds, ranges: [] }));
    this.#pools.clear();
    if (changes.length === 0 || !this.#db.open) return;
    try {
      this.#db.replaceSpaceReservations(changes);
    } catch (e) {
      // The rows stay: the next start treats their free space as suspect and scrubs it.
      log.warn(`ending free space reservations at shutdown failed: ${(e as Error).message}`);
    }
  }

  /**
   * Takes the free locations of `ranges` (reservations of an earlier run,
   * space-recovery.ts) out of the free map until releaseSuspect, also
   * across reloads; returns them.
   */
  holdSuspect(ranges: readonly { containerId: string; first: number; count: number }[]): Location[] {
    const out: Location[] = [];
    for (const r of ranges) {
      const s = this.#space.get(r.containerId);
      if (s === undefined) continue;
      let held = this.#suspect.get(r.containerId);
      for (const p of freeWithin(s, [{ start: r.first, count: r.count }])) {
        if (held === undefined) this.#suspect.set(r.containerId, (held = new Set()));
        for (let o = p.start; o < p.start + p.count; o++) {
          held.add(o);
          out.push({ containerId: r.containerId, offset: o });
        }
        takeSpan(s, p.start, p.count);
      }
    }
    return out;
  }

  /** Ends the hold on suspect locations (now marked to be scrubbed in the DB, so a reload leaves them out anyway). */
  releaseSuspect(locs: readonly Location[]): void {
    for (const l of locs) {
      const held = this.#suspect.get(l.containerId);
      if (held === undefined) continue;
      held.delete(l.offset);
      if (held.size === 0) this.#suspect.delete(l.containerId);
    }
  }

  /** Suspect locations held out of the free map. */
  get suspectCount(): number {
    let n = 0;
    for (const h of this.#suspect.values()) n += h.size;
    return n;
  }

  #full(vdisk: VdiskRow, count: number, eligible: readonly string[], available: number, why = ''): ContainerFullError {
    const sizeProblem = eligible.length === 0 ? this.segmentSizeProblem(vdisk.segmentSize) : null;
    const detail =
      sizeProblem !== null
        ? `${sizeProblem}: there are`
        : eligible.length === 0
          ? `no container is eligible (online, same segment size, reached by every exporting agent${why}) and has`
          : `its ${eligible.length} eligible container${eligible.length === 1 ? ' has' : 's have'}`;
    // Suspect space (space-recovery.ts) is scrubbed too, once agents have reconciled.
    const scrubbing = eligible.reduce((n, id) => n + this.#db.scrubPendingCount(id) + (this.#suspect.get(id)?.size ?? 0), 0);
    return new ContainerFullError(vdisk.name, count, available, vdisk.segmentSize, detail, scrubbing);
  }

  /**
   * Free segments per failure domain among the containers `vdisk` may use,
   * leaving out domains `avoid` names: what allocateLegs would choose from.
   */
  domainsWithRoom(vdisk: VdiskRow, avoid?: (domain: string) => boolean): Map<string, number> {
    const domains = containerDomains(this.#db);
    const out = new Map<string, number>();
    for (const id of this.eligibleContainers(vdisk)) {
      const d = domains.get(id) ?? `container:${id}`;
      const free = this.#space.get(id)?.free ?? 0;
      if (free === 0 || avoid?.(d) === true) continue;
      out.set(d, (out.get(d) ?? 0) + free);
    }
    return out;
  }

  /**
   * Takes locations for `count` entries of `vdisk`, each with up to `legs`
   * locations in distinct failure domains (eligible containers only: online,
   * of its segment size, reached by its exporters; domains `avoid` names
   * left out), the emptiest domains first. When the domains cannot give
   * every entry all its legs, entries get fewer (degraded, at least one,
   * evenly). Throws ContainerFullError, taking nothing, when there is not one
   * free location per entry. Consecutive entries get consecutive offsets
   * where free runs allow (a thick vdisk's legs are runs too). Marks them
   * used in memory only, as allocate.
   */
  allocateLegs(vdisk: VdiskRow, count: number, legs: number, avoid?: (domain: string) => boolean, opts: AllocateOptions = {}): Location[][] {
    if (count <= 0) return [];
    if (!Number.isInteger(legs) || legs < 1) throw new RangeError(`allocateLegs: ${legs} legs`);
    // One copy, nothing to avoid: a plain allocation, as always.
    if (legs === 1 && avoid === undefined) return runLocations(this.allocate(vdisk, count, undefined, opts)).map((l) => [l]);
    const domainOf = containerDomains(this.#db);
    const byDomain = new Map<string, string[]>();
    const eligible: string[] = [];
    for (const id of this.#eligible(vdisk, opts)) {
      const d = domainOf.get(id) ?? `container:${id}`;
      if (!this.#space.has(id) || avoid?.(d) === true) continue;
      eligible.push(id);
      let list = byDomain.get(d);
      if (list === undefined) byDomain.set(d, (list = []));
      list.push(id);
    }
    // Emptiest first: leg 0 goes there, and it gives the most.
    const domains = [...byDomain]
      .map(([d, ids]) => ({ ids, free: ids.reduce((n, id) => n + (this.#space.get(id)?.free ?? 0), 0) }))
      .filter((x) => x.free > 0)
      .sort((a, b) => b.free - a.free || ((a.ids[0] as string) < (b.ids[0] as string) ? -1 : 1));
    const total = domains.reduce((n, x) => n + x.free, 0);
    if (total < count) throw this.#full(vdisk, count, eligible, total, avoid === undefined ? '' : ', in a failure domain not avoided');
    // A domain gives an entry at most one leg: at most `count` in all.
    const cap = (f: number): number => Math.min(f, count);
    const positions = Math.min(legs * count, domains.reduce((n, x) => n + cap(x.free), 0));
    const takes = levelTakes(
      domains.map((x) => x.free),
      count,
      positions,
    );
    // Wrap-around (McNaughton): the domains' takes laid end to end, position
    // p is leg floor(p / count) of entry p % count. A domain takes at most
    // `count` positions, so no entry gets two legs in one domain, and each
    // domain's locations go to consecutive entries.
    const out: Location[][] = Array.from({ length: count }, () => []);
    if (opts.lazy === true || this.#db.inLazyCommit) {
      // Refused before anything is taken: allocate checks per call, and an earlier domain's take would stay taken.
      const all = new Map<string, number>();
      domains.forEach((x, i) => {
        const n = takes[i] as number;
        const spaces = x.ids.map((id) => this.#space.get(id)).filter((sp): sp is ContainerSpace => sp !== undefined);
        if (n > 0) for (const [id, k] of waterFill(spaces, n)) all.set(id, k);
      });
      this.#ensureReserved(all);
    }
    let p = 0;
    domains.forEach((x, i) => {
      const n = takes[i] as number;
      if (n === 0) return;
      for (const l of runLocations(this.allocate(vdisk, n, x.ids, opts))) {
        (out[p % count] as Location[]).push(l);
        p++;
      }
    });
    return out;
  }

  /** Returns locations to the free maps: only ones the DB no longer holds (scrubbed, or never used). */
  free(locations: readonly Location[]): void {
    let n = 0;
    for (const l of locations) {
      const s = this.#space.get(l.containerId);
      if (!s || l.offset >= s.total) continue;
      insertFree(s, l.offset);
      n++;
    }
    if (n > 0) this.observer?.freed(n);
  }
}

/** A rewrite of one container's reservation rows. */
interface PoolChange {
  containerId: string;
  drop: number[];
  ranges: { first: number; count: number }[];
  runs: FreeRun[];
}

function describe(changes: readonly PoolChange[]): string {
  return changes.map((c) => `container ${c.containerId} ${c.runs.reduce((n, r) => n + r.count, 0)} segments`).join(', ');
}

/** The intersection of two sorted, non-overlapping lists of runs. */
function intersectRuns(a: readonly FreeRun[], b: readonly FreeRun[]): FreeRun[] {
  const out: FreeRun[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const x = a[i] as FreeRun;
    const y = b[j] as FreeRun;
    const lo = Math.max(x.start, y.start);
    const hi = Math.min(x.start + x.count, y.start + y.count);
    if (hi > lo) out.push({ start: lo, count: hi - lo });
    if (x.start + x.count < y.start + y.count) i++;
    else j++;
  }
  return out;
}

/**
 * Water-filling: how many segments each container gives for `count` (at
 * most their free total), taking from those with the most free space until
 * they are level with the next ones, so free space stays even and each
 * container gives one share (contiguous where its free runs allow).
 */
function waterFill(spaces: readonly ContainerSpace[], count: number): Map<string, number> {
  const take = new Map<string, number>();
  const remaining = (s: ContainerSpace): number => s.free - (take.get(s.id) ?? 0);
  let left = count;
  while (left > 0) {
    const top = Math.max(...spaces.map(remaining));
    if (top <= 0) break;
    const level = spaces.filter((s) => remaining(s) === top).sort((a, b) => (a.id < b.id ? -1 : 1));
    const below = Math.max(0, ...spaces.map(remaining).filter((r) => r < top));
    const room = (top - below) * level.length;
    if (room >= left) {
      const per = Math.floor(left / level.length);
      level.forEach((s, i) => take.set(s.id, (take.get(s.id) ?? 0) + per + (i < left % level.length ? 1 : 0)));
      left = 0;
    } else {
      for (const s of level) take.set(s.id, (take.get(s.id) ?? 0) + top - below);
      left -= room;
    }
  }
  return take;
}

/**
 * How many locations each domain gives (frees in the order given, emptiest
 * first) for `positions` in all, at most `count` each: down to a common
 * level, so that the emptiest give most and free space stays even.
 */
function levelTakes(frees: readonly number[], count: number, positions: number): number[] {
  const give = (level: number): number[] => frees.map((f) => Math.min(count, Math.max(0, f - level)));
  const sum = (a: readonly number[]): number => a.reduce((n, x) => n + x, 0);
  // The lowest level whose takes do not exceed `positions`.
  let lo = 0;
  let hi = Math.max(0, ...frees);
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sum(give(mid)) <= positions) hi = mid;
    else lo = mid + 1;
  }
  const takes = give(lo);
  // One level lower gives more than needed: the rest, one each, emptiest first.
  let rest = positions - sum(takes);
  for (let i = 0; i < frees.length && rest > 0; i++) {
    if ((takes[i] as number) < Math.min(count, frees[i] as number)) {
      takes[i] = (takes[i] as number) + 1;
      rest--;
    }
  }
  return takes;
}

/** Inserts one offset into a container's sorted free runs, merging neighbours. */
function insertFree(s: ContainerSpace, offset: number): void {
  const runs = s.runs;
  let lo = 0;
  let hi = runs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((runs[mid] as FreeRun).start <= offset) lo = mid + 1;
    else hi = mid;
  }
  // runs[lo-1] starts at or before offset; runs[lo] after it.
  const prev = lo > 0 ? (runs[lo - 1] as FreeRun) : undefined;
  const next = lo < runs.length ? (runs[lo] as FreeRun) : undefined;
  if (prev && offset < prev.start + prev.count) return; // already free
  const joinsPrev = prev !== undefined && prev.start + prev.count === offset;
  const joinsNext = next !== undefined && next.start === offset + 1;
  if (joinsPrev && joinsNext) {
    prev.count += 1 + next.count;
    runs.splice(lo, 1);
  } else if (joinsPrev) {
    prev.count++;
  } else if (joinsNext) {
    next.start--;
    next.count++;
  } else {
    runs.splice(lo, 0, { start: offset, count: 1 });
  }
  s.free++;
}

/** Removes one offset from a container's free runs (no-op when not free). */
function takeFree(s: ContainerSpace, offset: number): void {
  const i = s.runs.findIndex((r) => offset >= r.start && offset < r.start + r.count);
  if (i < 0) return;
  const r = s.runs[i] as FreeRun;
  const tail = r.start + r.count - offset - 1;
  const head = offset - r.start;
  const parts: FreeRun[] = [];
  if (head > 0) parts.push({ start: r.start, count: head });
  if (tail > 0) parts.push({ start: offset + 1, count: tail });
  s.runs.splice(i, 1, ...parts);
  s.free--;
}

export function locKey(l: Location): string {
  return `${l.containerId}:${l.offset}`;
}

/** Expands runs into single locations. */
export function runLocations(runs: readonly AllocatedRun[]): Location[] {
  const out: Location[] = [];
  for (const r of runs) for (let i = 0; i < r.count; i++) out.push({ containerId: r.containerId, offset: r.offset + i });
  return out;
}

/** Index of the first free run that ends after `offset`. */
function runEndingAfter(runs: readonly FreeRun[], offset: number): number {
  let lo = 0;
  let hi = runs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const r = runs[mid] as FreeRun;
    if (r.start + r.count <= offset) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The free pieces of a container inside `ranges` (sorted, non-overlapping), in offset order. */
function freeWithin(s: ContainerSpace, ranges: readonly FreeRun[]): FreeRun[] {
  const out: FreeRun[] = [];
  for (const r of ranges) {
    const end = r.start + r.count;
    for (let i = runEndingAfter(s.runs, r.start); i < s.runs.length; i++) {
      const f = s.runs[i] as FreeRun;
      if (f.start >= end) break;
      const a = Math.max(f.start, r.start);
      const b = Math.min(f.start + f.count, end);
      if (b > a) out.push({ start: a, count: b - a });
    }
  }
  return out;
}

/** The pieces of free `runs` outside `pieces` (sorted, each inside one run), in offset order. */
function* freeOutside(runs: readonly FreeRun[], pieces: readonly FreeRun[]): Generator<FreeRun> {
  let j = 0;
  for (const r of runs) {
    let at = r.start;
    const end = r.start + r.count;
    while (j < pieces.length && (pieces[j] as FreeRun).start < end) {
      const p = pieces[j] as FreeRun;
      if (p.start > at) yield { start: at, count: p.start - at };
      at = Math.max(at, p.start + p.count);
      j++;
    }
    if (at < end) yield { start: at, count: end - at };
  }
}

/** Sorts runs and merges overlapping or adjacent ones. */
function mergeRuns(runs: readonly FreeRun[]): FreeRun[] {
  const out: FreeRun[] = [];
  for (const r of [...runs].sort((a, b) => a.start - b.start)) {
    const last = out[out.length - 1];
    if (last !== undefined && r.start <= last.start + last.count) last.count = Math.max(last.count, r.start + r.count - last.start);
    else out.push({ start: r.start, count: r.count });
  }
  return out;
}

/** Removes [start, start+count), which lies inside one free run, from a container's free runs. */
function takeSpan(s: ContainerSpace, start: number, count: number): void {
  const i = runEndingAfter(s.runs, start);
  const r = s.runs[i];
  if (r === undefined || start < r.start || start + count > r.start + r.count) {
    throw new Error(`allocator: container ${s.id} segments ${start}+${count} are not one free run`);
  }
  const parts: FreeRun[] = [];
  if (start > r.start) parts.push({ start: r.start, count: start - r.start });
  const tail = r.start + r.count - start - count;
  if (tail > 0) parts.push({ start: start + count, count: tail });
  s.runs.splice(i, 1, ...parts);
  s.free -= count;
}
