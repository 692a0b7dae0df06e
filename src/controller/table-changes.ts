// Table changes: every change to a vdisk's table goes one way
// (docs/architecture.md, "Table changes and acks"): commit to SQLite (one transaction that bumps the version), send the
// new version to every agent holding the vdisk, wait for each ack (fencing
// an agent that misses the deadline), and only then reclaim old locations,
// and only once every exporting agent has acked.
//
// Changes to one vdisk are serialized (a promise chain per vdisk); commit
// and send happen in one synchronous step, so a TableRequest answered in
// between always sees a version the pushes agree with.
//
// This is the hot path of every first write: a delta is encoded once for
// all holders (EncodedMessage), acks are applied in memory at once and
// written to the database behind (WriteBehind), and a fault's RETRY may go
// right behind the delta (changeTable's afterSend; faults.ts #answerBehind).

import { MappingTable, SegmentState, extentsIn, tableRuns, toExtents, type Extent, type TableRuns } from '../table/index.js';
import { TABLE_RUNS_PER_MESSAGE, encodeControllerMessage, type EncodedMessage } from '../wire/grpc.js';
import type { LuChange, LuEventMsg, LuStateMsg, Release, TableAck, WireExtent } from '../wire/proto-types.js';
import { fromWireExtent, wireExtent } from '../wire/table-extents.js';
import { log } from '../util/log.js';
import { UnreservedSpaceError, locKey, runLocations, type Allocator } from './allocator.js';
import { TableChangeError, type ControllerDb, type EntryWithLegs, type Location, type VdiskRow } from './db.js';
import type { AgentLink } from './agent-link.js';
import type { AgentRegistry } from './agent-registry.js';
import type { WriteBehind } from './write-behind.js';

/** How often a change waiting for a fenced agent looks again without being woken (export removed with its vdisk, say). */
const LAGGARD_RECHECK_MS = 1000;

/** What a table change did: the new version and the segments it touched. */
export interface CommitResult {
  vdiskId: string;
  fromVersion: number;
  version: number;
  /** Sorted, disjoint [first, end) ranges of changed segments. */
  ranges: [number, number][];
  segmentCount: number;
  /**
   * Some changed segment was normal before: an agent that missed this
   * version may read and write the old location however long it has been
   * cut off (leases do not stop normal segments), so only its ack or the
   * removal of its export makes the change safe (awaitAcks).
   */
  touchesNormal: boolean;
  /** The LU state and unit attentions this version carries (lu-state.ts), if it changed them. */
  lu?: LuChange;
  /** Committed lazily and not yet durable against power loss: the delta goes out with lazy=true. */
  lazy?: boolean;
}

/** How a change commits. */
export interface CommitOptions {
  /**
   * Lazily (a thin allocation, issue 18): synchronous = NORMAL, no fsync of
   * its own (ControllerDb.lazy); durable by the group commit within the
   * durable interval, or sooner when an agent asks (SyncRequest,
   * durability.ts). Everything else commits FULL. Its allocations come
   * only from durably reserved space (Allocator.prepareLazy before the
   * transaction); when there is none to be had, the change commits FULL.
   */
  lazy?: boolean;
  /**
   * For a lazy change: how many table entries it may allocate (default 1;
   * Allocator.prepareLazy). A function is asked right before the change
   * runs, in the same turn (a batch that others may join until then).
   */
  lazyEntries?: number | (() => number);
}

/** What table changes need of durability.ts: lazy versions not yet durable. */
export interface LazyVersions {
  committedLazily(vdiskId: string, version: number): void;
  isPending(vdiskId: string, version: number): boolean;
}

/** What a change function may do inside its transaction. */
export interface ChangeContext {
  readonly vdisk: VdiskRow;
  /** The version this change commits as. */
  readonly version: number;
  /**
   * Sets a segment's entry. `legs`: its extra legs (leg 1, 2); omitted, it
   * keeps them while `location` stays, and loses them when it changes
   * (ControllerDb.setSegment).
   */
  set(seg: number, state: SegmentState, location: Location | null, legs?: readonly Location[]): void;
  /** Replaces a segment's extra legs, keeping its state and first location. */
  setLegs(seg: number, legs: readonly Location[]): void;
  /** Allocates `count` container segments for this vdisk (throws ContainerFullError). */
  allocate(count: number): Location[];
  /**
   * Allocates locations for `count` entries, each with up to `legs` of them
   * in distinct failure domains (fewer when domains run out; Allocator.allocateLegs).
   */
  allocateLegs(count: number, legs: number, avoid?: (domain: string) => boolean): Location[][];
  /** Grows the vdisk (new segments zero). */
  grow(size: number, segmentCount: number): void;
  /** Records a segment changed by direct SQL in this transaction (bulk changes), so it is pushed. */
  mark(seg: number): void;
  /** Sets the vdisk's LU state as of this version, with the unit attentions it raises (a version may change only this). */
  setLu(state: LuStateMsg, events: LuEventMsg[]): void;
  /** Sets (0: clears) a segment's write owner, keeping its entry. */
  setOwner(seg: number, owner: number): void;
}

export interface AwaitAcksOptions {
  /**
   * Called at the ack deadline with the agents just fenced for missing it,
   * before the wait for them goes on (#awaitLaggards): a caller that must
   * answer within a bound (a snapshot) gives up there.
   */
  fenced?(agents: readonly string[], why: string): void;
}

/** What table changes need from the rest of the controller (wired in controller.ts). */
export interface TableChangeHooks {
  /** Locations (locKey) a migration is copying: settleShared leaves them to it. */
  readonly migrating: ReadonlySet<string>;
  /** Container segments released at versions every exporter has acked: to be zeroed before reuse. */
  scrub(locs: Location[]): void;
  /** A change of the vdisk is acked by every holder (or safe without the laggards): held faults may act on it. */
  settled(vdiskId: string): void;
  /** An agent was fenced for the vdisk (its port group is unavailable). */
  fenced?(vdiskId: string): void;
  /** Lazy commits not yet durable (durability.ts); without it, lazy commits are FULL. */
  readonly durability?: LazyVersions;
}

export class TableChanges {
  readonly #db: ControllerDb;
  readonly #allocator: Allocator;
  readonly #writeBehind: WriteBehind;
  readonly #agents: AgentRegistry;
  readonly #hooks: TableChangeHooks;
  readonly #ackTimeoutMs: number;
  readonly #tables = new Map<string, MappingTable>();
  /** The tail of each vdisk's chain of serialized tasks. */
  readonly #locks = new Map<string, Promise<unknown>>();
  /** Table changes waiting for fenced agents (#awaitLaggards): woken to look again. */
  readonly #laggardWakers = new Set<() => void>();
  /** Acks applied in memory whose follow-ups (#settleAcks) wait for the write-behind, by vdisk. */
  readonly #acksToSettle = new Map<string, Map<AgentLink, number>>();
  #closed = false;

  constructor(db: ControllerDb, allocator: Allocator, writeBehind: WriteBehind, agents: AgentRegistry, ackTimeoutMs: number, hooks: TableChangeHooks) {
    this.#db = db;
    this.#allocator = allocator;
    this.#writeBehind = writeBehind;
    this.#agents = agents;
    this.#ackTimeoutMs = ackTimeoutMs;
    this.#hooks = hooks;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Stops waiting for laggards (controller shutdown): changes in progress end without acting. */
  close(): void {
    this.#closed = true;
    this.wakeLaggardWaits();
  }

  /** The vdisk's current table (cached; the DB is the truth). */
  table(vdiskId: string): MappingTable {
    let t = this.#tables.get(vdiskId);
    if (t === undefined) {
      const v = this.#db.vdisk(vdiskId);
      if (!v) throw new TableChangeError(`vdisk ${vdiskId} does not exist`);
      t = this.#db.loadTable(v);
      this.#tables.set(vdiskId, t);
    }
    return t;
  }

  /** Drops a cached table (vdisk removed). */
  forgetTable(vdiskId: string): void {
    this.#tables.delete(vdiskId);
  }

  /**
   * Resolves once every table change of this vdisk queued so far has been
   * acked: a fault answered from the DB state must not let an agent act on
   * a version other agents have not installed yet.
   */
  quiesce(vdiskId: string): Promise<void> {
    const tail = this.#locks.get(vdiskId);
    return tail === undefined ? Promise.resolve() : tail.then(() => undefined);
  }

  /** Runs `fn` after every earlier serialized task of this vdisk. */
  serialize<T>(vdiskId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#locks.get(vdiskId) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => undefined);
    this.#locks.set(vdiskId, tail);
    void tail.then(() => {
      if (this.#locks.get(vdiskId) === tail) this.#locks.delete(vdiskId);
    });
    return run;
  }

  /**
   * Commits a change in one transaction (bumping the version), updates the
   * cached table and sends the new version to every agent holding the
   * vdisk, all synchronously. Returns null when the change changed nothing
   * (no version bump). Use through changeTable unless already serialized.
   */
  commitAndSend(vdiskId: string, change: (c: ChangeContext) => void, opts: CommitOptions = {}): CommitResult | null {
    const db = this.#db;
    // Cached before the commit: CommitResult.touchesNormal reads the previous states from it.
    this.table(vdiskId);
    const changed = new Set<number>();
    /** Segments whose owner changed: with no other change, they do not make the change touch normal segments. */
    const ownerChanged = new Set<number>();
    let grownTo = -1;
    let lu: LuChange | undefined;
    const allocated: Location[] = [];
    let result: CommitResult | null;
    let lazyVersions = opts.lazy === true ? this.#hooks.durability : undefined;
    if (lazyVersions !== undefined) {
      // Reserved space for what it may allocate (a FULL commit only when a pool runs short); none to be had: FULL.
      const v = db.vdisk(vdiskId);
      const entries = typeof opts.lazyEntries === 'function' ? opts.lazyEntries() : (opts.lazyEntries ?? 1);
      if (v === undefined || !this.#allocator.prepareLazy(v, entries)) lazyVersions = undefined;
    }
    const allocOpts = lazyVersions === undefined ? {} : { lazy: true };
    try {
      const commit = (): CommitResult => {
        const vdisk = db.vdisk(vdiskId);
        if (!vdisk) throw new TableChangeError(`vdisk ${vdiskId} does not exist`);
        const version = db.bumpVersion(vdiskId);
        const live: VdiskRow = { ...vdisk, version };
        const ctx: ChangeContext = {
          vdisk: live,
          version,
          set: (seg, state, location, legs) => {
            if (db.setSegment(live, seg, legs === undefined ? { state, location } : { state, location, legs }, version)) changed.add(seg);
          },
          setLegs: (seg, legs) => {
            if (db.setSegmentLegs(live, seg, legs, version)) changed.add(seg);
          },
          allocate: (count) => {
            const locs = runLocations(this.#allocator.allocate(live, count, undefined, allocOpts));
            allocated.push(...locs);
            return locs;
          },
          allocateLegs: (count, legs, avoid) => {
            const entries = this.#allocator.allocateLegs(live, count, legs, avoid, allocOpts);
            for (const e of entries) allocated.push(...e);
            return entries;
          },
          mark: (seg) => {
            changed.add(seg);
          },
          setLu: (state, events) => {
            db.setLuState(vdiskId, state, version);
            lu = { state, events };
          },
          setOwner: (seg, owner) => {
            if (seg < 0 || seg >= live.segmentCount) throw new TableChangeError(`vdisk ${live.name} segment ${seg} out of range`);
            if (db.setSegmentOwner(vdiskId, seg, owner)) {
              ownerChanged.add(seg);
              changed.add(seg);
            }
          },
          grow: (size, segmentCount) => {
            if (segmentCount < live.segmentCount) {
              throw new TableChangeError(`vdisk ${live.name}: shrinking (${live.segmentCount} to ${segmentCount} segments) is not supported`);
            }
            db.setVdiskSize(vdiskId, size, segmentCount);
            (live as { size: number }).size = size;
            if (segmentCount !== live.segmentCount) grownTo = segmentCount;
            (live as { segmentCount: number }).segmentCount = segmentCount;
          },
        };
        change(ctx);
        if (changed.size === 0 && grownTo < 0 && lu === undefined) {
          // Nothing to tell anyone: undo the version bump with the transaction.
          throw new NoChange();
        }
        const r: CommitResult = { vdiskId, fromVersion: vdisk.version, version, ranges: toRanges(changed), segmentCount: live.segmentCount, touchesNormal: false };
        if (lu !== undefined) r.lu = lu;
        return r;
      };
      result = lazyVersions === undefined ? db.tx(commit) : db.lazy(commit);
    } catch (err) {
      // Allocations were taken from the in-memory free map; the rollback
      // undid them in the DB, so rebuild the map from it.
      if (allocated.length > 0) this.#allocator.reload();
      if (err instanceof NoChange) return null;
      // More than the reservations held (a batch of entries larger than prepared): the same change, durably.
      if (err instanceof UnreservedSpaceError && lazyVersions !== undefined) return this.commitAndSend(vdiskId, change);
      throw err;
    }
    const table = this.table(vdiskId);
    // Still the previous version here (the DB is the truth, the cache follows it).
    // A new LU state counts as touching normal segments: an agent that missed it would go on enforcing the old
    // reservations on them however long it is cut off, so only its ack or the removal of its export makes it safe.
    // A moved owner alone does not count: an agent stops writing a segment it owns once its lease runs out
    // (VdiskDevice), so the lease covers it.
    result.touchesNormal =
      result.lu !== undefined || touchesNormal(table, result.ranges, (s) => ownerChanged.has(s) && sameEntry(table, s, tableEntryOf(db, vdiskId, s)));
    if (grownTo >= 0) table.resize(grownTo);
    for (const [first, end] of result.ranges) {
      for (let s = first; s < end; s++) table.set(s, tableEntryOf(db, vdiskId, s));
    }
    table.setVersion(result.version);
    if (lazyVersions !== undefined) {
      result.lazy = true;
      lazyVersions.committedLazily(vdiskId, result.version);
    }
    this.#send(result);
    return result;
  }

  /**
   * An agent holds `have` of the vdisk from versions the database lost (a
   * power loss, agent-registry.ts): the version jumps above both, durably
   * (FULL), so the agent's version number matches none this controller
   * has, and the new version goes to every holder (an empty delta from the
   * database's version, else the full table). Returns the new version, or
   * null when the vdisk is gone. Synchronous, like commitAndSend, so it
   * cannot interleave with a change.
   */
  raiseVersionAbove(vdiskId: string, have: number): number | null {
    const table = this.table(vdiskId);
    const from = table.version;
    const version = Math.max(have, from) + 1;
    if (!this.#db.raiseVersion(vdiskId, version)) return null;
    table.setVersion(version);
    this.#send({ vdiskId, fromVersion: from, version, ranges: [], segmentCount: table.segmentCount, touchesNormal: false });
    return version;
  }

  /**
   * Serialized commit, send, wait for acks (fencing laggards) and reclaim.
   * `afterSend` runs once the new version is on its way to every holder and
   * before the acks are in (a fault answered right behind the delta).
   */
  changeTable(
    vdiskId: string,
    change: (c: ChangeContext) => void,
    afterSend?: (r: CommitResult) => void,
    opts?: CommitOptions,
  ): Promise<CommitResult | null> {
    return this.serialize(vdiskId, async () => {
      const r = this.commitAndSend(vdiskId, change, opts);
      if (r !== null) {
        afterSend?.(r);
        await this.awaitAcks(r);
      }
      return r;
    });
  }

  #send(r: CommitResult): void {
    const table = this.table(r.vdiskId);
    // Serialized once: the same bytes for every holder that gets the delta.
    let delta: EncodedMessage | null = null;
    for (const link of this.#agents.holders(r.vdiskId)) {
      const held = link.held(r.vdiskId);
      if (held === undefined || held.fenced || held.sent >= r.version) continue;
      if (held.sent === r.fromVersion) {
        delta ??= encodeControllerMessage({
          body: 'tableDelta',
          tableDelta: {
            vdiskId: r.vdiskId,
            fromVersion: r.fromVersion,
            toVersion: r.version,
            segmentCount: r.segmentCount,
            extents: r.ranges.flatMap(([a, b]) => extentsIn(table, a, b)).map(wireExtent),
            ...(r.lu === undefined ? {} : { lu: r.lu }),
            // Only when true: a durable delta is the bytes it always was.
            ...(r.lazy === true ? { lazy: true } : {}),
          },
        });
        link.send(delta);
        link.noteSent(r.vdiskId, r.version, false);
      } else {
        this.sendFullTable(link, r.vdiskId);
      }
    }
  }

  /**
   * Waits for every online holder to ack r.version; fences those that do
   * not, and then waits for each of them until the change is safe without
   * it (#awaitLaggards); then reclaims.
   */
  async awaitAcks(r: CommitResult, opts: AwaitAcksOptions = {}): Promise<void> {
    const holders = this.#agents.holders(r.vdiskId).filter((l) => !(l.held(r.vdiskId)?.fenced ?? true));
    const results = await Promise.all(holders.map((l) => l.waitAck(r.vdiskId, r.version, this.#ackTimeoutMs)));
    const laggards: string[] = [];
    const why = `no ack of table version ${r.version} within ${this.#ackTimeoutMs} ms`;
    holders.forEach((l, i) => {
      if (results[i]) return;
      this.fence(l, r.vdiskId, why);
      if (l.name !== null) laggards.push(l.name);
    });
    if (laggards.length > 0) {
      opts.fenced?.(laggards, why);
      await this.#awaitLaggards(r, laggards);
      // Shut down while waiting: the change is not safe to act on, and the database is closing.
      if (this.#closed) return;
    }
    this.reclaim(r.vdiskId);
    // Only now may held faults act on the new version (docs/architecture.md, "Table changes and acks").
    this.#hooks.settled(r.vdiskId);
  }

  /**
   * A fence is a message the laggard may never get (a partition the stream
   * has not noticed yet), so it proves nothing. Waits, per laggard (by
   * name, so an ack on a new stream counts), until it has acked r.version
   * or later, or its export is gone, or the change is safe without it: the
   * change turned no normal segment into anything else, and the agent's
   * lease has run out (lease plus margin since the controller last answered
   * one of its heartbeats; it answers none while the agent is fenced), so
   * it holds I/O to the zero and no-write segments the change did touch. A
   * change to normal segments waits for the ack however long: leases do not
   * stop an agent serving normal segments. Serialized per vdisk, so only
   * this vdisk's changes queue behind it.
   */
  async #awaitLaggards(r: CommitResult, names: readonly string[]): Promise<void> {
    const db = this.#db;
    const vdisk = db.vdisk(r.vdiskId)?.name ?? r.vdiskId;
    const leaseHelps = !r.touchesNormal && this.#agents.leaseMs > 0;
    let logged = false;
    for (;;) {
      if (this.#closed) return;
      const owing = names.filter((n) => (db.export(r.vdiskId, n)?.ackedVersion ?? Number.POSITIVE_INFINITY) < r.version);
      if (owing.length === 0) return;
      let waitMs = Number.POSITIVE_INFINITY;
      if (leaseHelps) {
        waitMs = Math.max(0, ...owing.map((n) => this.#agents.leaseEnd(n) - performance.now()));
        if (waitMs === 0) {
          log.warn(`vdisk ${vdisk} table version ${r.version} goes ahead without agent ${owing.join(', ')}: lease expired, and it changed no normal segment`);
          return;
        }
      }
      if (!logged) {
        logged = true;
        const until = leaseHelps ? `its ack or its lease to run out (${Math.ceil(waitMs)} ms)` : 'its ack or the removal of its export (the change touches normal segments)';
        log.warn(`vdisk ${vdisk} table version ${r.version}: waiting for agent ${owing.join(', ')}: ${until}`);
        db.event('fence', owing.join(','), `vdisk ${vdisk} version ${r.version} waits for ${until}`);
      }
      // Woken by acks and export changes; the timer covers the lease and anything missed.
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer);
          this.#laggardWakers.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, Math.min(waitMs + 1, LAGGARD_RECHECK_MS));
        this.#laggardWakers.add(wake);
      });
    }
  }

  /** Changes waiting for fenced agents look again (an ack came in, an export went). */
  wakeLaggardWaits(): void {
    for (const w of [...this.#laggardWakers]) w();
  }

  /**
   * Locations released at versions every exporting agent has acked go to
   * the scrubber, which frees them once an agent has zeroed them.
   */
  reclaim(vdiskId: string): number {
    const db = this.#db;
    // Usually nothing is released: one read answers that.
    if (!db.hasReleased(vdiskId)) return 0;
    const vdisk = db.vdisk(vdiskId);
    const upTo = Math.min(db.minAckedVersion(vdiskId), vdisk?.version ?? Number.MAX_SAFE_INTEGER);
    const freed = db.reclaim(vdiskId, upTo);
    if (freed.length > 0) {
      this.#hooks.scrub(freed);
      log.debug(`reclaimed ${freed.length} container segments released by vdisk ${vdisk?.name ?? vdiskId}; scrubbing them`);
    }
    return freed.length;
  }

  fence(link: AgentLink, vdiskId: string, reason: string): void {
    const held = link.held(vdiskId);
    if (held) held.fenced = true;
    const vd = this.#db.vdisk(vdiskId);
    log.warn(`fencing ${link.label} for vdisk ${vd?.name ?? vdiskId}: ${reason}`);
    if (link.name !== null) {
      this.#db.setFenced(vdiskId, link.name, true);
      this.#db.event('fence', link.name, `vdisk ${vd?.name ?? vdiskId}: ${reason}`);
    }
    link.send({ body: 'fence', fence: { vdiskId, reason } });
    this.#hooks.fenced?.(vdiskId);
  }

  sendFullTable(link: AgentLink, vdiskId: string): void {
    const t = this.table(vdiskId);
    if (link.readsTableRuns) {
      // Run form, in pieces of bounded size (proto/tabula.proto, TableFull).
      const meta = { vdiskId, version: t.version, segmentSize: t.segmentSize, blockSize: t.blockSize, segmentCount: t.segmentCount, ...this.#luOf(vdiskId), ...this.#lazyOf(vdiskId, t.version) };
      const containers = [...t.containers];
      let prev: TableRuns | null = null;
      const sendPiece = (r: TableRuns, more: boolean): void => {
        link.send({
          body: 'tableFull',
          tableFull: {
            ...meta,
            containers,
            extents: [],
            firstSegment: r.firstSegment,
            runCounts: r.counts,
            runStates: r.states,
            runContainers: r.containers,
            runOffsets: r.offsets,
            ...(r.owners !== undefined ? { runOwners: r.owners } : {}),
            ...(r.legCounts !== undefined ? { runLegCounts: r.legCounts, runLegContainers: r.legContainers, runLegOffsets: r.legOffsets } : {}),
            more,
          },
        });
      };
      for (const r of tableRuns(t, TABLE_RUNS_PER_MESSAGE)) {
        if (prev !== null) sendPiece(prev, true);
        prev = r;
      }
      if (prev !== null) sendPiece(prev, false);
      link.noteSent(vdiskId, t.version, true);
      return;
    }
    const extents = toExtents(t);
    const containers = [...new Set(extents.flatMap((e) => [e.container, ...(e.legs ?? []).map((l) => l.container)]).filter((c): c is string => c !== null))];
    link.send({
      body: 'tableFull',
      tableFull: {
        vdiskId,
        version: t.version,
        segmentSize: t.segmentSize,
        blockSize: t.blockSize,
        segmentCount: t.segmentCount,
        containers,
        extents: extents.map(wireExtent),
        ...this.#luOf(vdiskId),
        ...this.#lazyOf(vdiskId, t.version),
      },
    });
    link.noteSent(vdiskId, t.version, true);
  }

  /** TableFull's lazy field: present (true) only while the version is not yet durable. */
  #lazyOf(vdiskId: string, version: number): { lazy?: true } {
    return this.#hooks.durability?.isPending(vdiskId, version) === true ? { lazy: true } : {};
  }

  /** TableFull's LU state field: the state as of the table's version (none set yet: absent, the empty state). */
  #luOf(vdiskId: string): { luState?: LuStateMsg } {
    const s = this.#db.luState(vdiskId);
    return s === undefined ? {} : { luState: s };
  }

  // ---- acks ----

  /** An agent's TableAck. */
  onAck(link: AgentLink, a: TableAck): void {
    const held = link.held(a.vdiskId);
    if (held === undefined) {
      link.sendError(`tableAck for vdisk ${a.vdiskId}, which this agent does not hold`);
      return;
    }
    if (a.version > held.sent) {
      link.sendError(`tableAck of vdisk ${a.vdiskId} version ${a.version}, but only version ${held.sent} was sent`);
      return;
    }
    this.applyAck(link, a.vdiskId, a.version);
  }

  /** Records that the link's agent has installed `version` of the vdisk's table. */
  applyAck(link: AgentLink, vdiskId: string, version: number): void {
    const name = link.name as string;
    // Releases the changes waiting for this ack at once (in memory); the
    // database learns of it just after (a lost ack only delays reuse of space).
    link.noteAck(vdiskId, version);
    let acks = this.#acksToSettle.get(vdiskId);
    if (acks === undefined) {
      acks = new Map();
      this.#acksToSettle.set(vdiskId, acks);
      this.#writeBehind.afterWrites(() => this.#settleAcks(vdiskId));
    }
    acks.set(link, version);
    this.#writeBehind.add(() => this.#db.recordAck(vdiskId, name, version));
  }

  /**
   * Once a turn's acks of a vdisk are in the database (all of them at once:
   * a delta to many agents): changes waiting for a fenced agent look again,
   * fences lift, space may be reclaimed.
   */
  #settleAcks(vdiskId: string): void {
    const acks = this.#acksToSettle.get(vdiskId);
    this.#acksToSettle.delete(vdiskId);
    if (this.#closed || acks === undefined) return;
    this.wakeLaggardWaits();
    const fencedInDb = new Set(this.#db.fencedAgents(vdiskId));
    for (const [link, version] of acks) {
      const name = link.name as string;
      // Fenced in the database (maybe by an earlier stream) but no longer on this link: it has resynced.
      if (fencedInDb.has(name) && !link.held(vdiskId)?.fenced) {
        this.#db.setFenced(vdiskId, name, false);
        log.info(`agent ${name} re-synced vdisk ${vdiskId} at version ${version}; fence lifted`);
      }
    }
    this.reclaim(vdiskId);
  }

  // ---- changes agents ask for, and sharing ----

  /** An agent's Release: whole segments it no longer needs go back to zero. */
  onRelease(link: AgentLink, r: Release): void {
    const db = this.#db;
    const name = link.name as string;
    const reply = (ok: boolean, version: number, error: string) =>
      link.send({ body: 'releaseReply', releaseReply: { requestId: r.requestId, ok, tableVersion: version, error } });
    const vdisk = db.vdisk(r.vdiskId);
    if (!vdisk || !db.export(r.vdiskId, name)) {
      const why = `release: vdisk ${r.vdiskId} ${vdisk ? 'is not exported to agent ' + name : 'does not exist'}`;
      log.error(`agent ${name}: ${why}`);
      reply(false, 0, why);
      return;
    }
    const end = r.firstSegment + r.segmentCount;
    if (r.segmentCount < 1 || end > vdisk.segmentCount) {
      reply(false, vdisk.version, `release: segments ${r.firstSegment}+${r.segmentCount} out of range (vdisk ${vdisk.name} has ${vdisk.segmentCount})`);
      return;
    }
    // An exporting agent that is away would keep reading the old location: refuse,
    // and the agent zeroes the segments in place (they stay allocated).
    const away = this.#agents.unreachableExporters(r.vdiskId);
    if (away.length > 0) {
      reply(false, vdisk.version, `release: agent ${away.join(', ')} exporting vdisk ${vdisk.name} is not connected`);
      return;
    }
    this.changeTable(r.vdiskId, (c) => {
      for (const row of db.segmentRows(r.vdiskId, r.firstSegment, end)) {
        // Only data-bearing writable-or-shared segments go back to zero;
        // invalid and error stay for the admin.
        if (row.state === SegmentState.Normal || row.state === SegmentState.NoWrite) c.set(row.seg, SegmentState.Zero, null);
      }
    }).then(
      (res) => reply(true, res?.version ?? this.table(r.vdiskId).version, ''),
      (err: Error) => {
        log.error(`release of vdisk ${vdisk.name} segments ${r.firstSegment}+${r.segmentCount} failed: ${err.message}`);
        reply(false, 0, err.message);
      },
    );
  }

  /**
   * Locations whose count dropped to 1 (copy-on-write, migration, removal
   * of a sharer) become writable again in the one writable table that
   * still holds each: one change per vdisk, pushed and acked like any.
   * Snapshot tables keep no-write (they are read-only); a location being
   * migrated is left to the migration.
   */
  async settleShared(locs: Location | readonly Location[]): Promise<void> {
    const db = this.#db;
    const byVdisk = new Map<string, { seg: number; loc: Location }[]>();
    const sole = (loc: Location): boolean => db.refcount(loc) === 1 && !this.#hooks.migrating.has(locKey(loc));
    for (const loc of Array.isArray(locs) ? (locs as readonly Location[]) : [locs as Location]) {
      if (this.#closed || !sole(loc)) continue;
      const refs = db.references(loc);
      const ref = refs[0];
      if (refs.length !== 1 || ref === undefined || ref.state !== SegmentState.NoWrite) continue;
      const list = byVdisk.get(ref.vdiskId) ?? [];
      list.push({ seg: ref.seg, loc });
      byVdisk.set(ref.vdiskId, list);
    }
    for (const [vdiskId, list] of byVdisk) {
      if (this.#closed || db.vdisk(vdiskId)?.kind !== 'vdisk') continue;
      await this.changeTable(vdiskId, (c) => {
        for (const { seg, loc } of list) {
          const row = db.segment(vdiskId, seg);
          // Looked at again inside the transaction: the same entry, and every
          // leg of it alone (`loc` may be any leg of a mirrored segment).
          const legs = db.locationsOfSegment(vdiskId, seg);
          const holds = legs.some((l) => l.containerId === loc.containerId && l.offset === loc.offset);
          if (row.state === SegmentState.NoWrite && holds && legs.every(sole) && legs[0] !== undefined) c.set(seg, SegmentState.Normal, legs[0]);
        }
      });
    }
  }
}

class NoChange extends Error {}

/** Whether any segment in `ranges` is normal in `table` (segments past its end are new: not), leaving out those `ownerOnly` says. */
function touchesNormal(table: MappingTable, ranges: readonly [number, number][], ownerOnly: (seg: number) => boolean): boolean {
  for (const [first, end] of ranges) {
    for (let s = first; s < Math.min(end, table.segmentCount); s++) if (table.stateOf(s) === SegmentState.Normal && !ownerOnly(s)) return true;
  }
  return false;
}

/** The cached entry of `seg` has the state and locations (every leg) of `e` (owners aside). */
function sameEntry(table: MappingTable, seg: number, e: EntryWithLegs): boolean {
  if (table.stateOf(seg) !== e.state || table.containerOf(seg) !== (e.container ?? null) || table.containerOffsetOf(seg) !== (e.offset ?? 0)) return false;
  const legs = e.legs ?? [];
  if (table.legCountOf(seg) !== (table.containerOf(seg) === null ? 0 : 1 + legs.length)) return false;
  return legs.every((l, i) => table.locationsOf(seg)[i + 1]?.container === l.container && table.locationsOf(seg)[i + 1]?.offset === l.offset);
}

function toRanges(segs: Set<number>): [number, number][] {
  const sorted = [...segs].sort((a, b) => a - b);
  const out: [number, number][] = [];
  for (const s of sorted) {
    const last = out[out.length - 1];
    if (last && last[1] === s) last[1] = s + 1;
    else out.push([s, s + 1]);
  }
  return out;
}

/** A segment's table entry as the DB has it, with its write owner and extra legs. */
export function tableEntryOf(db: ControllerDb, vdiskId: string, seg: number): EntryWithLegs {
  const r = db.segment(vdiskId, seg);
  const owner = db.segmentOwner(vdiskId, seg);
  const own = owner === 0 ? {} : { owner };
  if (r.state === SegmentState.Zero || r.state === SegmentState.Invalid || r.containerId === null) return { state: r.state, ...own };
  const legs = db.segmentLegs(vdiskId, seg);
  const e = { state: r.state, container: r.containerId, offset: r.offset ?? 0, ...own };
  return legs.length === 0 ? e : { ...e, legs: legs.map((l) => ({ container: l.containerId, offset: l.offset })) };
}

// Extent <-> WireExtent (legs included) live in src/wire/table-extents.ts, shared with the agent.
export { wireExtent, fromWireExtent };
