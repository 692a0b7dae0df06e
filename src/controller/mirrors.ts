// Leg failure and resync of mirrored vdisks (docs/architecture.md, "A
// failed copy and its resync"). A leg fault (Fault.failedContainer)
// says one copy of a segment failed while another took the write. The
// controller decides once per container, not per segment:
//
//   1. the container goes `failed` (no allocation on it);
//   2. every vdisk with a leg on it gets one table change: each segment with
//      two or more legs loses its leg there (leg 1 is promoted when leg 0 is
//      lost), the lost leg is kept as a stale leg (dirty when the leg fault
//      of a write named its segment; a failed read changed nothing), and a normal segment that is not dirty becomes
//      no-write, so that its next write faults once and make-writable marks
//      it dirty: the fault path is the write-intent log. A segment whose only
//      leg is there keeps today's single-copy behaviour (its I/O errors);
//   3. push, acks, then RETRY to every leg fault that waited. A later leg
//      fault (of a write) for that container marks its segment dirty and gets RETRY.
//
// Resync, once an agent reports the container reachable again: clean stale
// legs come back in one table change per vdisk (a no-write that was only
// there for tracking goes back to normal); a dirty one is copied first, per
// segment, the migration engine's way (migration.ts, rebuild.ts): its
// location joins `migrating` (writes to it WAIT), the entry goes no-write,
// push, acks, one agent reaching both copies a healthy leg onto the stale
// location (segment-copy.ts, the steps migration and rebuild share), the leg
// is added back, normal, push, acks. With no
// stale leg left the container is online again. Bytes copied are counted
// (resyncProgress, observer: tabula_resync_bytes_total).

import { IoOp, SegmentState } from '../table/index.js';
import type { Fault } from '../wire/proto-types.js';
import { log } from '../util/log.js';
import { locKey } from './allocator.js';
import type { AgentCommands } from './agent-commands.js';
import type { ControllerDb, Location, StaleLeg } from './db.js';
import { copySegmentData, frozenEverywhere, type SegmentCopyHost } from './segment-copy.js';
import type { ChangeContext, TableChanges } from './table-changes.js';

/** What the mirror manager needs of the controller (and the copy steps it shares, segment-copy.ts). */
export interface MirrorHost extends SegmentCopyHost {
  readonly db: ControllerDb;
  /** Locations (locKey) being copied: faults on entries that reference them WAIT (shared with migration). */
  readonly migrating: Set<string>;
  readonly tables: Pick<TableChanges, 'table' | 'quiesce' | 'changeTable'>;
  readonly commands: Pick<AgentCommands, 'copyAgent' | 'copy'>;
}

/** Whether the failed I/O changed data: a failed read leaves the stale leg in sync, so it marks nothing dirty. */
function changesData(f: Fault): boolean {
  return f.op !== IoOp.Read && f.op !== IoOp.Verify;
}

/** The answer to one leg fault (FaultManager sends it, and logs it). */
export type LegAnswer = { kind: 'retry' } | { kind: 'fail'; reason: string };

/** Counts what resync copies (metrics: tabula_resync_bytes_total). */
export interface MirrorObserver {
  resyncBytes(n: number): void;
}

/** A vdisk's resync now: dirty segments copied of those to copy, bytes copied. */
export interface ResyncProgress {
  done: number;
  total: number;
  bytes: number;
}

/** Segments of one vdisk copied at once during a resync (as migration). */
export const RESYNC_CONCURRENCY = 4;
/** Pause before another pass over segments a resync could not copy yet (no agent, a laggard). */
const RESYNC_RETRY_MS = 500;
/** Passes without progress before a resync gives up until the container is reported reachable again. */
const RESYNC_MAX_IDLE_PASSES = 20;

interface Waiting {
  fault: Fault;
  answer: (a: LegAnswer) => void;
}

/** One container's failure being decided (steps 1-3). */
interface Removal {
  containerId: string;
  waiting: Waiting[];
  /** Segments (`vdisk:seg`) named by leg faults: their stale legs are dirty. */
  dirty: Set<string>;
  /** Reported reachable while this ran: resync right after. */
  resyncAfter: boolean;
}

/** One container's resync. */
interface Resync {
  containerId: string;
  cancel: boolean;
  done: Promise<void>;
  /** By vdisk. */
  progress: Map<string, ResyncProgress>;
}

type Outcome = 'copied' | 'skipped' | 'later' | 'failed';

const segKey = (vdiskId: string, seg: number): string => `${vdiskId}:${seg}`;

export class MirrorManager {
  readonly #host: MirrorHost;
  /** Held writes on a vdisk look again (a location left `migrating`). */
  readonly #released: (vdiskId: string) => void;
  readonly #removals = new Map<string, Removal>();
  readonly #resyncs = new Map<string, Resync>();
  /**
   * Stale locations (locKey) whose copy missed its deadline: the agent may
   * still write them, so they are not resynced again by this controller
   * (the rebuild takes their segments over after its delay).
   */
  readonly #overdue = new Set<string>();
  #bytes = 0;
  observer: MirrorObserver | null = null;

  constructor(host: MirrorHost, released: (vdiskId: string) => void) {
    this.#host = host;
    this.#released = released;
  }

  /** Bytes copied by resyncs since this controller started. */
  get resyncBytesTotal(): number {
    return this.#bytes;
  }

  /** Whether the container's failure is being decided now. */
  removing(containerId: string): boolean {
    return this.#removals.has(containerId);
  }

  /** Whether the container is being resynced now. */
  resyncing(containerId: string): boolean {
    return this.#resyncs.has(containerId);
  }

  /** The vdisk's resync progress over every container being resynced; undefined when none is. */
  resyncProgress(vdiskId: string): ResyncProgress | undefined {
    let out: ResyncProgress | undefined;
    for (const r of this.#resyncs.values()) {
      const p = r.progress.get(vdiskId);
      if (p === undefined) continue;
      out ??= { done: 0, total: 0, bytes: 0 };
      out.done += p.done;
      out.total += p.total;
      out.bytes += p.bytes;
    }
    return out;
  }

  /** Resolves when the container's removal and resync (if any) are over (tests, shutdown). */
  async settled(containerId: string): Promise<void> {
    for (;;) {
      const r = this.#resyncs.get(containerId);
      if (r !== undefined) {
        await r.done;
        continue;
      }
      if (!this.#removals.has(containerId)) return;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** Stops resync loops (controller shutdown); they start again when the container is reported reachable. */
  close(): void {
    for (const r of this.#resyncs.values()) r.cancel = true;
  }

  /**
   * A leg fault, already checked by FaultManager.handle (vdisk exported to
   * the agent, segment in range). Answered through `answer`, once.
   */
  legFault(f: Fault, answer: (a: LegAnswer) => void): void {
    const c = f.failedContainer ?? '';
    const host = this.#host;
    const pending = this.#removals.get(c);
    if (pending !== undefined) {
      if (changesData(f)) pending.dirty.add(segKey(f.vdiskId, f.segment));
      pending.waiting.push({ fault: f, answer });
      return;
    }
    const legs = host.db.locationsOfSegment(f.vdiskId, f.segment);
    if (legs.length >= 2 && legs.some((l) => l.containerId === c)) {
      // The first leg fault for this container: decide it for every vdisk.
      const r: Removal = { containerId: c, waiting: [{ fault: f, answer }], dirty: new Set(changesData(f) ? [segKey(f.vdiskId, f.segment)] : []), resyncAfter: false };
      this.#removals.set(c, r);
      void this.#remove(r);
      return;
    }
    // The leg is gone already (removed for an earlier fault; the agent's
    // table was behind), or it is the segment's only leg now: the write
    // the agent holds reached the other legs, so the stale leg missed it.
    if (changesData(f) && host.db.markDirty(f.vdiskId, f.segment) > 0 && this.#resyncs.has(c)) {
      log.debug(`vdisk ${f.vdiskId} segment ${f.segment}: dirty again during the resync of container ${c}`);
    }
    void host.tables.quiesce(f.vdiskId).then(
      () => answer({ kind: 'retry' }),
      (err: Error) => answer({ kind: 'fail', reason: err.message }),
    );
  }

  /**
   * An agent reports the container reachable (Register, or a ContainerUpdate
   * where it was not before). A failed container with stale legs is resynced.
   */
  containerReachable(containerId: string): void {
    if (this.#host.closed) return;
    const removal = this.#removals.get(containerId);
    if (removal !== undefined) {
      removal.resyncAfter = true;
      return;
    }
    if (this.#resyncs.has(containerId)) return;
    const row = this.#host.db.container(containerId);
    if (row === undefined || row.state !== 'failed') return;
    this.resync(containerId);
  }

  /** Starts resyncing the container (no-op while one runs); resolves when it has ended. */
  resync(containerId: string): Promise<void> {
    const running = this.#resyncs.get(containerId);
    if (running !== undefined) return running.done;
    const run: Resync = { containerId, cancel: false, done: Promise.resolve(), progress: new Map() };
    this.#resyncs.set(containerId, run);
    run.done = this.#resync(run)
      .catch((err: Error) => {
        if (this.#host.closed) return;
        log.error(`resync of container ${containerId} stopped: ${err.message}`);
        this.#host.db.event('container-resync', containerId, `stopped: ${err.message}`);
      })
      .finally(() => {
        if (this.#resyncs.get(containerId) === run) this.#resyncs.delete(containerId);
      });
    return run.done;
  }

  // ---- removal (steps 1-3) ----

  async #remove(r: Removal): Promise<void> {
    const host = this.#host;
    const db = host.db;
    const c = r.containerId;
    // A resync in progress stops before its next segment (its changes re-check everything).
    const resync = this.#resyncs.get(c);
    if (resync !== undefined) resync.cancel = true;
    try {
      const first = r.waiting[0]?.fault;
      const why = first !== undefined ? `vdisk ${first.vdiskId} segment ${first.segment}: ${first.detail || 'I/O failed'}` : 'leg fault';
      db.setContainerState(c, 'failed');
      db.event('container-failed', c, why);
      log.warn(`container ${c} failed (${why}): removing its legs from mirrored segments`);
      let changed = 0;
      for (const vdiskId of db.vdisksOnContainer(c)) {
        if (host.closed) return;
        const vdisk = db.vdisk(vdiskId);
        if (vdisk === undefined) continue;
        let removed = 0;
        await host.tables.changeTable(vdiskId, (ctx) => {
          removed = this.#removeLegs(ctx, vdiskId, c, r.dirty);
        });
        if (removed > 0) {
          changed++;
          db.event('degraded', vdisk.name, `${removed} segments lost their copy on failed container ${c}`);
          log.warn(`vdisk ${vdisk.name} degraded: ${removed} segments lost their copy on container ${c}`);
        }
      }
      // Leg faults that joined after their vdisk's change committed.
      for (const key of r.dirty) {
        const i = key.lastIndexOf(':');
        db.markDirty(key.slice(0, i), Number(key.slice(i + 1)));
      }
      log.info(`container ${c}: legs removed from ${changed} vdisks; answering ${r.waiting.length} leg faults RETRY`);
      this.#answerAll(r, { kind: 'retry' });
    } catch (err) {
      log.error(`removing the legs of failed container ${c} failed: ${(err as Error).message}`);
      this.#answerAll(r, { kind: 'fail', reason: (err as Error).message });
    } finally {
      if (this.#removals.get(c) === r) this.#removals.delete(c);
    }
    if (r.resyncAfter && !host.closed) this.containerReachable(c);
  }

  #answerAll(r: Removal, a: LegAnswer): void {
    for (const w of r.waiting.splice(0)) {
      try {
        w.answer(a);
      } catch (err) {
        log.warn(`leg fault ${w.fault.faultId}: answer failed: ${(err as Error).message}`);
      }
    }
  }

  /** Inside the vdisk's change: every mirrored segment loses its leg on `c`. Returns how many. */
  #removeLegs(ctx: ChangeContext, vdiskId: string, c: string, dirty: ReadonlySet<string>): number {
    const db = this.#host.db;
    // The cached table is the committed state here (the change is not applied yet):
    // a scan with no allocation finds the segments with a leg on `c`.
    const table = this.#host.tables.table(vdiskId);
    const slot = table.containers.indexOf(c);
    if (slot < 0 || table.maxLegs < 2) return 0;
    const since = new Date().toISOString();
    let removed = 0;
    for (let seg = 0; seg < table.segmentCount; seg++) {
      const n = table.legCountOf(seg);
      if (n < 2) continue;
      let hit = false;
      for (let l = 0; l < n && !hit; l++) hit = table.legSlotOf(seg, l) === slot;
      if (!hit) continue;
      const legs = db.locationsOfSegment(vdiskId, seg);
      const lost = legs.find((l) => l.containerId === c);
      const rest = legs.filter((l) => l.containerId !== c);
      const primary = rest[0];
      if (lost === undefined || primary === undefined) continue;
      const row = db.segment(vdiskId, seg);
      const isDirty = dirty.has(segKey(vdiskId, seg));
      // Not dirty: its next write must fault once, so that make-writable marks it dirty.
      const state = row.state === SegmentState.Normal && !isDirty ? SegmentState.NoWrite : row.state;
      // The stale leg takes a reference first, so the entry dropping the leg releases nothing.
      db.addStaleLeg({ vdiskId, seg, containerId: c, offset: lost.offset, dirty: isDirty, since });
      ctx.set(seg, state, primary, rest.slice(1));
      removed++;
    }
    return removed;
  }

  // ---- resync ----

  async #resync(run: Resync): Promise<void> {
    const host = this.#host;
    const db = host.db;
    const c = run.containerId;
    const stale = db.staleLegs({ containerId: c });
    if (stale.length === 0) {
      this.#online(c, 0);
      return;
    }
    const byVdisk = groupByVdisk(stale);
    for (const [vdiskId, legs] of byVdisk) {
      const dirty = legs.filter((s) => s.dirty).length;
      run.progress.set(vdiskId, { done: 0, total: dirty, bytes: 0 });
    }
    const dirtyCount = stale.filter((s) => s.dirty).length;
    db.event('container-resync', c, `started: ${stale.length - dirtyCount} clean and ${dirtyCount} dirty stale legs in ${byVdisk.size} vdisks`);
    log.info(`resync of container ${c}: ${stale.length - dirtyCount} clean legs to re-add, ${dirtyCount} dirty segments to copy`);
    let bytes = 0;
    let idle = 0;
    for (;;) {
      if (run.cancel || host.closed) return;
      let progress = 0;
      // Clean legs first: one change per vdisk.
      for (const vdiskId of new Set(db.staleLegs({ containerId: c }).map((s) => s.vdiskId))) {
        if (run.cancel || host.closed) return;
        let added = 0;
        await host.tables.changeTable(vdiskId, (ctx) => {
          added = this.#readdClean(ctx, vdiskId, c);
        });
        progress += added;
      }
      // Dirty ones, a few segments at a time, each on its own.
      const dirty = db.staleLegs({ containerId: c }).filter((s) => s.dirty);
      const outcomes = await pool(dirty, RESYNC_CONCURRENCY, async (s) => {
        if (run.cancel || host.closed) return 'later' as Outcome;
        const o = await this.#resyncSegment(s);
        if (o === 'copied') {
          const vdisk = db.vdisk(s.vdiskId);
          const size = vdisk?.segmentSize ?? 0;
          bytes += size;
          this.#bytes += size;
          this.observer?.resyncBytes(size);
          const p = run.progress.get(s.vdiskId) ?? { done: 0, total: 0, bytes: 0 };
          p.done++;
          p.bytes += size;
          p.total = Math.max(p.total, p.done);
          run.progress.set(s.vdiskId, p);
        }
        return o;
      });
      if (run.cancel || host.closed) return;
      progress += outcomes.filter((o) => o === 'copied' || o === 'skipped').length;
      const failed = outcomes.filter((o) => o === 'failed').length;
      if (failed > 0) {
        const why = `${failed} segment copies failed; the container stays failed`;
        db.event('container-resync', c, `stopped: ${why}`);
        log.error(`resync of container ${c} stopped: ${why}`);
        return;
      }
      if (db.staleLegs({ containerId: c }).length === 0) {
        this.#online(c, bytes);
        return;
      }
      idle = progress > 0 ? 0 : idle + 1;
      if (idle >= RESYNC_MAX_IDLE_PASSES) {
        const why = `stale legs left that cannot be resynced now (no agent reaching both, an exporter away, or not a located segment)`;
        db.event('container-resync', c, `paused: ${why}`);
        log.warn(`resync of container ${c} paused: ${why}; it stays failed`);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, RESYNC_RETRY_MS));
    }
  }

  #online(c: string, bytes: number): void {
    const db = this.#host.db;
    if (db.container(c)?.state === 'failed') db.setContainerState(c, 'online');
    db.event('container-online', c, `resynced (${bytes} bytes copied)`);
    log.info(`container ${c} resynced and online again (${bytes} bytes copied)`);
  }

  /** Inside the vdisk's change: clean stale legs on `c` become legs again. Returns how many. */
  #readdClean(ctx: ChangeContext, vdiskId: string, c: string): number {
    const host = this.#host;
    const db = host.db;
    const vdisk = ctx.vdisk;
    let added = 0;
    // Read inside the transaction: a make-writable that committed first marked its segment dirty.
    for (const s of db.staleLegs({ vdiskId, containerId: c })) {
      if (s.dirty) continue;
      const row = db.segment(vdiskId, s.seg);
      const legs = db.locationsOfSegment(vdiskId, s.seg);
      const primary = legs[0];
      if (primary === undefined || legs.some((l) => l.containerId === c) || legs.length >= vdisk.copies) {
        // Nothing to add it to, or the segment has its copies again (rebuilt meanwhile).
        db.dropStaleLeg(vdiskId, s.seg, c, ctx.version);
        continue;
      }
      if (row.state === SegmentState.Normal) {
        // Written without being marked (should not happen): copy it rather than trust it.
        db.markDirty(vdiskId, s.seg);
        continue;
      }
      if (row.state !== SegmentState.NoWrite) continue;
      const key = locKey(primary);
      if (host.migrating.has(key)) continue;
      // No-write only for tracking (the location is this entry's alone) goes back to normal.
      const state = vdisk.kind === 'vdisk' && db.refcount(primary) === 1 ? SegmentState.Normal : SegmentState.NoWrite;
      // Back from stale: the entry takes over the stale leg's row and reference (db.setSegment).
      ctx.set(s.seg, state, primary, [...legs.slice(1), { containerId: c, offset: s.offset }]);
      added++;
    }
    return added;
  }

  /** One dirty stale leg: freeze, copy a healthy leg onto it, add it back. */
  async #resyncSegment(s: StaleLeg): Promise<Outcome> {
    const host = this.#host;
    const db = host.db;
    const c = s.containerId;
    const vdisk = db.vdisk(s.vdiskId);
    if (vdisk === undefined) return 'skipped';
    const what = `resync of vdisk ${vdisk.name} segment ${s.seg} onto container ${c}`;
    const legs = db.locationsOfSegment(s.vdiskId, s.seg);
    const src = legs[0];
    if (src === undefined) return 'later';
    const key = locKey(src);
    const dstKey = locKey({ containerId: c, offset: s.offset });
    if (host.migrating.has(key) || this.#overdue.has(dstKey)) return 'later';
    const agent = host.commands.copyAgent([src.containerId, c]);
    if (agent === null) return 'later';
    const same = (l: Location | undefined): boolean => l !== undefined && l.containerId === src.containerId && l.offset === src.offset;
    const stillStale = (): boolean => this.#staleRow(s.vdiskId, s.seg, c) !== undefined;
    host.migrating.add(key);
    try {
      // Freeze: reads go on, writes fault and WAIT (the location is in `migrating`).
      let frozenAt = db.vdisk(s.vdiskId)?.version ?? 0;
      const r = await host.tables.changeTable(s.vdiskId, (ctx) => {
        const row = db.segment(s.vdiskId, s.seg);
        if (row.state === SegmentState.Normal && same(db.locationsOfSegment(s.vdiskId, s.seg)[0]) && stillStale()) ctx.set(s.seg, SegmentState.NoWrite, src);
      });
      if (r !== null) frozenAt = r.version;
      const frozen = db.segment(s.vdiskId, s.seg);
      if (frozen.state !== SegmentState.NoWrite || !same(db.locationsOfSegment(s.vdiskId, s.seg)[0]) || !stillStale()) return 'skipped';
      // An exporter that has not acked the frozen table (offline within its lease) might still write the old legs.
      const lag = await frozenEverywhere(host, vdisk, frozenAt);
      if (lag !== null) {
        log.debug(`${what}: ${lag}`);
        return 'later';
      }
      log.debug(`${what}: agent ${agent} copies ${src.containerId}@${src.offset}`);
      const copied = await copySegmentData(host, agent, vdisk, src, { containerId: c, offset: s.offset });
      if (host.closed) return 'later';
      if (copied.kind !== 'copied') {
        log.warn(`${what}: ${copied.reason}`);
        if (copied.kind === 'failed') return 'failed'; // the container (or the source) is still bad
        // A late copy would overwrite whatever a later one wrote there.
        if (copied.overdue) this.#overdue.add(dstKey);
        return 'later';
      }
      let readded = false;
      await host.tables.changeTable(s.vdiskId, (ctx) => {
        const row = db.segment(s.vdiskId, s.seg);
        const now = db.locationsOfSegment(s.vdiskId, s.seg);
        if (row.state !== SegmentState.NoWrite || !same(now[0]) || now.some((l) => l.containerId === c) || !stillStale()) return;
        if (now.length >= vdisk.copies) {
          db.dropStaleLeg(s.vdiskId, s.seg, c, ctx.version);
          return;
        }
        const state = vdisk.kind === 'vdisk' && db.refcount(src) === 1 ? SegmentState.Normal : SegmentState.NoWrite;
        ctx.set(s.seg, state, src, [...now.slice(1), { containerId: c, offset: s.offset }]);
        readded = true;
      });
      return readded ? 'copied' : 'skipped';
    } finally {
      host.migrating.delete(key);
      // Writes held on the location look again.
      if (!host.closed) this.#released(s.vdiskId);
    }
  }

  #staleRow(vdiskId: string, seg: number, c: string): StaleLeg | undefined {
    return this.#host.db.staleLeg(vdiskId, seg, c);
  }
}

function groupByVdisk(stale: readonly StaleLeg[]): Map<string, StaleLeg[]> {
  const out = new Map<string, StaleLeg[]>();
  for (const s of stale) {
    const list = out.get(s.vdiskId);
    if (list === undefined) out.set(s.vdiskId, [s]);
    else list.push(s);
  }
  return out;
}

/** Runs `fn` over `items`, at most `n` at once; outcomes in order. */
async function pool<T, R>(items: readonly T[], n: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
  return out;
}
