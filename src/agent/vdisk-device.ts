// The agent's table-driven block device: a vdisk's logical blocks translated
// through its MappingTable to container I/O. Each I/O is split at segment
// boundaries and every piece follows its segment's state (inhibits() in
// src/table): container I/O, zeros, a fault held until the controller
// answers, or a failure. Table versions are installed the device-mapper way,
// per changed segment: new I/O to those segments waits, I/O already in flight
// on them drains, the table is swapped, and the held I/O resumes; I/O to
// other segments never stops. No data is cached here (docs/architecture.md,
// "What the I/O path guarantees"):
// every read goes to the container.
//
// A vdisk exported on several agents is one device: a segment may have a
// write owner (an agent, in the table); writes here to a segment another
// agent owns fault, and so does COMPARE AND WRITE to an unowned one, so the
// controller moves ownership first. COMPARE AND WRITE runs as one piece,
// read, compare and write counted in flight together, so an ownership
// change cannot be acked between its read and its write.
//
// A mirrored segment has several legs (copies, src/table): writes go to
// every leg in parallel and complete once all have it; a read goes to one
// leg (a near one first) and fails over to the next. A leg that fails while
// another succeeded is a leg fault (Fault.failedContainer): a write is held
// as for any fault until the controller has dropped the leg; a read that
// another leg served reports it and goes on. Every leg failing is what one
// copy failing is.
import { BlockDeviceError, type BlockDevice, type BlockErrorKind, type ProvisioningStatus, type WriteOptions } from '../blockdev/block-device.js';
import { INLINE_MAX_BYTES } from '../blockdev/inline-policy.js';
import { readBuffer } from '../blockdev/read-buffers.js';
import { ContainerIoError, type ContainerDriver, type ContainerResolver, type ContainerWriteOptions } from '../container/driver.js';
import { TransportError } from '../iscsi/initiator/transport.js';
import { checkExtents } from '../table/extents.js';
import { VersionGapError, applyCheckedDelta, type TableDelta } from '../table/delta.js';
import type { MappingTable } from '../table/mapping-table.js';
import { IoOp, SegmentState, inhibits, ioOpName, segmentStateName } from '../table/segment-state.js';
import { debugEnabled, log } from '../util/log.js';
import type { LazyVersions, SyncOutcome } from './durable-sync.js';
import { ReleaseLostError, VdiskIoError, type Fault, type FaultDecision, type FaultSink, type Lease, type ReleaseResult, type SenseCode } from './fault.js';
import { SegmentGate, type SegmentRange } from './segment-gate.js';

/**
 * What a device may learn about containers beyond their drivers (the agent's
 * AgentContainers provides both): it steers mirrored reads. Without them
 * every container counts as far and reachable.
 */
export interface LegHints {
  /** In this agent's failure domain (ContainerShare.near). */
  near?(id: string): boolean;
  /** Able to do I/O now; a read skips legs that are not rather than wait out the driver's hold. */
  reachable?(id: string): boolean;
}

export const DEFAULT_HOLD_TIMEOUT_MS = 10_000;

export interface VdiskDeviceOptions {
  /** Vdisk UUID: named in faults and releases. */
  vdiskId: string;
  /** The first table. The device owns it from now on (deltas apply to it in place). */
  table: MappingTable;
  containers: ContainerResolver & LegHints;
  faults: FaultSink;
  /** How long an I/O may be held (fault unanswered, table install) before it fails NOT READY. */
  holdTimeoutMs?: number;
  /** Exported read-only: every write fails with DATA PROTECT. */
  readOnly?: boolean;
  /** The controller's lease: while expired, zero and no-write segments are held. None: always served. */
  lease?: Lease;
  /** Agents exporting the vdisk (one per Export.port_groups entry); above 1, COMPARE AND WRITE needs write ownership. */
  exporters?: number;
  /** This agent's number as the table's owners name it (Export.own_port_group, its agent number); 0: none. */
  ownerId?: number;
  /**
   * The vdisk's table versions that came lazy (thin allocations not yet
   * durable at the controller): SYNCHRONIZE CACHE and FUA writes wait for
   * them to be durable. None: every version counts as durable.
   */
  lazyVersions?: LazyVersions;
}

/** What a piece does to its blocks. Zero and Discard make them read as zeros. */
const enum Mode {
  Read = 0,
  Write = 1,
  /** Write zeros, keep the space allocated (WRITE SAME without UNMAP). */
  Zero = 2,
  /** Deallocate in the container where it can (UNMAP, WRITE SAME with UNMAP). */
  Discard = 3,
  /** Read, compare with CawPiece.verify, and write only when equal: one piece. */
  Caw = 4,
}

/** A COMPARE AND WRITE piece's verify half and its outcome. */
interface CawPiece {
  readonly verify: Buffer;
  /** Byte offset of the first difference, or -1 once written. */
  result: number;
}

/** The leg of a mirrored piece named in its held leg fault. */
interface LegFailure {
  container: string;
  detail: string;
}

/** A leg whose container has no driver here: fails like an I/O error on it. */
class NoDriverError extends Error {}

/** Mirrored segments recorded as written since the last flush, at most (per set; see #unflushed). */
export const MAX_UNFLUSHED = 4096;

/** #legUse: no segment uses the container; it is only ever a segment's one copy. */
const NOT_USED = -2;
const SOLE_COPY = -1;

/** #ownership's answer when the piece must wait for the lease (the controller may move this agent's ownership). */
const LEASE_HOLD = 1;

const TIMEOUT = Symbol('timeout');
const UNDELIVERED = Symbol('undelivered');
const LOST = Symbol('lost');
const FUA: ContainerWriteOptions = { fua: true };

export class VdiskDevice implements BlockDevice {
  readonly thin = true;
  readonly vdiskId: string;
  readonly blockSize: number;
  readonly readOnly: boolean;
  readonly holdTimeoutMs: number;

  #table: MappingTable;
  readonly #blocksPerSegment: number;
  readonly #containers: ContainerResolver & LegHints;
  readonly #faults: FaultSink;
  readonly #gate: SegmentGate;
  /** Drivers by the current table's slot, resolved on first use. */
  #drivers: (ContainerDriver | undefined)[] = [];
  /** Containers written since the last flush (they may not be in the current table any more). */
  readonly #dirty = new Set<ContainerDriver>();
  /** Held pieces waiting for the next table swap. */
  readonly #wakers = new Set<() => void>();
  /** Held pieces waiting for an answer; close() ends their wait. */
  readonly #cancels = new Set<() => void>();
  #installs: Promise<void> = Promise.resolve();
  /** Installs queued or running in #installs: applyDeltaNow steps aside for them. */
  #installing = 0;
  #fenced = false;
  #closed = false;
  /** A table with extra legs was installed once: flush failures are looked at as leg failures. */
  #mirrored = false;
  /**
   * Mirrored segments written (without FUA) since the last flush started:
   * not known durable on every leg. When a leg fails, the controller hears
   * of them (#reportUnflushed), so that a copy which lost its write cache
   * is not taken back without a resync of them. Null until mirrored.
   */
  #unflushed: Set<number> | null = null;
  /** The #unflushed sets that flushes in progress took. */
  readonly #flushing = new Set<Set<number>>();
  /** #unflushed sets that reached MAX_UNFLUSHED (an initiator that does not flush): some segments went unrecorded. */
  readonly #overflowed = new WeakSet<Set<number>>();
  /** Containers whose unflushed segments were reported, with the table swap count then: once per container and table. */
  readonly #unflushedReported = new Map<string, number>();
  /** Table swaps so far: #legUse's answers hold until the next. */
  #swaps = 0;
  /** #legUse's answers by container, with the swap count they were found at. */
  readonly #legUses = new Map<string, { swaps: number; use: number }>();
  #held = 0;
  #exporters: number;
  #ownerId: number;
  readonly #lease: Lease | undefined;
  readonly #unsubscribeLease: (() => void) | undefined;
  readonly #lazy: LazyVersions | undefined;

  constructor(opts: VdiskDeviceOptions) {
    this.vdiskId = opts.vdiskId;
    this.#table = opts.table;
    this.#mirrored = opts.table.maxLegs > 1;
    if (this.#mirrored) this.#unflushed = new Set();
    this.blockSize = opts.table.blockSize;
    this.#blocksPerSegment = opts.table.blocksPerSegment;
    this.#containers = opts.containers;
    this.#faults = opts.faults;
    this.holdTimeoutMs = opts.holdTimeoutMs ?? DEFAULT_HOLD_TIMEOUT_MS;
    this.readOnly = opts.readOnly ?? false;
    this.#gate = new SegmentGate(opts.table.segmentCount);
    this.#lease = opts.lease;
    this.#exporters = opts.exporters ?? 1;
    this.#ownerId = opts.ownerId ?? 0;
    this.#lazy = opts.lazyVersions;
    // Pieces held for the lease wait like those held for a table swap.
    this.#unsubscribeLease = opts.lease?.onRenewed(() => this.#broadcastSwap());
  }

  get blockCount(): number {
    return this.#table.blockCount;
  }

  /** The installed table. Read it; never change it (the device applies deltas to it in place). */
  get table(): MappingTable {
    return this.#table;
  }

  get version(): number {
    return this.#table.version;
  }

  /** I/O pieces currently held (fault unanswered, waiting for a table): Heartbeat.held_ios. */
  get heldCount(): number {
    return this.#held;
  }

  get fenced(): boolean {
    return this.#fenced;
  }

  /** The export changed: how many agents export the vdisk, and this agent's owner number. */
  setSharing(exporters: number, ownerId: number): void {
    this.#exporters = exporters;
    this.#ownerId = ownerId;
  }

  get exporters(): number {
    return this.#exporters;
  }

  // ---- BlockDevice ----

  async read(lba: number, blocks: number): Promise<Buffer> {
    this.#checkRange(IoOp.Read, lba, blocks);
    const buf = readBuffer(blocks * this.blockSize);
    if (blocks > 0) await this.#run(Mode.Read, IoOp.Read, lba, blocks, buf, false);
    return buf;
  }

  async write(lba: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    if (data.length % this.blockSize !== 0) {
      throw new RangeError(`WRITE lba=${lba} on ${this.#name()}: ${data.length} bytes is not a whole number of ${this.blockSize}-byte blocks`);
    }
    const blocks = data.length / this.blockSize;
    this.#checkWritable(IoOp.Write, lba, blocks);
    if (opts?.fua !== true) {
      if (blocks > 0) await this.#run(Mode.Write, IoOp.Write, lba, blocks, data, false);
      return;
    }
    const since = this.#lazy?.epoch ?? 0;
    if (blocks > 0) await this.#run(Mode.Write, IoOp.Write, lba, blocks, data, true);
    if (this.#lazy !== undefined && this.#lazy.due(this.#table.version, since) !== 0) await this.#durable(IoOp.Write, lba, blocks, since);
  }

  /**
   * read() in this turn when nothing can make it wait: one segment, no
   * install on it, a state that reads (or reads as zeros) on one copy, and a
   * container driver that reads inline now. Otherwise undefined, with
   * nothing done: read() takes the general path (holds, faults, legs).
   */
  readNow(lba: number, blocks: number): Buffer | undefined {
    this.#checkRange(IoOp.Read, lba, blocks);
    const len = blocks * this.blockSize;
    if (blocks === 0 || len > INLINE_MAX_BYTES) return undefined;
    const seg = Math.floor(lba / this.#blocksPerSegment);
    const t = this.#table;
    const driver = this.#driverNow(t, seg, lba, blocks, IoOp.Read);
    if (driver === null) {
      // zero-read
      return readBuffer(len).fill(0);
    }
    if (driver === undefined || driver.readIntoNow === undefined) return undefined;
    const buf = readBuffer(len);
    try {
      if (!driver.readIntoNow(this.#offsetOf(t, seg, lba), buf, 0, len)) return undefined;
    } catch (e) {
      throw this.#ioFailed(t, Mode.Read, IoOp.Read, seg, lba, blocks, e);
    }
    return buf;
  }

  /**
   * A buffered (not FUA) write() in this turn when nothing can make it
   * wait, as for readNow, and the segment is this agent's to write: true
   * once written; false with nothing done (write() takes the general path).
   */
  writeNow(lba: number, data: Buffer, opts?: WriteOptions): boolean {
    if (opts?.fua === true || data.length % this.blockSize !== 0 || data.length > INLINE_MAX_BYTES) return false;
    const blocks = data.length / this.blockSize;
    this.#checkWritable(IoOp.Write, lba, blocks);
    if (blocks === 0) return false;
    const seg = Math.floor(lba / this.#blocksPerSegment);
    const t = this.#table;
    const driver = this.#driverNow(t, seg, lba, blocks, IoOp.Write);
    if (driver === null || driver === undefined || driver.writeNow === undefined) return false;
    if (this.#ownership(t, seg, IoOp.Write) !== null) return false;
    try {
      if (!driver.writeNow(this.#offsetOf(t, seg, lba), data)) return false;
    } catch (e) {
      throw this.#ioFailed(t, Mode.Write, IoOp.Write, seg, lba, blocks, e);
    }
    this.#dirty.add(driver);
    return true;
  }

  /**
   * For readNow/writeNow: the driver of a one-segment, one-copy piece that
   * may proceed now; null when it reads as zeros; undefined when the general
   * path must decide (held, faulted, failed, mirrored, several segments).
   * Mirrors #piece's checks, without effects.
   */
  #driverNow(t: MappingTable, seg: number, lba: number, blocks: number, op: IoOp): ContainerDriver | null | undefined {
    if (this.#closed || this.#fenced || Math.floor((lba + blocks - 1) / this.#blocksPerSegment) !== seg) return undefined;
    if (seg >= t.segmentCount || this.#gate.isSuspended(seg)) return undefined;
    const state = t.stateOf(seg);
    if ((state === SegmentState.Zero || state === SegmentState.NoWrite) && this.#lease?.expired === true) return undefined;
    const action = inhibits(state, op);
    if (action === 'zero-read') return null;
    if (action !== 'proceed' || (t.maxLegs !== 1 && t.legCountOf(seg) >= 2)) return undefined;
    return this.#legDriver(t, t.slotOf(seg));
  }

  #offsetOf(t: MappingTable, seg: number, lba: number): number {
    return t.containerOffsetOf(seg) * t.segmentSize + (lba - seg * this.#blocksPerSegment) * this.blockSize;
  }

  /**
   * Flushes every container the vdisk uses now, and any it wrote to under an
   * older table. On a mirrored vdisk a container whose flush fails is a
   * failed leg (#flushFailed).
   */
  async flush(): Promise<void> {
    // What it vouches for: the writes completed before now (durable-sync.ts, orphans).
    const received = this.#lazy?.epoch ?? 0;
    const drivers = new Set(this.#dirty);
    this.#dirty.clear();
    for (const id of this.#table.containers) {
      const d = this.#containers.get(id);
      if (d !== undefined) drivers.add(d);
    }
    if (this.#mirrored && this.#containers.reachable !== undefined) {
      // A container that is away and that no segment uses any more (its
      // legs were dropped): nothing there matters, and asking it would wait
      // out its driver's hold on every SYNCHRONIZE CACHE.
      for (const d of drivers) if (!this.#containers.reachable(d.id) && this.#legUse(d.id) === NOT_USED) drivers.delete(d);
    }
    // Segments written before this point are durable once this flush succeeds.
    const pending = this.#unflushed;
    if (pending !== null) {
      this.#unflushed = new Set();
      this.#flushing.add(pending);
    }
    const failed: string[] = [];
    let media = false;
    await Promise.all(
      [...drivers].map((d) =>
        d.flush().catch(async (e: unknown) => {
          if (this.#mirrored && (await this.#flushFailed(d, e))) return;
          this.#dirty.add(d);
          failed.push((e as Error).message);
          if (!isUnreachable(e)) media = true;
        }),
      ),
    );
    if (pending !== null) {
      this.#flushing.delete(pending);
      if (failed.length > 0) {
        if (this.#overflowed.has(pending)) this.#overflowed.add(this.#unflushed as Set<number>);
        for (const seg of pending) this.#noteUnflushed(seg);
      }
    }
    if (failed.length > 0) {
      // Only containers that are away: retryable, the writes are still there to flush.
      const kind: BlockErrorKind = media ? 'write-error' : 'unreachable';
      throw new VdiskIoError(kind, `SYNCHRONIZE CACHE on ${this.#name()}: ${failed.join('; ')}`, undefined, this.vdiskId, -1);
    }
    if (this.#lazy !== undefined && this.#lazy.due(this.#table.version) !== 0) await this.#durable(null, 0, 0, received);
  }

  /**
   * A SYNCHRONIZE CACHE or FUA write whose data is durable: the table it ran
   * under may hold thin allocations the controller committed lazily (not yet
   * durable against its power loss). Completes once the controller says they
   * are (docs/architecture.md, "Durability of thin allocations"); concurrent
   * callers share one request. Unanswered within the hold timeout: NOT READY
   * (retryable, like a held fault). The controller lost the version: WRITE
   * ERROR, the data written through it is gone. `received`: the flush epoch
   * (LazyVersions.epoch) when the SYNCHRONIZE CACHE or FUA write came.
   */
  async #durable(op: IoOp | null, lba: number, blocks: number, received: number): Promise<void> {
    const lazy = this.#lazy as LazyVersions;
    // Writes completed before this point ran under this version or an older one.
    const installed = this.#table.version;
    const deadline = Date.now() + this.holdTimeoutMs;
    const what = op === null ? `SYNCHRONIZE CACHE on ${this.#name()}` : `${ioOpName(op).toUpperCase()} lba=${lba} len=${blocks} (FUA) on ${this.#name()}`;
    const at = op === null ? undefined : lba;
    const fuaSince = op === null ? -1 : received;
    for (let version = lazy.due(installed, fuaSince); version !== 0; version = lazy.due(installed, fuaSince)) {
      const w = lazy.wait(version, false, op === null ? received : null);
      let r: SyncOutcome | typeof TIMEOUT;
      try {
        r = await this.#hold(this.#race(w.outcome, deadline));
      } finally {
        w.leave();
      }
      if (r === TIMEOUT) {
        const why = this.#closed ? 'device closed' : `held ${this.holdTimeoutMs} ms`;
        throw new VdiskIoError('not-ready', `${what}: ${why} waiting for table version ${version} to be durable at the controller`, at, this.vdiskId, -1);
      }
      if (r.kind === 'unanswered') {
        throw new VdiskIoError('not-ready', `${what}: table version ${version} not known durable at the controller: ${r.reason}`, at, this.vdiskId, -1);
      }
      if (r.kind === 'lost') {
        throw new VdiskIoError('write-error', `${what}: table version ${version} lost by the controller (${r.reason}): data written through its allocations is gone`, at, this.vdiskId, -1);
      }
    }
  }

  unmap(lba: number, blocks: number): Promise<void> {
    return this.writeZeroes(lba, blocks, true);
  }

  /**
   * Whole segments in state normal are released to the controller (with
   * deallocate), which returns them to zero; everything else is zeroed in
   * place so LBPRZ holds. Zero segments already read as zeros: nothing to do,
   * no fault.
   */
  async writeZeroes(lba: number, blocks: number, deallocate: boolean): Promise<void> {
    const op = deallocate ? IoOp.Unmap : IoOp.WriteSame;
    this.#checkWritable(op, lba, blocks);
    if (blocks === 0) return;
    const t = this.#table;
    const bps = this.#blocksPerSegment;
    const mode = deallocate ? Mode.Discard : Mode.Zero;
    const canRelease = deallocate && this.#faults.release !== undefined && !this.#fenced;
    const tasks: Promise<void>[] = [];
    let runFirst = -1;
    let runCount = 0;
    t.forEachPiece(lba, blocks, (seg, l, b) => {
      if (canRelease && b === bps && !this.#gate.isSuspended(seg) && t.stateOf(seg) === SegmentState.Normal) {
        if (runCount > 0 && runFirst + runCount === seg) {
          runCount++;
        } else {
          if (runCount > 0) tasks.push(this.#release(runFirst, runCount));
          runFirst = seg;
          runCount = 1;
        }
        return;
      }
      tasks.push(this.#piece(mode, op, seg, l, b, null, 0, false));
    });
    if (runCount > 0) tasks.push(this.#release(runFirst, runCount));
    await settleAll(tasks);
  }

  /**
   * COMPARE AND WRITE: one piece per segment, evaluated against one table
   * version and counted in flight from its read to its write. Returns the
   * byte offset of the first difference, or -1 when it wrote. A range across
   * segments (never an ATS lock, which is one block) reads, compares and
   * writes piece by piece, atomic only within the LU's own exclusion.
   */
  async compareAndWrite(lba: number, verify: Buffer, data: Buffer, opts?: WriteOptions): Promise<number> {
    const bs = this.blockSize;
    if (verify.length !== data.length || data.length % bs !== 0) {
      throw new RangeError(`COMPARE AND WRITE lba=${lba} on ${this.#name()}: ${verify.length} bytes to verify, ${data.length} to write (must be equal whole blocks)`);
    }
    const blocks = data.length / bs;
    this.#checkWritable(IoOp.CompareAndWrite, lba, blocks);
    if (blocks === 0) return -1;
    const fua = opts?.fua === true;
    const since = fua ? (this.#lazy?.epoch ?? 0) : 0;
    const seg = Math.floor(lba / this.#blocksPerSegment);
    if (Math.floor((lba + blocks - 1) / this.#blocksPerSegment) === seg) {
      const caw: CawPiece = { verify, result: -1 };
      await this.#piece(Mode.Caw, IoOp.CompareAndWrite, seg, lba, blocks, data, 0, fua, caw);
      if (fua && caw.result < 0 && this.#lazy !== undefined && this.#lazy.due(this.#table.version, since) !== 0) await this.#durable(IoOp.CompareAndWrite, lba, blocks, since);
      return caw.result;
    }
    const stored = readBuffer(data.length);
    await this.#run(Mode.Read, IoOp.Read, lba, blocks, stored, false);
    if (!stored.equals(verify)) {
      for (let i = 0; i < stored.length; i++) if (stored[i] !== verify[i]) return i;
    }
    await this.#run(Mode.Write, IoOp.CompareAndWrite, lba, blocks, data, fua);
    if (fua && this.#lazy !== undefined && this.#lazy.due(this.#table.version, since) !== 0) await this.#durable(IoOp.CompareAndWrite, lba, blocks, since);
    return -1;
  }

  /** Zero segments are deallocated; every other state counts as mapped. */
  async provisioning(lba: number, maxBlocks: number): Promise<ProvisioningStatus> {
    const t = this.#table;
    if (!Number.isSafeInteger(lba) || lba < 0 || lba >= t.blockCount) {
      throw new BlockDeviceError('out-of-range', `GET LBA STATUS lba=${lba} on ${this.#name()}: beyond the last block ${t.blockCount - 1}`, lba);
    }
    const limit = Math.min(t.blockCount, lba + Math.max(1, maxBlocks));
    let seg = Math.floor(lba / this.#blocksPerSegment);
    const mapped = t.stateOf(seg) !== SegmentState.Zero;
    let end = (seg + 1) * this.#blocksPerSegment;
    while (end < limit && (t.stateOf(seg + 1) !== SegmentState.Zero) === mapped) {
      seg++;
      end += this.#blocksPerSegment;
    }
    return { mapped, blocks: Math.min(end, limit) - lba };
  }

  /** Fails held I/O (NOT READY) and refuses new I/O. Containers belong to the resolver and stay open. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#unsubscribeLease?.();
    const cancels = [...this.#cancels];
    this.#cancels.clear();
    for (const c of cancels) c();
    this.#broadcastSwap();
  }

  // ---- table installation ----

  /**
   * Installs a whole table (first load after a gap, or after a fence). `next`
   * must have the same geometry and a newer version (the same version only
   * to lift a fence); the device owns it afterwards. Resolves once every I/O
   * started under the old table on the changed segments has completed: then
   * the agent may ack `next.version`.
   */
  installTable(next: MappingTable): Promise<void> {
    return this.#serialize(async () => {
      const cur = this.#table;
      if (next.segmentSize !== cur.segmentSize || next.blockSize !== cur.blockSize) {
        throw new RangeError(
          `${this.#name()}: table version ${next.version} has segment size ${next.segmentSize}, block size ${next.blockSize}; ` +
            `the vdisk has ${cur.segmentSize}, ${cur.blockSize}`,
        );
      }
      if (next.version < cur.version || (next.version === cur.version && !this.#fenced && !cur.equals(next))) {
        throw new RangeError(`${this.#name()}: table version ${next.version} is not newer than installed version ${cur.version}`);
      }
      if (next.version === cur.version && !this.#fenced) return;
      let ranges: SegmentRange[];
      if (this.#fenced) {
        // Every segment already acts as invalid (new I/O is held by the
        // fence: a first install over the placeholder, a resync): suspend
        // the whole device rather than diff 16 M segments on the event loop.
        ranges = [{ first: 0, count: Math.max(cur.segmentCount, next.segmentCount) }];
      } else {
        ranges = next.version > cur.version ? next.changedRuns(cur).map(([a, b]) => ({ first: a, count: b - a })) : changedRanges(cur, next);
        if (next.segmentCount < cur.segmentCount) ranges.push({ first: next.segmentCount, count: cur.segmentCount - next.segmentCount });
      }
      await this.#swap(ranges, next.segmentCount, () => {
        this.#table = next;
        this.#fenced = false;
      });
    });
  }

  /**
   * Applies a delta: the same drain-and-swap, for the segments it changes.
   * Rejects with VersionGapError unless the installed table is at
   * `delta.fromVersion` (the agent then asks for the whole table), and with
   * RangeError for a malformed delta, before holding any I/O.
   */
  applyDelta(delta: TableDelta): Promise<void> {
    return this.#serialize(async () => {
      const cur = this.#table;
      const ranges = this.#deltaRanges(delta);
      await this.#swap(ranges, delta.segmentCount, () => {
        applyCheckedDelta(cur, delta);
      });
    });
  }

  /**
   * Applies a delta at once, without a promise turn, when nothing stands in
   * its way: no install queued or running, and no I/O in flight on the
   * segments it changes (nothing started under an older version can then
   * complete after the caller's ack, and none can enter meanwhile). False,
   * with nothing changed, when something does: the caller uses applyDelta,
   * which drains. Throws what applyDelta rejects with.
   */
  applyDeltaNow(delta: TableDelta): boolean {
    if (this.#installing > 0) return false;
    const cur = this.#table;
    const ranges = this.#deltaRanges(delta);
    const gate = this.#gate;
    if (!gate.idle(ranges)) return false;
    gate.ensure(Math.max(delta.segmentCount, cur.segmentCount));
    try {
      applyCheckedDelta(cur, delta);
      this.#swapped();
    } finally {
      this.#drivers = [];
      this.#broadcastSwap();
    }
    if (debugEnabled()) log.debug(`${this.#name()}: table version ${cur.version} installed`, { vdisk: this.vdiskId, changedRanges: ranges.length });
    return true;
  }

  /** A delta's checks (before any I/O is held) and the segments it changes. */
  #deltaRanges(delta: TableDelta): SegmentRange[] {
    const cur = this.#table;
    if (delta.fromVersion !== cur.version) {
      throw new VersionGapError(cur.version, delta.fromVersion, delta.toVersion, cur.name || this.vdiskId);
    }
    if (!Number.isSafeInteger(delta.toVersion) || delta.toVersion <= delta.fromVersion) {
      throw new RangeError(`${this.#name()}: delta ${delta.fromVersion}->${delta.toVersion}: the target version must be newer`);
    }
    if (!Number.isInteger(delta.segmentCount) || delta.segmentCount < 0) {
      throw new RangeError(`${this.#name()}: delta ${delta.fromVersion}->${delta.toVersion}: segment count ${delta.segmentCount} invalid`);
    }
    checkExtents(delta.extents, delta.segmentCount, false);
    const ranges = delta.extents.map(rangeOf);
    if (delta.segmentCount < cur.segmentCount) ranges.push({ first: delta.segmentCount, count: cur.segmentCount - delta.segmentCount });
    return ranges;
  }

  /**
   * The controller fenced this agent for the vdisk: every segment acts as
   * invalid (I/O faults and is held) until a whole table is installed.
   */
  fence(): void {
    this.#fenced = true;
  }

  #serialize(fn: () => Promise<void>): Promise<void> {
    this.#installing++;
    const p = this.#installs.then(fn);
    const done = (): void => {
      this.#installing--;
    };
    this.#installs = p.then(done, done);
    return p;
  }

  async #swap(ranges: SegmentRange[], newCount: number, commit: () => void): Promise<void> {
    const gate = this.#gate;
    gate.ensure(Math.max(newCount, this.#table.segmentCount));
    await gate.suspend(ranges);
    try {
      commit();
      this.#swapped();
    } finally {
      this.#drivers = [];
      gate.resume();
      this.#broadcastSwap();
    }
    // Guarded: winston formats (timestamp, JSON) even what its level then drops.
    if (debugEnabled()) log.debug(`${this.#name()}: table version ${this.#table.version} installed`, { vdisk: this.vdiskId, changedRanges: ranges.length });
  }

  /** A new table (or version) is in place: what every swap notes. */
  #swapped(): void {
    this.#swaps++;
    if (this.#table.maxLegs > 1) {
      this.#mirrored = true;
      this.#unflushed ??= new Set();
    }
  }

  #broadcastSwap(): void {
    if (this.#wakers.size === 0) return; // the common delta: nothing held
    const wakers = [...this.#wakers];
    this.#wakers.clear();
    for (const w of wakers) w();
  }

  // ---- the I/O path ----

  /** Runs one I/O's pieces: inline for the common single-segment I/O, else all at once. */
  async #run(mode: Mode, op: IoOp, lba: number, blocks: number, buf: Buffer, fua: boolean): Promise<void> {
    const t = this.#table;
    const seg = Math.floor(lba / this.#blocksPerSegment);
    if (Math.floor((lba + blocks - 1) / this.#blocksPerSegment) === seg) {
      await this.#piece(mode, op, seg, lba, blocks, buf, 0, fua);
      return;
    }
    const tasks = new Array<Promise<void>>(t.pieceCount(lba, blocks));
    let i = 0;
    t.forEachPiece(lba, blocks, (s, l, b, off) => {
      tasks[i++] = this.#piece(mode, op, s, l, b, buf, off, fua);
    });
    await settleAll(tasks);
  }

  /**
   * One segment's piece of an I/O, re-evaluated against the current table
   * until it completes or fails. The hold deadline starts the first time the
   * piece is held and is not extended by retries.
   */
  async #piece(
    mode: Mode,
    op: IoOp,
    seg: number,
    lba: number,
    blocks: number,
    buf: Buffer | null,
    bufOff: number,
    fua: boolean,
    caw?: CawPiece,
  ): Promise<void> {
    let deadline = 0;
    let faultedAt = -1;
    let minVersion = 0;
    for (;;) {
      if (this.#closed) throw this.#error('not-ready', op, seg, lba, blocks, 'device closed');
      const t = this.#table;
      if (this.#gate.isSuspended(seg) || t.version < minVersion) {
        deadline ||= Date.now() + this.holdTimeoutMs;
        if (!(await this.#hold(this.#waitSwap(deadline)))) {
          const why = t.version < minVersion ? `table version ${minVersion} not installed` : 'table install did not finish';
          throw this.#timedOut(op, seg, lba, blocks, why);
        }
        continue;
      }
      if (seg >= t.segmentCount) {
        throw this.#error('out-of-range', op, seg, lba, blocks, `vdisk shrank to ${t.segmentCount} segments`);
      }
      const state = this.#fenced ? SegmentState.Invalid : t.stateOf(seg);
      if ((state === SegmentState.Zero || state === SegmentState.NoWrite) && this.#lease?.expired === true) {
        // The controller may have allocated or copied this segment without us
        // (lease expired): neither zeros nor the shared location are safe to
        // serve until the tables are resynced. No fault: nobody can answer it.
        deadline ||= Date.now() + this.holdTimeoutMs;
        if (!(await this.#hold(this.#waitSwap(deadline)))) {
          throw this.#timedOut(op, seg, lba, blocks, `${segmentStateName(state)}, controller lease expired`);
        }
        continue;
      }
      // Making a zero segment read as zeros changes nothing: no fault, no I/O.
      if ((mode === Mode.Zero || mode === Mode.Discard) && state === SegmentState.Zero) return;
      let action = inhibits(state, op);
      let faultState = state;
      let detail: string | undefined;
      let failedContainer: string | undefined;
      if (action === 'proceed' && mode !== Mode.Read) {
        const own = this.#ownership(t, seg, op);
        if (own === LEASE_HOLD) {
          deadline ||= Date.now() + this.holdTimeoutMs;
          if (!(await this.#hold(this.#waitSwap(deadline)))) {
            throw this.#timedOut(op, seg, lba, blocks, 'write owner, controller lease expired');
          }
          continue;
        }
        // A CAW that would miscompare writes nothing: answered from a read
        // here, as if it ran at that moment, without taking ownership (the
        // lock holder keeps its segment while others spin on the lock).
        if (own !== null && mode === Mode.Caw && (await this.#miscompares(t, seg, lba, blocks, caw as CawPiece))) return;
        if (own !== null) {
          // Not ours to write: no-write for this agent, and the fault says why.
          action = 'fault';
          faultState = SegmentState.NoWrite;
          detail = own;
        }
      }
      if (action === 'proceed') {
        // One copy: the path as it always was (maxLegs and legCountOf are typed-array reads).
        if (t.maxLegs === 1 || t.legCountOf(seg) < 2) return this.#containerIo(t, mode, op, seg, lba, blocks, buf, bufOff, fua, caw);
        if (mode === Mode.Read) return this.#readMirrored(t, op, seg, lba, blocks, buf as Buffer, bufOff);
        const failed = await this.#legsIo(t, mode, op, seg, lba, blocks, buf, bufOff, fua, caw);
        if (failed === null) return;
        // Some legs have the write, one has not: held until the controller
        // drops that leg, then written again on the legs of the new table.
        // A CAW compared equal and wrote: the retry only writes (comparing
        // against its own data would report a miscompare for a write done).
        if (mode === Mode.Caw) {
          mode = Mode.Write;
          (caw as CawPiece).result = -1;
        }
        action = 'fault';
        detail = failed.detail;
        failedContainer = failed.container;
      }
      if (action === 'zero-read') {
        (buf as Buffer).fill(0, bufOff, bufOff + blocks * this.blockSize);
        return;
      }
      const fault: Fault = { vdiskId: this.vdiskId, version: t.version, segment: seg, op, lba, blocks, state: faultState };
      if (detail !== undefined) fault.detail = detail;
      if (failedContainer !== undefined) fault.failedContainer = failedContainer;
      if (action === 'fail') {
        this.#report(fault);
        throw this.#error(isWrite(op) ? 'write-error' : 'read-error', op, seg, lba, blocks, segmentStateName(state));
      }
      // action === 'fault': hold the piece until the controller answers.
      deadline ||= Date.now() + this.holdTimeoutMs;
      if (faultedAt === t.version) {
        // Already asked at this version: wait for a new table rather than ask again.
        if (!(await this.#hold(this.#waitSwap(deadline)))) {
          throw this.#timedOut(op, seg, lba, blocks, `${segmentStateName(faultState)}, no new table after the controller's answer`);
        }
        continue;
      }
      faultedAt = t.version;
      if (failedContainer !== undefined) {
        log.warn(`${ioOpName(op)} lba=${lba} len=${blocks} on ${this.#name()} segment ${seg}: leg on container ${failedContainer} failed, held for the controller`, {
          vdisk: this.vdiskId,
          version: t.version,
          error: detail,
        });
      } else if (debugEnabled()) {
        log.debug(`${ioOpName(op)} lba=${lba} len=${blocks} on ${this.#name()} segment ${seg}: ${segmentStateName(faultState)}, fault`, {
          vdisk: this.vdiskId,
          version: t.version,
        });
      }
      const asked = this.#faults.fault(fault).catch((e: unknown): typeof UNDELIVERED => {
        log.warn(`${this.#name()} segment ${seg}: fault not delivered: ${(e as Error).message}`);
        return UNDELIVERED;
      });
      const d = await this.#hold(this.#race(asked, deadline));
      if (d === TIMEOUT) throw this.#timedOut(op, seg, lba, blocks, `${segmentStateName(faultState)}, fault unanswered`);
      if (d === UNDELIVERED) continue;
      const done = this.#decide(d, op, seg, lba, blocks, faultState);
      if (done) return;
      if (d.action === 'retry') minVersion = d.minVersion ?? 0;
    }
  }

  /** Reads the piece's blocks and compares them with the CAW's verify half: true (result set) when they differ. */
  async #miscompares(t: MappingTable, seg: number, lba: number, blocks: number, caw: CawPiece): Promise<boolean> {
    const len = blocks * this.blockSize;
    const stored = readBuffer(len);
    if (t.legCountOf(seg) < 2) await this.#containerIo(t, Mode.Read, IoOp.Read, seg, lba, blocks, stored, 0, false);
    else await this.#legsIo(t, Mode.Read, IoOp.Read, seg, lba, blocks, stored, 0, false);
    const at = firstMismatch(stored, caw.verify);
    if (at < 0) return false;
    caw.result = at;
    return true;
  }

  /**
   * Whether this agent may write the segment now: null if so; LEASE_HOLD
   * when it owns it but its lease ran out (the controller may move the
   * ownership without its ack then); else why not (a fault takes ownership).
   */
  #ownership(t: MappingTable, seg: number, op: IoOp): string | typeof LEASE_HOLD | null {
    const owner = t.ownedCount === 0 ? 0 : t.ownerOf(seg);
    if (owner === 0) {
      if (op !== IoOp.CompareAndWrite || this.#exporters <= 1) return null;
      return `compare and write needs write ownership: ${this.#exporters} agents export the vdisk`;
    }
    if (owner !== this.#ownerId) return `write owner is agent ${owner}`;
    return this.#lease?.expired === true ? LEASE_HOLD : null;
  }

  /** Applies a decision: true when the piece is complete, false to re-evaluate; throws for fail. */
  #decide(d: FaultDecision, op: IoOp, seg: number, lba: number, blocks: number, state: SegmentState): boolean {
    switch (d.action) {
      case 'done':
        return true;
      case 'retry':
      case 'wait':
        return false;
      case 'fail': {
        const why = `${segmentStateName(state)}, failed by the controller${d.reason ? `: ${d.reason}` : ''}`;
        throw this.#error(d.sense ?? (isWrite(op) ? 'write-error' : 'read-error'), op, seg, lba, blocks, why);
      }
      default:
        throw new Error(`${this.#name()} segment ${seg}: unknown fault decision ${JSON.stringify(d)}`);
    }
  }

  async #containerIo(
    t: MappingTable,
    mode: Mode,
    op: IoOp,
    seg: number,
    lba: number,
    blocks: number,
    buf: Buffer | null,
    bufOff: number,
    fua: boolean,
    caw?: CawPiece,
  ): Promise<void> {
    const slot = t.slotOf(seg);
    let driver = this.#drivers[slot];
    if (driver === undefined) {
      driver = this.#containers.get(t.containers[slot] as string);
      this.#drivers[slot] = driver;
    }
    if (driver === undefined) {
      const why = `container ${t.containers[slot]} is not reachable from this agent`;
      this.#report({ vdiskId: this.vdiskId, version: t.version, segment: seg, op, lba, blocks, state: SegmentState.Error, detail: why });
      throw this.#error(isWrite(op) ? 'write-error' : 'read-error', op, seg, lba, blocks, why);
    }
    const bs = this.blockSize;
    const offset = t.containerOffsetOf(seg) * t.segmentSize + (lba - seg * this.#blocksPerSegment) * bs;
    const len = blocks * bs;
    this.#gate.enter(seg);
    try {
      switch (mode) {
        case Mode.Read:
          await driver.readInto(offset, buf as Buffer, bufOff, len);
          return;
        case Mode.Write: {
          const b = buf as Buffer;
          await driver.write(offset, bufOff === 0 && len === b.length ? b : b.subarray(bufOff, bufOff + len), fua ? FUA : undefined);
          break;
        }
        case Mode.Zero:
          await driver.writeZeroes(offset, len);
          break;
        case Mode.Discard:
          await driver.discard(offset, len);
          break;
        case Mode.Caw: {
          // Read, compare and write inside one enter/leave: an install that
          // changes this segment (ownership moving away) waits for all three.
          const c = caw as CawPiece;
          const stored = readBuffer(len);
          await driver.readInto(offset, stored, 0, len);
          const at = firstMismatch(stored, c.verify);
          if (at >= 0) {
            c.result = at;
            return;
          }
          await driver.write(offset, buf as Buffer, fua ? FUA : undefined);
          c.result = -1;
          break;
        }
      }
      this.#dirty.add(driver);
    } catch (e) {
      throw this.#ioFailed(t, mode, op, seg, lba, blocks, e);
    } finally {
      this.#gate.leave(seg);
    }
  }

  /** The error for a piece whose container I/O failed (on its only copy, or on every leg): reported as state error unless unreachable. */
  #ioFailed(t: MappingTable, mode: Mode, op: IoOp, seg: number, lba: number, blocks: number, e: unknown): VdiskIoError {
    const detail = (e as Error).message;
    // A container that is away (its driver already held the I/O up to the
    // hold timeout) says nothing about the medium: no error fault for the
    // segment, and a sense the initiator retries.
    if (isUnreachable(e)) return this.#error('unreachable', op, seg, lba, blocks, detail);
    this.#report({ vdiskId: this.vdiskId, version: t.version, segment: seg, op, lba, blocks, state: SegmentState.Error, detail });
    const code = (e as { code?: unknown }).code;
    const kind: BlockErrorKind = code === 'ENOSPC' || code === 'EDQUOT' ? 'no-space' : mode === Mode.Read ? 'read-error' : 'write-error';
    return this.#error(kind, op, seg, lba, blocks, detail);
  }

  /** The driver of a leg's container (cached by slot until the next swap), or undefined when this agent has none. */
  #legDriver(t: MappingTable, slot: number): ContainerDriver | undefined {
    let driver = this.#drivers[slot];
    if (driver === undefined) {
      driver = this.#containers.get(t.containers[slot] as string);
      this.#drivers[slot] = driver;
    }
    return driver;
  }

  /**
   * A piece on a mirrored segment (two or more legs), inside one gate
   * enter/leave: an install that changes the segment waits for every leg.
   * Write-like modes go to all legs in parallel; a read goes to one leg and
   * fails over; CAW compares one leg's data and writes all legs. Returns null
   * when done, or the failed leg when others succeeded (a leg fault for the
   * caller to hold; further failed legs are reported here). Every leg failed:
   * throws as one copy would.
   */
  async #legsIo(
    t: MappingTable,
    mode: Mode,
    op: IoOp,
    seg: number,
    lba: number,
    blocks: number,
    buf: Buffer | null,
    bufOff: number,
    fua: boolean,
    caw?: CawPiece,
  ): Promise<LegFailure | null> {
    const n = t.legCountOf(seg);
    const bs = this.blockSize;
    const within = (lba - seg * this.#blocksPerSegment) * bs;
    const len = blocks * bs;
    this.#gate.enter(seg);
    try {
      if (mode === Mode.Read) {
        await this.#readLegs(t, mode, op, seg, lba, blocks, n, within, buf as Buffer, bufOff, len);
        return null;
      }
      let data: Buffer | null = null;
      if (mode === Mode.Caw) {
        const c = caw as CawPiece;
        const stored = readBuffer(len);
        await this.#readLegs(t, mode, op, seg, lba, blocks, n, within, stored, 0, len);
        const at = firstMismatch(stored, c.verify);
        if (at >= 0) {
          c.result = at;
          return null;
        }
        data = buf as Buffer;
      } else if (mode === Mode.Write) {
        const b = buf as Buffer;
        data = bufOff === 0 && len === b.length ? b : b.subarray(bufOff, bufOff + len);
      }
      if (!fua) this.#noteUnflushed(seg);
      const legs = new Array<Promise<unknown>>(n);
      for (let leg = 0; leg < n; leg++) legs[leg] = this.#writeLeg(t, mode, seg, leg, within, len, data, fua);
      const errors = await Promise.all(legs);
      let first = -1;
      let failures = 0;
      for (let leg = 0; leg < n; leg++) {
        if (errors[leg] === undefined) continue;
        failures++;
        if (first < 0) first = leg;
      }
      if (failures === 0) {
        if (mode === Mode.Caw) (caw as CawPiece).result = -1;
        return null;
      }
      if (failures === n) {
        // Prefer a medium error to an unreachable one: it is what the initiator must hear.
        const media = errors.find((e) => !isUnreachable(e));
        throw this.#ioFailed(t, mode, op, seg, lba, blocks, media ?? errors[first]);
      }
      for (let leg = first + 1; leg < n; leg++) {
        const e = errors[leg];
        if (e !== undefined) this.#reportLeg(t, op, seg, lba, blocks, leg, e);
      }
      const container = t.containers[t.legSlotOf(seg, first)] as string;
      this.#reportUnflushed(container, seg);
      return { container, detail: (errors[first] as Error).message };
    } finally {
      this.#gate.leave(seg);
    }
  }

  /** One leg's share of a mirrored write-like piece: undefined when it has the data, else why not. */
  async #writeLeg(t: MappingTable, mode: Mode, seg: number, leg: number, within: number, len: number, data: Buffer | null, fua: boolean): Promise<unknown> {
    const slot = t.legSlotOf(seg, leg);
    const driver = this.#legDriver(t, slot);
    if (driver === undefined) return new NoDriverError(`container ${t.containers[slot]} is not reachable from this agent`);
    const offset = t.legOffsetOf(seg, leg) * t.segmentSize + within;
    try {
      if (mode === Mode.Zero) await driver.writeZeroes(offset, len);
      else if (mode === Mode.Discard) await driver.discard(offset, len);
      else await driver.write(offset, data as Buffer, fua ? FUA : undefined);
      this.#dirty.add(driver);
      return undefined;
    } catch (e) {
      return e ?? new Error('container I/O failed');
    }
  }

  /**
   * Reads a mirrored piece from one leg, failing over leg by leg; a leg that
   * failed before another served the read is reported (a leg fault whose
   * answer nobody waits for). Every leg failed: throws as one copy would.
   */
  /**
   * A mirrored read, as cheap as a one-copy read while its leg answers: the
   * chosen leg's read is returned as it is (no extra async frames, which cost
   * a mirrored read about 0.5 µs of CPU); only a failure takes the failover
   * path, which goes on from the next leg (the failed one is not asked again:
   * an unreachable one would hold the read a second time).
   */
  #readMirrored(t: MappingTable, op: IoOp, seg: number, lba: number, blocks: number, buf: Buffer, bufOff: number): Promise<void> {
    const n = t.legCountOf(seg);
    const start = this.#readLeg(t, seg, n);
    const driver = this.#legDriver(t, t.legSlotOf(seg, start));
    const within = (lba - seg * this.#blocksPerSegment) * this.blockSize;
    const len = blocks * this.blockSize;
    if (driver === undefined) return this.#failOver(t, op, seg, lba, blocks, n, within, buf, bufOff, len, start, null);
    this.#gate.enter(seg);
    return driver.readInto(t.legOffsetOf(seg, start) * t.segmentSize + within, buf, bufOff, len).then(
      () => this.#gate.leave(seg),
      (e: unknown) => {
        this.#gate.leave(seg);
        return this.#failOver(t, op, seg, lba, blocks, n, within, buf, bufOff, len, start, e ?? new Error('container I/O failed'));
      },
    );
  }

  /** A mirrored read whose first leg failed (`error`; null: no driver here): the other legs, inside the gate. */
  async #failOver(t: MappingTable, op: IoOp, seg: number, lba: number, blocks: number, n: number, within: number, buf: Buffer, bufOff: number, len: number, start: number, error: unknown): Promise<void> {
    this.#gate.enter(seg);
    try {
      const first = error ?? new NoDriverError(`container ${t.containers[t.legSlotOf(seg, start)]} is not reachable from this agent`);
      await this.#readLegs(t, Mode.Read, op, seg, lba, blocks, n, within, buf, bufOff, len, { leg: start, error: first });
    } finally {
      this.#gate.leave(seg);
    }
  }

  async #readLegs(
    t: MappingTable,
    mode: Mode,
    op: IoOp,
    seg: number,
    lba: number,
    blocks: number,
    n: number,
    within: number,
    buf: Buffer,
    bufOff: number,
    len: number,
    failed?: { leg: number; error: unknown },
  ): Promise<void> {
    const start = failed === undefined ? this.#readLeg(t, seg, n) : failed.leg;
    let errors: unknown[] | null = null;
    if (failed !== undefined) (errors = new Array<unknown>(n))[failed.leg] = failed.error;
    for (let i = failed === undefined ? 0 : 1; i < n; i++) {
      const leg = (start + i) % n;
      const slot = t.legSlotOf(seg, leg);
      const driver = this.#legDriver(t, slot);
      try {
        if (driver === undefined) throw new NoDriverError(`container ${t.containers[slot]} is not reachable from this agent`);
        await driver.readInto(t.legOffsetOf(seg, leg) * t.segmentSize + within, buf, bufOff, len);
      } catch (e) {
        (errors ??= new Array<unknown>(n))[leg] = e ?? new Error('container I/O failed');
        continue;
      }
      if (errors !== null) {
        for (let l = 0; l < n; l++) if (errors[l] !== undefined) this.#reportLeg(t, op, seg, lba, blocks, l, errors[l]);
      }
      return;
    }
    const all = errors as unknown[];
    const media = all.find((e) => !isUnreachable(e));
    throw this.#ioFailed(t, mode, op, seg, lba, blocks, media ?? all[start]);
  }

  /**
   * The leg a read starts on: the first near leg whose container is
   * reachable, else one spread by segment and agent number (so agents and
   * segments share the load) skipping unreachable containers; with none
   * reachable, the spread one (its driver says why).
   */
  #readLeg(t: MappingTable, seg: number, n: number): number {
    const r = this.#containers;
    const ids = t.containers;
    if (r.near !== undefined) {
      for (let leg = 0; leg < n; leg++) {
        const id = ids[t.legSlotOf(seg, leg)] as string;
        if (r.near(id) && (r.reachable === undefined || r.reachable(id))) return leg;
      }
    }
    const start = (seg + this.#ownerId) % n;
    if (r.reachable === undefined) return start;
    for (let i = 0; i < n; i++) {
      const leg = (start + i) % n;
      if (r.reachable(ids[t.legSlotOf(seg, leg)] as string)) return leg;
    }
    return start;
  }

  /**
   * A container's flush failed on a mirrored vdisk. Used by no segment of
   * the table any more (its legs were dropped): what was written to it no
   * longer counts, it is forgotten (true). A leg of a mirrored segment: a
   * leg fault for that segment, held like any, so the controller drops the
   * container's legs; true if it then has. Otherwise (a segment's only copy
   * is there) false: the flush fails as with one copy.
   */
  async #flushFailed(d: ContainerDriver, e: unknown): Promise<boolean> {
    const detail = `SYNCHRONIZE CACHE: ${(e as Error).message}`;
    const seg = this.#legUse(d.id);
    if (seg === NOT_USED) {
      log.warn(`${this.#name()}: flush of container ${d.id} failed; no segment uses it any more, its writes are forgotten`, { vdisk: this.vdiskId, error: detail });
      return true;
    }
    if (seg === SOLE_COPY) return false;
    this.#reportUnflushed(d.id, -1);
    const t = this.#table;
    const lba = seg * this.#blocksPerSegment;
    const blocks = Math.min(this.#blocksPerSegment, t.blockCount - lba);
    log.warn(`${this.#name()} segment ${seg}: flush of leg on container ${d.id} failed, held for the controller`, { vdisk: this.vdiskId, version: t.version, error: detail });
    const deadline = Date.now() + this.holdTimeoutMs;
    const asked = this.#faults
      // Verify: the fault names the container, not a change to this segment
      // (the writes at risk were just reported, each as a write).
      .fault({ vdiskId: this.vdiskId, version: t.version, segment: seg, op: IoOp.Verify, lba, blocks, state: t.stateOf(seg), detail, failedContainer: d.id })
      .catch((): typeof UNDELIVERED => UNDELIVERED);
    const r = await this.#hold(this.#race(asked, deadline));
    if (r === TIMEOUT || r === UNDELIVERED || r.action !== 'retry') return false;
    while (this.#table.version < (r.minVersion ?? 0)) {
      if (!(await this.#hold(this.#waitSwap(deadline)))) return false;
    }
    return this.#legUse(d.id) === NOT_USED;
  }

  /**
   * How the table uses a container: NOT_USED, SOLE_COPY (only as the one
   * copy of segments), else the first mirrored segment with a leg on it.
   * Scans the table once per table swap: only for a container that failed
   * a flush or is away.
   */
  #legUse(id: string): number {
    const known = this.#legUses.get(id);
    if (known !== undefined && known.swaps === this.#swaps) return known.use;
    const t = this.#table;
    const slot = t.containers.indexOf(id);
    let use = NOT_USED;
    if (slot >= 0) {
      scan: for (let s = 0; s < t.segmentCount; s++) {
        const n = t.legCountOf(s);
        for (let leg = 0; leg < n; leg++) {
          if (t.legSlotOf(s, leg) !== slot) continue;
          if (n > 1) {
            use = s;
            break scan;
          }
          use = SOLE_COPY;
        }
      }
    }
    this.#legUses.set(id, { swaps: this.#swaps, use });
    return use;
  }

  /** A leg fault whose answer does not matter: the I/O went on without that leg. */
  #reportLeg(t: MappingTable, op: IoOp, seg: number, lba: number, blocks: number, leg: number, e: unknown): void {
    const container = t.containers[t.legSlotOf(seg, leg)] as string;
    const detail = (e as Error).message;
    log.warn(`${ioOpName(op)} lba=${lba} len=${blocks} on ${this.#name()} segment ${seg}: leg on container ${container} failed, reported`, {
      vdisk: this.vdiskId,
      version: t.version,
      error: detail,
    });
    this.#report({ vdiskId: this.vdiskId, version: t.version, segment: seg, op, lba, blocks, state: t.stateOf(seg), detail, failedContainer: container });
    // A read's leg fault says nothing about the data (the controller marks no segment dirty for it).
    this.#reportUnflushed(container, isWrite(op) ? seg : -1);
  }

  /** Records a mirrored segment written without FUA; bounded, so an initiator that never flushes costs no more than MAX_UNFLUSHED entries. */
  #noteUnflushed(seg: number): void {
    const u = this.#unflushed;
    if (u === null) return;
    if (u.size < MAX_UNFLUSHED) u.add(seg);
    else if (!u.has(seg)) this.#overflowed.add(u);
  }

  /**
   * A leg on `container` failed: every mirrored segment with a leg there
   * that was written since the last flush started is reported as a leg
   * fault too (answer ignored). Those writes were acknowledged by that copy
   * but may have been in its write cache only; the controller marks them
   * dirty, so taking the copy back resyncs them. Once per container and
   * table version; not `except`, the segment whose own leg fault names it.
   */
  #reportUnflushed(container: string, except: number): void {
    if (this.#unflushed === null || this.#unflushedReported.get(container) === this.#swaps) return;
    this.#unflushedReported.set(container, this.#swaps);
    const t = this.#table;
    const slot = t.containers.indexOf(container);
    if (slot < 0) return;
    const bps = this.#blocksPerSegment;
    const detail = 'written since the last flush started: not known durable on this copy';
    let count = 0;
    const report = (seg: number): void => {
      if (seg === except || seg >= t.segmentCount) return;
      const n = t.legCountOf(seg);
      if (n < 2) return;
      for (let leg = 0; leg < n; leg++) {
        if (t.legSlotOf(seg, leg) !== slot) continue;
        const lba = seg * bps;
        const blocks = Math.min(bps, t.blockCount - lba);
        this.#report({ vdiskId: this.vdiskId, version: t.version, segment: seg, op: IoOp.Write, lba, blocks, state: t.stateOf(seg), detail, failedContainer: container });
        count++;
        return;
      }
    };
    const seen = new Set<number>();
    let overflowed = false;
    for (const set of [this.#unflushed, ...this.#flushing]) {
      if (this.#overflowed.has(set)) overflowed = true;
      for (const seg of set) {
        if (seen.has(seg)) continue;
        seen.add(seg);
        report(seg);
      }
    }
    if (count > 0) log.warn(`${this.#name()}: ${count} segments written since the last flush reported with the failed leg on container ${container}`, { vdisk: this.vdiskId });
    if (overflowed) {
      log.warn(`${this.#name()}: more than ${MAX_UNFLUSHED} segments written since the last flush; those beyond were not recorded, so not reported with the failed leg on container ${container}`, {
        vdisk: this.vdiskId,
      });
    }
  }

  /**
   * Releases whole normal segments to the controller and completes once the
   * table where they are zero is installed. If the request cannot be
   * delivered or is refused, zeroes them in place instead.
   */
  async #release(first: number, count: number): Promise<void> {
    const release = this.#faults.release as NonNullable<FaultSink['release']>;
    const lba = first * this.#blocksPerSegment;
    const blocks = count * this.#blocksPerSegment;
    // Discard before giving the space back: the controller hands freed
    // container segments to the next allocation as they are, and a first
    // write fills only part of its segment, so the rest must already read as
    // zeros (LBPRZ) and no data of this vdisk may show up in another.
    await settleAll(this.#discardInPlace(first, count));
    const deadline = Date.now() + this.holdTimeoutMs;
    const asked = release
      .call(this.#faults, { vdiskId: this.vdiskId, version: this.#table.version, firstSegment: first, segmentCount: count })
      .catch((e: unknown): typeof UNDELIVERED | typeof LOST => {
        if (e instanceof ReleaseLostError) return LOST;
        log.warn(`${this.#name()} segments ${first}+${count}: release not delivered, zeroing in place: ${(e as Error).message}`);
        return UNDELIVERED;
      });
    const r: ReleaseResult | typeof UNDELIVERED | typeof LOST | typeof TIMEOUT = await this.#hold(this.#race(asked, deadline));
    // Unanswered or lost: the controller may still apply it, so the blocks
    // must not be reused from here; the initiator retries the unmap.
    if (r === TIMEOUT) throw this.#timedOut(IoOp.Unmap, first, lba, blocks, 'release unanswered');
    if (r === LOST) throw this.#error('not-ready', IoOp.Unmap, first, lba, blocks, 'release sent but its answer was lost');
    if (r !== UNDELIVERED && r.ok) {
      while (this.#table.version < r.version) {
        if (!(await this.#hold(this.#waitSwap(deadline)))) {
          throw this.#timedOut(IoOp.Unmap, first, lba, blocks, `released, but table version ${r.version} not installed`);
        }
        if (this.#closed) throw this.#error('not-ready', IoOp.Unmap, first, lba, blocks, 'device closed');
      }
      return;
    }
    if (r !== UNDELIVERED) log.warn(`${this.#name()} segments ${first}+${count}: release refused (${r.error ?? 'no reason'}), zeroing in place`);
    // Again: a write may have landed between the first discard and the refusal.
    await settleAll(this.#discardInPlace(first, count));
  }

  #discardInPlace(first: number, count: number): Promise<void>[] {
    const tasks: Promise<void>[] = [];
    for (let s = first; s < first + count; s++) {
      tasks.push(this.#piece(Mode.Discard, IoOp.Unmap, s, s * this.#blocksPerSegment, this.#blocksPerSegment, null, 0, false));
    }
    return tasks;
  }

  // ---- holding ----

  async #hold<T>(p: Promise<T>): Promise<T> {
    this.#held++;
    try {
      return await p;
    } finally {
      this.#held--;
    }
  }

  /** True after the next table swap, false at the deadline (or at close). */
  #waitSwap(deadline: number): Promise<boolean> {
    const ms = deadline - Date.now();
    if (ms <= 0 || this.#closed) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const wake = (): void => {
        clearTimeout(timer);
        resolve(!this.#closed);
      };
      const timer = setTimeout(() => {
        this.#wakers.delete(wake);
        resolve(false);
      }, ms);
      this.#wakers.add(wake);
    });
  }

  /** `p`, or TIMEOUT at the deadline or when the device closes. */
  #race<T>(p: Promise<T>, deadline: number): Promise<T | typeof TIMEOUT> {
    const ms = deadline - Date.now();
    if (ms <= 0 || this.#closed) return Promise.resolve(TIMEOUT);
    return new Promise<T | typeof TIMEOUT>((resolve, reject) => {
      const cancel = (): void => {
        clearTimeout(timer);
        resolve(TIMEOUT);
      };
      const timer = setTimeout(() => {
        this.#cancels.delete(cancel);
        resolve(TIMEOUT);
      }, ms);
      this.#cancels.add(cancel);
      p.then(
        (v) => {
          clearTimeout(timer);
          this.#cancels.delete(cancel);
          resolve(v);
        },
        (e: unknown) => {
          clearTimeout(timer);
          this.#cancels.delete(cancel);
          reject(e);
        },
      );
    });
  }

  /** Sends a fault whose answer does not matter (state error, container failure). */
  #report(f: Fault): void {
    this.#faults.fault(f).catch((e: unknown) => {
      log.warn(`${this.#name()} segment ${f.segment}: fault not delivered: ${(e as Error).message}`);
    });
  }

  // ---- checks and errors ----

  #checkRange(op: IoOp, lba: number, blocks: number): void {
    if (this.#closed) throw new BlockDeviceError('not-ready', `${ioOpName(op).toUpperCase()} lba=${lba} on ${this.#name()}: device closed`, lba);
    const count = this.#table.blockCount;
    if (!Number.isSafeInteger(lba) || !Number.isSafeInteger(blocks) || lba < 0 || blocks < 0 || lba + blocks > count) {
      throw new BlockDeviceError(
        'out-of-range',
        `${ioOpName(op).toUpperCase()} lba=${lba} len=${blocks} on ${this.#name()}: beyond the last block ${count - 1}`,
        lba,
      );
    }
  }

  #checkWritable(op: IoOp, lba: number, blocks: number): void {
    this.#checkRange(op, lba, blocks);
    if (this.readOnly) {
      throw new BlockDeviceError('write-protected', `${ioOpName(op).toUpperCase()} lba=${lba} len=${blocks} on ${this.#name()}: exported read-only`, lba);
    }
  }

  #name(): string {
    return `vdisk ${this.#table.name || this.vdiskId}`;
  }

  #error(error: BlockErrorKind | SenseCode, op: IoOp, seg: number, lba: number, blocks: number, why: string): VdiskIoError {
    const msg = `${ioOpName(op).toUpperCase()} lba=${lba} len=${blocks} on ${this.#name()} segment ${seg}: ${why}`;
    return new VdiskIoError(error, msg, lba, this.vdiskId, seg);
  }

  #timedOut(op: IoOp, seg: number, lba: number, blocks: number, why: string): VdiskIoError {
    if (this.#closed) return this.#error('not-ready', op, seg, lba, blocks, 'device closed while the I/O was held');
    return this.#error('not-ready', op, seg, lba, blocks, `held ${this.holdTimeoutMs} ms (${why})`);
  }
}

/**
 * A container that cannot be reached (a network LUN whose target is away),
 * as opposed to one that answered with an error: the iSCSI driver's
 * EUNREACHABLE, or a transport failure that got through unwrapped.
 */
export function isUnreachable(e: unknown): boolean {
  return (e instanceof ContainerIoError && e.code === 'EUNREACHABLE') || e instanceof TransportError;
}

function isWrite(op: IoOp): boolean {
  return op !== IoOp.Read && op !== IoOp.Verify;
}

function rangeOf(e: { first: number; count: number }): SegmentRange {
  return { first: e.first, count: e.count };
}

/** Segments (below both counts) whose entries differ, as ranges. For tables of the same version. */
function changedRanges(a: MappingTable, b: MappingTable): SegmentRange[] {
  const out: SegmentRange[] = [];
  const n = Math.min(a.segmentCount, b.segmentCount);
  for (let s = 0; s < n; s++) {
    if (a.stateOf(s) === b.stateOf(s) && a.containerOf(s) === b.containerOf(s) && a.containerOffsetOf(s) === b.containerOffsetOf(s) && sameExtraLegs(a, b, s)) continue;
    const last = out[out.length - 1];
    if (last !== undefined && last.first + last.count === s) last.count++;
    else out.push({ first: s, count: 1 });
  }
  if (b.segmentCount > a.segmentCount) out.push({ first: a.segmentCount, count: b.segmentCount - a.segmentCount });
  return out;
}

/** Whether segment `s` has the same extra legs (container and offset) in both tables. */
function sameExtraLegs(a: MappingTable, b: MappingTable, s: number): boolean {
  const n = a.legCountOf(s);
  if (n !== b.legCountOf(s)) return false;
  for (let leg = 1; leg < n; leg++) {
    if (a.containers[a.legSlotOf(s, leg)] !== b.containers[b.legSlotOf(s, leg)] || a.legOffsetOf(s, leg) !== b.legOffsetOf(s, leg)) return false;
  }
  return true;
}

/** Waits for every task, then throws the first failure in submission (LBA) order. */
async function settleAll(tasks: Promise<void>[]): Promise<void> {
  if (tasks.length === 1) return tasks[0];
  const results = await Promise.allSettled(tasks);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/** COMPARE AND WRITE: the offset of the first byte where `stored` differs from `verify`, or -1 when they are equal. */
function firstMismatch(stored: Buffer, verify: Buffer): number {
  if (stored.equals(verify)) return -1;
  for (let i = 0; i < stored.length; i++) if (stored[i] !== verify[i]) return i;
  return -1;
}
