// The controller's core: agent registry, table changes and their pushes, and
// the AgentService stream handler. Every table change goes one way (design
// notes §2.3): commit to SQLite (one transaction that bumps the version),
// send the new version to every agent holding the vdisk, wait for each ack
// (fencing an agent that misses the deadline), and only then reclaim old
// locations, and only once every exporting agent has acked.
//
// Changes to one vdisk are serialized (a promise chain per vdisk); commit
// and send happen in one synchronous step, so a TableRequest answered in
// between always sees a version the pushes agree with.

import { randomUUID } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import { MappingTable, SegmentState, extentsIn, tableRuns, toExtents, type Extent, type TableRuns } from '../table/index.js';
import { TABLE_RUNS_PER_MESSAGE, encodeControllerMessage, type EncodedMessage } from '../wire/grpc.js';
import type {
  AgentMessage,
  ContainerRef,
  ControllerMessage,
  Export,
  MalformedMessage,
  Register,
  Release,
  TableAck,
  TableRequest,
  WireExtent,
} from '../wire/proto-types.js';
import { log } from '../util/log.js';
import { Allocator, locKey, runLocations } from './allocator.js';
import { ControllerDb, TableChangeError, type Location, type VdiskRow } from './db.js';
import { AgentLink, type AgentCall } from './agent-link.js';
import { FaultManager } from './faults.js';
import { MigrationManager } from './migration.js';
import { Scrubber, type ScrubberOptions } from './scrubber.js';
import { WriteBehind } from './write-behind.js';

export interface ControllerOptions {
  /** How long an agent has to ack a table version before it is fenced (default 3000 ms). */
  ackTimeoutMs?: number;
  /** Heartbeat interval told to agents (default 2000 ms). */
  heartbeatIntervalMs?: number;
  /** Hold timeout told to agents (default 10000 ms, design notes §2.4). */
  holdTimeoutMs?: number;
  /** Agent lease told to agents (Welcome.lease_ms; default DEFAULT_LEASE_MS; 0 = none: a disconnected exporter blocks table changes until it is back). */
  leaseMs?: number;
  /** Added to the lease before acting without a disconnected agent (default DEFAULT_LEASE_MARGIN_MS). */
  leaseMarginMs?: number;
  controllerId?: string;
  /** How freed segments are zeroed before reuse (commands in flight, retry backoff). */
  scrub?: ScrubberOptions;
  /** Segments of one vdisk a migration moves at once (default MIGRATION_CONCURRENCY). */
  migrationConcurrency?: number;
}

/**
 * Agent lease. At least four heartbeat intervals (2 s), so a late answer or
 * two never costs a healthy agent its lease; and lease plus margin (9 s)
 * below the 10 s hold timeout, so a first write held on a surviving agent
 * when another exporter dies is answered within one hold, not failed with
 * 02/04/0A. Not shorter, because an agent cut off from the controller (or a
 * controller restart) stops serving zero and no-write segments after it.
 */
export const DEFAULT_LEASE_MS = 8000;
/**
 * The agent's lease starts when it sent the heartbeat the controller
 * answered, which is before the controller heard it, so network delay is
 * already on the safe side; the margin covers clock rate differences and a
 * busy event loop on the agent.
 */
export const DEFAULT_LEASE_MARGIN_MS = 1000;

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
}

/** What a change function may do inside its transaction. */
export interface ChangeContext {
  readonly vdisk: VdiskRow;
  /** The version this change commits as. */
  readonly version: number;
  set(seg: number, state: SegmentState, location: Location | null): void;
  /** Allocates `count` container segments for this vdisk (throws ContainerFullError). */
  allocate(count: number): Location[];
  /** Grows the vdisk (new segments zero). */
  grow(size: number, segmentCount: number): void;
  /** Records a segment changed by direct SQL in this transaction (bulk changes), so it is pushed. */
  mark(seg: number): void;
}

export const AGENT_NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;

export class Controller {
  readonly db: ControllerDb;
  readonly allocator: Allocator;
  readonly faults: FaultManager;
  readonly migrations: MigrationManager;
  /** Zeroes freed container segments (through agents) before they can be allocated again. */
  readonly scrubber: Scrubber;
  /** Acked versions, the fault log and last-seen times, written off the path of the messages they follow. */
  readonly writeBehind: WriteBehind;
  /**
   * Locations (locKey) being copied by a migration: faults on entries that
   * reference them WAIT (no copy-on-write, no making them writable) until
   * the remap is acked.
   */
  readonly migrating = new Set<string>();
  readonly id: string;
  readonly ackTimeoutMs: number;
  readonly heartbeatIntervalMs: number;
  readonly holdTimeoutMs: number;
  readonly leaseMs: number;
  readonly leaseMarginMs: number;
  /** performance.now() of the last message from each agent (lease accounting). */
  readonly #lastHeard = new Map<string, number>();
  /** performance.now() when the controller last answered a heartbeat of each agent (its lease runs from before then). */
  readonly #lastAnswered = new Map<string, number>();
  /** Table changes waiting for fenced agents (#awaitLaggards): woken to look again. */
  readonly #laggardWakers = new Set<() => void>();
  /** Agents may hold leases granted before this controller started (an earlier run): count them from here. */
  readonly #startedAt = performance.now();
  readonly #links = new Map<string, AgentLink>();
  /** Acks applied in memory whose follow-ups (#settleAcks) wait for the write-behind, by vdisk. */
  readonly #acksToSettle = new Map<string, Map<AgentLink, number>>();
  /** Links whose agent reads TableFull's run form (Register.table_runs). */
  readonly #tableRuns = new WeakSet<AgentLink>();
  readonly #allLinks = new Set<AgentLink>();
  readonly #tables = new Map<string, MappingTable>();
  readonly #locks = new Map<string, Promise<unknown>>();
  readonly #copies = new Map<number, { resolve: (err: string | null) => void; agent: string }>();
  // Above any id an earlier run of the controller handed out (clock-based),
  // so a CopyDone an agent sends late for an old command cannot complete a new one.
  #nextCopyId = Date.now() * 1000;
  #closed = false;

  constructor(db: ControllerDb, opts: ControllerOptions = {}) {
    this.db = db;
    this.writeBehind = new WriteBehind(db);
    this.allocator = new Allocator(db);
    this.faults = new FaultManager(this);
    this.migrations = new MigrationManager(this, opts.migrationConcurrency);
    this.scrubber = new Scrubber(this, opts.scrub);
    this.allocator.scrubSink = (locs) => this.scrubber.add(locs);
    this.id = opts.controllerId ?? randomUUID();
    this.ackTimeoutMs = opts.ackTimeoutMs ?? 3000;
    this.heartbeatIntervalMs = opts.heartbeatIntervalMs ?? 2000;
    this.holdTimeoutMs = opts.holdTimeoutMs ?? 10_000;
    this.leaseMs = opts.leaseMs ?? DEFAULT_LEASE_MS;
    this.leaseMarginMs = opts.leaseMarginMs ?? DEFAULT_LEASE_MARGIN_MS;
  }

  // ---- tables ----

  /** The vdisk's current table (cached; the DB is the truth). */
  table(vdiskId: string): MappingTable {
    let t = this.#tables.get(vdiskId);
    if (t === undefined) {
      const v = this.db.vdisk(vdiskId);
      if (!v) throw new TableChangeError(`vdisk ${vdiskId} does not exist`);
      t = this.db.loadTable(v);
      this.#tables.set(vdiskId, t);
    }
    return t;
  }

  /** Drops a cached table (vdisk removed). */
  forgetTable(vdiskId: string): void {
    this.#tables.delete(vdiskId);
  }

  get closed(): boolean {
    return this.#closed;
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
  commitAndSend(vdiskId: string, change: (c: ChangeContext) => void): CommitResult | null {
    // Cached before the commit: CommitResult.touchesNormal reads the previous states from it.
    this.table(vdiskId);
    const changed = new Set<number>();
    let grownTo = -1;
    const allocated: Location[] = [];
    let result: CommitResult | null;
    try {
      result = this.db.tx(() => {
        const vdisk = this.db.vdisk(vdiskId);
        if (!vdisk) throw new TableChangeError(`vdisk ${vdiskId} does not exist`);
        const version = this.db.bumpVersion(vdiskId);
        const live: VdiskRow = { ...vdisk, version };
        const ctx: ChangeContext = {
          vdisk: live,
          version,
          set: (seg, state, location) => {
            if (this.db.setSegment(live, seg, { state, location }, version)) changed.add(seg);
          },
          allocate: (count) => {
            const locs = runLocations(this.allocator.allocate(live, count));
            allocated.push(...locs);
            return locs;
          },
          mark: (seg) => {
            changed.add(seg);
          },
          grow: (size, segmentCount) => {
            if (segmentCount < live.segmentCount) {
              throw new TableChangeError(`vdisk ${live.name}: shrinking (${live.segmentCount} to ${segmentCount} segments) is not supported`);
            }
            this.db.setVdiskSize(vdiskId, size, segmentCount);
            (live as { size: number }).size = size;
            if (segmentCount !== live.segmentCount) grownTo = segmentCount;
            (live as { segmentCount: number }).segmentCount = segmentCount;
          },
        };
        change(ctx);
        if (changed.size === 0 && grownTo < 0) {
          // Nothing to tell anyone: undo the version bump with the transaction.
          throw new NoChange();
        }
        return { vdiskId, fromVersion: vdisk.version, version, ranges: toRanges(changed), segmentCount: live.segmentCount, touchesNormal: false };
      });
    } catch (err) {
      // Allocations were taken from the in-memory free map; the rollback
      // undid them in the DB, so rebuild the map from it.
      if (allocated.length > 0) this.allocator.reload();
      if (err instanceof NoChange) return null;
      throw err;
    }
    const table = this.table(vdiskId);
    // Still the previous version here (the DB is the truth, the cache follows it).
    result.touchesNormal = touchesNormal(table, result.ranges);
    if (grownTo >= 0) table.resize(grownTo);
    for (const [first, end] of result.ranges) {
      for (let s = first; s < end; s++) table.set(s, tableEntryOf(this.db, vdiskId, s));
    }
    table.setVersion(result.version);
    this.#send(result);
    return result;
  }

  /**
   * Serialized commit, send, wait for acks (fencing laggards) and reclaim.
   * `afterSend` runs once the new version is on its way to every holder and
   * before the acks are in (a fault answered right behind the delta).
   */
  changeTable(vdiskId: string, change: (c: ChangeContext) => void, afterSend?: (r: CommitResult) => void): Promise<CommitResult | null> {
    return this.serialize(vdiskId, async () => {
      const r = this.commitAndSend(vdiskId, change);
      if (r !== null) {
        afterSend?.(r);
        await this.awaitAcks(r);
      }
      return r;
    });
  }

  /**
   * The one link that must install a new version of this vdisk before any
   * I/O may act on it, or null when that is not exactly one connected agent
   * (several holders, or an exporter away whose lease still lets it serve
   * zero and no-write segments). A fenced holder does not count: it serves
   * no segment of the vdisk until it has a whole table.
   */
  soleHolder(vdiskId: string): AgentLink | null {
    let sole: AgentLink | null = null;
    for (const l of this.#holders(vdiskId)) {
      if (l.held(vdiskId)?.fenced === true) continue;
      if (sole !== null) return null;
      sole = l;
    }
    if (sole === null || this.exportersInLease(vdiskId).agents.length > 0) return null;
    return sole;
  }

  #send(r: CommitResult): void {
    const table = this.table(r.vdiskId);
    // Serialized once: the same bytes for every holder that gets the delta.
    let delta: EncodedMessage | null = null;
    for (const link of this.#holders(r.vdiskId)) {
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
  async awaitAcks(r: CommitResult): Promise<void> {
    const holders = this.#holders(r.vdiskId).filter((l) => !(l.held(r.vdiskId)?.fenced ?? true));
    const results = await Promise.all(holders.map((l) => l.waitAck(r.vdiskId, r.version, this.ackTimeoutMs)));
    const laggards: string[] = [];
    holders.forEach((l, i) => {
      if (results[i]) return;
      this.fence(l, r.vdiskId, `no ack of table version ${r.version} within ${this.ackTimeoutMs} ms`);
      if (l.name !== null) laggards.push(l.name);
    });
    if (laggards.length > 0) {
      await this.#awaitLaggards(r, laggards);
      // Shut down while waiting: the change is not safe to act on, and the database is closing.
      if (this.#closed) return;
    }
    this.reclaim(r.vdiskId);
    // Only now may held faults act on the new version (design notes §2.3).
    this.faults.onTableChanged(r.vdiskId);
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
    const vdisk = this.db.vdisk(r.vdiskId)?.name ?? r.vdiskId;
    const leaseHelps = !r.touchesNormal && this.leaseMs > 0;
    let logged = false;
    for (;;) {
      if (this.#closed) return;
      const owing = names.filter((n) => (this.db.export(r.vdiskId, n)?.ackedVersion ?? Number.POSITIVE_INFINITY) < r.version);
      if (owing.length === 0) return;
      let waitMs = Number.POSITIVE_INFINITY;
      if (leaseHelps) {
        waitMs = Math.max(0, ...owing.map((n) => this.leaseEnd(n) - performance.now()));
        if (waitMs === 0) {
          log.warn(`vdisk ${vdisk} table version ${r.version} goes ahead without agent ${owing.join(', ')}: lease expired, and it changed no normal segment`);
          return;
        }
      }
      if (!logged) {
        logged = true;
        const until = leaseHelps ? `its ack or its lease to run out (${Math.ceil(waitMs)} ms)` : 'its ack or the removal of its export (the change touches normal segments)';
        log.warn(`vdisk ${vdisk} table version ${r.version}: waiting for agent ${owing.join(', ')}: ${until}`);
        this.db.event('fence', owing.join(','), `vdisk ${vdisk} version ${r.version} waits for ${until}`);
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

  /**
   * performance.now() at which the agent's lease has surely run out: lease
   * plus margin after the controller last answered one of its heartbeats
   * (on any stream), counting from this controller's start at the earliest.
   */
  leaseEnd(agent: string): number {
    return Math.max(this.#lastAnswered.get(agent) ?? this.#startedAt, this.#startedAt) + this.leaseMs + this.leaseMarginMs;
  }

  #wakeLaggardWaits(): void {
    for (const w of [...this.#laggardWakers]) w();
  }

  /**
   * Locations released at versions every exporting agent has acked go to
   * the scrubber, which frees them once an agent has zeroed them.
   */
  reclaim(vdiskId: string): number {
    // Usually nothing is released: one read answers that.
    if (!this.db.hasReleased(vdiskId)) return 0;
    const vdisk = this.db.vdisk(vdiskId);
    const upTo = Math.min(this.db.minAckedVersion(vdiskId), vdisk?.version ?? Number.MAX_SAFE_INTEGER);
    const freed = this.db.reclaim(vdiskId, upTo);
    if (freed.length > 0) {
      this.scrubber.add(freed);
      log.debug(`reclaimed ${freed.length} container segments released by vdisk ${vdisk?.name ?? vdiskId}; scrubbing them`);
    }
    return freed.length;
  }

  fence(link: AgentLink, vdiskId: string, reason: string): void {
    const held = link.held(vdiskId);
    if (held) held.fenced = true;
    const vd = this.db.vdisk(vdiskId);
    log.warn(`fencing ${link.label} for vdisk ${vd?.name ?? vdiskId}: ${reason}`);
    if (link.name !== null) {
      this.db.setFenced(vdiskId, link.name, true);
      this.db.event('fence', link.name, `vdisk ${vd?.name ?? vdiskId}: ${reason}`);
    }
    link.send({ body: 'fence', fence: { vdiskId, reason } });
  }

  sendFullTable(link: AgentLink, vdiskId: string): void {
    const t = this.table(vdiskId);
    if (this.#tableRuns.has(link)) {
      // Run form, in pieces of bounded size (proto/tabula.proto, TableFull).
      const meta = { vdiskId, version: t.version, segmentSize: t.segmentSize, blockSize: t.blockSize, segmentCount: t.segmentCount };
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
    const containers = [...new Set(extents.map((e) => e.container).filter((c): c is string => c !== null))];
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
      },
    });
    link.noteSent(vdiskId, t.version, true);
  }

  #holders(vdiskId: string): AgentLink[] {
    const out: AgentLink[] = [];
    for (const l of this.#links.values()) if (!l.closed && l.held(vdiskId) !== undefined) out.push(l);
    return out;
  }

  // ---- agents ----

  link(agent: string): AgentLink | undefined {
    const l = this.#links.get(agent);
    return l && !l.closed ? l : undefined;
  }

  onlineAgents(): string[] {
    return [...this.#links.values()].filter((l) => !l.closed).map((l) => l.name as string);
  }

  /**
   * Agents that export this vdisk but are not connected. Such an agent keeps
   * serving the table it holds and can be neither told of a change nor
   * fenced, so a change it would not see must wait until it is back.
   */
  unreachableExporters(vdiskId: string): string[] {
    return this.db
      .exportsOfVdisk(vdiskId)
      .map((e) => e.agent)
      .filter((a) => this.link(a) === undefined);
  }

  /**
   * Exporters of this vdisk that are not connected and may still serve its
   * zero and no-write segments from their old table: their lease (counted
   * from the last message heard from them, plus the margin) has not run out.
   * A table change those segments depend on (allocation, copy-on-write) must
   * wait `waitMs` for them; Infinity when no lease is granted.
   */
  exportersInLease(vdiskId: string): { agents: string[]; waitMs: number } {
    const away = this.unreachableExporters(vdiskId);
    if (away.length === 0) return { agents: [], waitMs: 0 };
    if (this.leaseMs <= 0) return { agents: away, waitMs: Number.POSITIVE_INFINITY };
    const now = performance.now();
    let waitMs = 0;
    const agents: string[] = [];
    for (const a of away) {
      const left = Math.max(this.#lastHeard.get(a) ?? this.#startedAt, this.#startedAt) + this.leaseMs + this.leaseMarginMs - now;
      if (left <= 0) continue;
      agents.push(a);
      waitMs = Math.max(waitMs, left);
    }
    return { agents, waitMs: Math.ceil(waitMs) };
  }

  /** The export list an agent gets. */
  exportsFor(agent: string): Export[] {
    return this.db.exportsOfAgent(agent).flatMap((e) => {
      const v = this.db.vdisk(e.vdiskId);
      if (!v) return [];
      return [
        {
          vdiskId: v.id,
          vdiskName: v.name,
          targetIqn: e.targetIqn,
          lun: e.lun,
          blockSize: v.blockSize,
          size: v.size,
          segmentSize: v.segmentSize,
          readOnly: e.readOnly,
          allowedInitiators: e.allowedInitiators,
        },
      ];
    });
  }

  /**
   * Sends an agent its export set and a full table of every vdisk it newly
   * serves; forgets vdisks no longer exported. Returns the vdisks sent.
   */
  syncExports(link: AgentLink, haveVersions: ReadonlyMap<string, number> = new Map()): string[] {
    const name = link.name as string;
    const exports = this.exportsFor(name);
    link.send({ body: 'exportSet', exportSet: { exports } });
    const want = new Set(exports.map((e) => e.vdiskId));
    for (const id of [...link.tables.keys()]) if (!want.has(id)) link.drop(id);
    const sent: string[] = [];
    for (const e of exports) {
      if (link.held(e.vdiskId) !== undefined) continue;
      const t = this.table(e.vdiskId);
      if (haveVersions.get(e.vdiskId) === t.version) {
        // The agent kept this very version while away: nothing to send.
        link.noteSent(e.vdiskId, t.version, true);
        this.#applyAck(link, e.vdiskId, t.version);
        // Faults that waited for this agent to come back may go on now.
        this.faults.onTableChanged(e.vdiskId);
        continue;
      }
      this.sendFullTable(link, e.vdiskId);
      sent.push(e.vdiskId);
    }
    return sent;
  }

  /** Waits for acks of full tables just sent; fences on timeout. */
  #awaitInitial(link: AgentLink, vdiskIds: readonly string[]): void {
    for (const id of vdiskIds) {
      const version = link.held(id)?.sent ?? 0;
      void link.waitAck(id, version, this.ackTimeoutMs).then((ok) => {
        if (!ok && !link.closed && link.held(id) !== undefined) this.fence(link, id, `no ack of full table version ${version}`);
        // Faults that waited for this agent to come back may go on now.
        else if (ok) this.faults.onTableChanged(id);
      });
    }
  }

  /** Export set changed for an agent (admin): resync it if online. */
  exportsChanged(agent: string): void {
    // A change waiting for this agent may not need to any more (export removed).
    this.#wakeLaggardWaits();
    const link = this.link(agent);
    if (!link) return;
    this.#awaitInitial(link, this.syncExports(link));
  }

  // ---- copies and sharing ----

  /**
   * An online agent that reaches every one of `containers`, `prefer` when it
   * does (the faulting agent), else the first by name; null when none.
   */
  copyAgent(containers: readonly string[], prefer?: string | null): string | null {
    const fits = (name: string): boolean => {
      if (this.link(name) === undefined) return false;
      const reach = new Set(this.db.agentContainers(name));
      return containers.every((c) => reach.has(c));
    };
    if (prefer && fits(prefer)) return prefer;
    return this.onlineAgents().sort().find(fits) ?? null;
  }

  /**
   * Locations whose count dropped to 1 (copy-on-write, migration, removal
   * of a sharer) become writable again in the one writable table that
   * still holds each: one change per vdisk, pushed and acked like any.
   * Snapshot tables keep no-write (they are read-only); a location being
   * migrated is left to the migration.
   */
  async settleShared(locs: Location | readonly Location[]): Promise<void> {
    const byVdisk = new Map<string, { seg: number; loc: Location }[]>();
    const sole = (loc: Location): boolean => this.db.refcount(loc) === 1 && !this.migrating.has(locKey(loc));
    for (const loc of Array.isArray(locs) ? (locs as readonly Location[]) : [locs as Location]) {
      if (this.#closed || !sole(loc)) continue;
      const refs = this.db.references(loc);
      const ref = refs[0];
      if (refs.length !== 1 || ref === undefined || ref.state !== SegmentState.NoWrite) continue;
      const list = byVdisk.get(ref.vdiskId) ?? [];
      list.push({ seg: ref.seg, loc });
      byVdisk.set(ref.vdiskId, list);
    }
    for (const [vdiskId, list] of byVdisk) {
      if (this.#closed || this.db.vdisk(vdiskId)?.kind !== 'vdisk') continue;
      await this.changeTable(vdiskId, (c) => {
        for (const { seg, loc } of list) {
          const row = this.db.segment(vdiskId, seg);
          // Looked at again inside the transaction: the same entry, still alone.
          if (row.state === SegmentState.NoWrite && row.containerId === loc.containerId && row.offset === loc.offset && sole(loc)) {
            c.set(seg, SegmentState.Normal, loc);
          }
        }
      });
    }
  }

  /** Commands an agent to copy; resolves with null on success or the error text. */
  copy(agent: string, cmd: { srcContainer: string; srcOffset: number; dstContainer: string; dstOffset: number; length: number }): Promise<string | null> {
    const link = this.link(agent);
    if (!link) return Promise.resolve(`agent ${agent} is offline`);
    const commandId = this.#nextCopyId++;
    return new Promise((resolve) => {
      this.#copies.set(commandId, { resolve, agent });
      link.send({ body: 'copyCommand', copyCommand: { commandId, ...cmd } });
    });
  }

  /** Commands an agent to zero a data-area range (scrub); resolves like copy. */
  zero(agent: string, cmd: { container: string; offset: number; length: number }): Promise<string | null> {
    const link = this.link(agent);
    if (!link) return Promise.resolve(`agent ${agent} is offline`);
    const commandId = this.#nextCopyId++;
    return new Promise((resolve) => {
      this.#copies.set(commandId, { resolve, agent });
      link.send({ body: 'zeroCommand', zeroCommand: { commandId, ...cmd } });
    });
  }

  // ---- the stream ----

  /** AgentService.Connect handler. */
  connect(call: AgentCall): void {
    const link = new AgentLink(call);
    this.#allLinks.add(link);
    call.on('data', (m: AgentMessage | MalformedMessage) => {
      try {
        this.#dispatch(link, m);
      } catch (err) {
        log.error(`message from ${link.label} failed`, { body: m.body, error: (err as Error).message });
        link.sendError(`${m.body}: ${(err as Error).message}`);
      }
    });
    const gone = (why: string) => () => this.#disconnected(link, why);
    call.on('end', () => {
      gone('stream ended')();
      try {
        call.end();
      } catch {
        // already closed
      }
    });
    call.on('error', (err: grpc.ServiceError) => gone(`stream error: ${err.message}`)());
    call.on('close', gone('stream closed'));
    call.on('cancelled', gone('stream cancelled'));
  }

  #disconnected(link: AgentLink, why: string): void {
    if (link.closed && !this.#allLinks.has(link)) return;
    this.#allLinks.delete(link);
    link.markClosed();
    this.faults.dropLink(link);
    for (const [id, c] of this.#copies) {
      if (link.name !== null && c.agent === link.name) {
        this.#copies.delete(id);
        c.resolve(`agent ${link.name} disconnected`);
      }
    }
    if (link.name !== null && this.#links.get(link.name) === link) {
      this.#links.delete(link.name);
      log.info(`agent ${link.name} disconnected: ${why}`);
      this.db.event('agent', link.name, `disconnected: ${why}`);
    }
  }

  #dispatch(link: AgentLink, m: AgentMessage | MalformedMessage): void {
    if (m.body === 'malformed') {
      log.error(`malformed message from ${link.label}: ${m.reason}`);
      link.sendError(`malformed message: ${m.reason}`);
      return;
    }
    if (link.name !== null && !link.closed) this.#lastHeard.set(link.name, performance.now());
    if (m.body !== 'register' && link.name === null) {
      log.error(`${link.label} sent ${m.body} before register`);
      link.sendError(`${m.body} before register: send register first`, true);
      link.close('protocol error: register first');
      return;
    }
    switch (m.body) {
      case 'register':
        this.#onRegister(link, m.register);
        return;
      case 'heartbeat': {
        const name = link.name as string;
        this.writeBehind.once(`seen ${name}`, () => this.db.touchAgent(name));
        // The answer renews the agent's lease (from when it sent this heartbeat).
        // None while a vdisk of it is fenced: its lease must run out even when
        // the stream looks open, since table changes wait for that (#awaitLaggards).
        if (this.leaseMs > 0 && !isFenced(link)) {
          this.#lastAnswered.set(link.name as string, performance.now());
          link.send({ body: 'heartbeatReply', heartbeatReply: { seq: m.heartbeat.seq } });
        }
        return;
      }
      case 'tableAck':
        this.#onAck(link, m.tableAck);
        return;
      case 'tableRequest':
        this.#onTableRequest(link, m.tableRequest);
        return;
      case 'fault':
        this.faults.handle(link, m.fault);
        return;
      case 'copyDone': {
        const c = this.#copies.get(m.copyDone.commandId);
        if (!c || c.agent !== link.name) {
          link.sendError(`copyDone for unknown command ${m.copyDone.commandId}`);
          return;
        }
        this.#copies.delete(m.copyDone.commandId);
        c.resolve(m.copyDone.ok ? null : m.copyDone.error || 'copy failed');
        return;
      }
      case 'release':
        this.#onRelease(link, m.release);
        return;
      default: {
        const body: string = (m as { body: string }).body;
        log.error(`unknown message ${body} from ${link.label}`);
        link.sendError(`unknown message ${body}`);
      }
    }
  }

  #onRegister(link: AgentLink, r: Register): void {
    if (link.name !== null) {
      link.sendError(`already registered as ${link.name}`);
      return;
    }
    if (!AGENT_NAME_RE.test(r.agentName)) {
      log.error(`register refused: bad agent name "${r.agentName}" from ${link.peer}`);
      link.close(`bad agent name "${r.agentName}": use 1-64 of A-Z a-z 0-9 . _ -`);
      return;
    }
    const old = this.#links.get(r.agentName);
    if (old && !old.closed) {
      log.warn(`agent ${r.agentName} reconnected from ${link.peer}; closing its old stream from ${old.peer}`);
      old.close('replaced by a newer connection of the same agent');
      this.#disconnected(old, 'replaced');
    }
    const accepted: { id: string; path: string }[] = [];
    const rejected: string[] = [];
    for (const c of r.containers) {
      const why = this.#checkClaim(c);
      if (why === null) accepted.push({ id: c.id, path: c.path });
      else rejected.push(why);
    }
    for (const why of rejected) {
      log.error(`agent ${r.agentName}: ${why}`);
      link.sendError(why);
    }
    link.name = r.agentName;
    if (r.tableRuns === true) this.#tableRuns.add(link);
    this.#links.set(r.agentName, link);
    this.#lastHeard.set(r.agentName, performance.now());
    this.db.registerAgent(r.agentName, r.portals, accepted);
    this.db.event('agent', r.agentName, `registered from ${link.peer} with ${accepted.length} containers`);
    log.info(`agent ${r.agentName} registered from ${link.peer}`, { portals: r.portals, containers: accepted.length, rejected: rejected.length });
    link.send({
      body: 'welcome',
      welcome: {
        controllerId: this.id,
        agentName: r.agentName,
        heartbeatIntervalMs: this.heartbeatIntervalMs,
        ackTimeoutMs: this.ackTimeoutMs,
        holdTimeoutMs: this.holdTimeoutMs,
        rejectedContainers: rejected,
        leaseMs: this.leaseMs,
      },
    });
    const have = new Map(r.tables.map((t) => [t.vdiskId, t.version]));
    this.#awaitInitial(link, this.syncExports(link, have));
    // Freed space on containers this agent reaches may be waiting for it.
    this.scrubber.kick();
  }

  /** Null when the claim matches the registered container, else why not. */
  #checkClaim(c: ContainerRef): string | null {
    const reg = this.db.container(c.id);
    if (!reg) return `container ${c.id} at ${c.path || '?'} is not registered with the controller (tabula container add)`;
    if (reg.size !== c.size) return `container ${c.id} at ${c.path || '?'} claims size ${c.size} but is registered with size ${reg.size}`;
    if (reg.dataOffset !== c.dataOffset) {
      return `container ${c.id} at ${c.path || '?'} claims data offset ${c.dataOffset} but is registered with ${reg.dataOffset}`;
    }
    return null;
  }

  #onAck(link: AgentLink, a: TableAck): void {
    const held = link.held(a.vdiskId);
    if (held === undefined) {
      link.sendError(`tableAck for vdisk ${a.vdiskId}, which this agent does not hold`);
      return;
    }
    if (a.version > held.sent) {
      link.sendError(`tableAck of vdisk ${a.vdiskId} version ${a.version}, but only version ${held.sent} was sent`);
      return;
    }
    this.#applyAck(link, a.vdiskId, a.version);
  }

  #applyAck(link: AgentLink, vdiskId: string, version: number): void {
    const name = link.name as string;
    // Releases the changes waiting for this ack at once (in memory); the
    // database learns of it just after (a lost ack only delays reuse of space).
    link.noteAck(vdiskId, version);
    let acks = this.#acksToSettle.get(vdiskId);
    if (acks === undefined) {
      acks = new Map();
      this.#acksToSettle.set(vdiskId, acks);
      this.writeBehind.afterWrites(() => this.#settleAcks(vdiskId));
    }
    acks.set(link, version);
    this.writeBehind.add(() => this.db.recordAck(vdiskId, name, version));
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
    this.#wakeLaggardWaits();
    const fencedInDb = new Set(this.db.fencedAgents(vdiskId));
    for (const [link, version] of acks) {
      const name = link.name as string;
      // Fenced in the database (maybe by an earlier stream) but no longer on this link: it has resynced.
      if (fencedInDb.has(name) && !link.held(vdiskId)?.fenced) {
        this.db.setFenced(vdiskId, name, false);
        log.info(`agent ${name} re-synced vdisk ${vdiskId} at version ${version}; fence lifted`);
      }
    }
    this.reclaim(vdiskId);
  }

  #onTableRequest(link: AgentLink, r: TableRequest): void {
    const name = link.name as string;
    if (!this.db.export(r.vdiskId, name)) {
      log.error(`agent ${name} requested the table of vdisk ${r.vdiskId}, which is not exported to it`);
      link.sendError(`table request: vdisk ${r.vdiskId} is not exported to agent ${name}`);
      return;
    }
    log.info(`agent ${name} requests vdisk ${r.vdiskId} table (has version ${r.haveVersion}${r.reason ? `: ${r.reason}` : ''})`);
    this.sendFullTable(link, r.vdiskId);
    this.#awaitInitial(link, [r.vdiskId]);
  }

  #onRelease(link: AgentLink, r: Release): void {
    const name = link.name as string;
    const reply = (ok: boolean, version: number, error: string) =>
      link.send({ body: 'releaseReply', releaseReply: { requestId: r.requestId, ok, tableVersion: version, error } });
    const vdisk = this.db.vdisk(r.vdiskId);
    if (!vdisk || !this.db.export(r.vdiskId, name)) {
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
    const away = this.unreachableExporters(r.vdiskId);
    if (away.length > 0) {
      reply(false, vdisk.version, `release: agent ${away.join(', ')} exporting vdisk ${vdisk.name} is not connected`);
      return;
    }
    this.changeTable(r.vdiskId, (c) => {
      for (const row of this.db.segmentRows(r.vdiskId, r.firstSegment, end)) {
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

  /** Ends every agent stream (controller shutdown). */
  close(): void {
    if (this.#closed) return;
    this.writeBehind.flush();
    this.#closed = true;
    this.migrations.stopAll();
    this.scrubber.stop();
    for (const l of this.#allLinks) {
      l.close('controller shutting down');
      this.faults.dropLink(l);
    }
    this.#allLinks.clear();
    this.#links.clear();
    this.#wakeLaggardWaits();
    for (const c of this.#copies.values()) c.resolve('controller shutting down');
    this.#copies.clear();
    // The faults just dropped, while the database is still open.
    this.writeBehind.flush();
  }
}

class NoChange extends Error {}

/** Whether a vdisk of this link is fenced (missed an ack, not yet resynced). */
function isFenced(link: AgentLink): boolean {
  for (const t of link.tables.values()) if (t.fenced) return true;
  return false;
}

/** Whether any segment in `ranges` is normal in `table` (segments past its end are new: not). */
function touchesNormal(table: MappingTable, ranges: readonly [number, number][]): boolean {
  for (const [first, end] of ranges) {
    for (let s = first; s < Math.min(end, table.segmentCount); s++) if (table.stateOf(s) === SegmentState.Normal) return true;
  }
  return false;
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

function tableEntryOf(db: ControllerDb, vdiskId: string, seg: number): { state: SegmentState; container?: string; offset?: number } {
  const r = db.segment(vdiskId, seg);
  if (r.state === SegmentState.Zero || r.state === SegmentState.Invalid || r.containerId === null) return { state: r.state };
  return { state: r.state, container: r.containerId, offset: r.offset ?? 0 };
}

export function wireExtent(e: Extent): WireExtent {
  return { first: e.first, count: e.count, state: e.state, container: e.container ?? '', offset: e.offset };
}

export function fromWireExtent(e: WireExtent): Extent {
  return { first: e.first, count: e.count, state: e.state, container: e.container === '' ? null : e.container, offset: e.offset };
}

export type { ControllerMessage };
