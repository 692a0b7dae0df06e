// One LUN reached through an iSCSI initiator, as bytes: what the iSCSI
// container driver (and `container init` of a LUN) stand on. It learns the
// LUN's geometry (INQUIRY, READ CAPACITY, VPD B0h/B2h), turns byte ranges
// into READ(16)/WRITE(16)/WRITE SAME(16)/UNMAP/SYNCHRONIZE CACHE commands
// split by the LUN's limits, and turns SCSI outcomes into ContainerIoError
// with one errno-like code each, so the agent's existing error path applies:
//
//   MEDIUM ERROR, HARDWARE ERROR (and anything unknown)      EIO     error fault for that segment
//   DATA PROTECT                                             EROFS
//   ILLEGAL REQUEST                                          EINVAL
//   RESERVATION CONFLICT                                     EACCES
//   UNIT ATTENTION, NOT READY, ABORTED COMMAND, BUSY,
//   TASK SET FULL, TASK ABORTED, a timed-out command         retried until the hold deadline, then EUNREACHABLE
//   no connection (the session's own hold expired), login   EUNREACHABLE (retryable, never a medium error)
//
// Commands run concurrently: nothing here serialises I/O except a
// read-modify-write of a partial block, which excludes other writes to that
// block while it runs (so a whole-block write landing between its read and
// its write is not undone).
import { setTimeout as sleep } from 'node:timers/promises';
import { TransportError, type ScsiRequest, type ScsiResult, type ScsiTransport } from '../iscsi/initiator/transport.js';
import { ContainerIoError, type ContainerOp } from './driver.js';
import {
  SenseKey,
  Status,
  decodeBlockLimits,
  decodeInquiry,
  decodeProvisioning,
  decodeReadCapacity10,
  decodeReadCapacity16,
  decodeReportLuns,
  decodeSense,
  decodeSupportedPages,
  cdbText,
  readCapacity10Cdb,
  reportLunsCdb,
  reportLunsLength,
  senseText,
  statusName,
  synchronizeCache10Cdb,
  unmapCommand,
  writeSame16Cdb,
  type BlockLimitsVpd,
  type Capacity,
  type ProvisioningVpd,
  type SenseData,
} from './iscsi-commands.js';
import { inquiryCdb, read16Cdb, readCapacity16Cdb, synchronizeCache16Cdb, write16Cdb } from '../iscsi/initiator/cdb.js';

/** The agent's default hold timeout: how long transient conditions are retried. */
export const DEFAULT_HOLD_MS = 10_000;
/** Largest transfer of one command when the LUN sets no lower limit. */
export const DEFAULT_MAX_TRANSFER_BYTES = 4 << 20;
/** Largest WRITE SAME of one command: bounded so one command ends well within a command timeout. */
const MAX_WRITE_SAME_BYTES = 64 << 20;
/** Commands of one large operation (zeroing a whole LUN) in flight at once. */
const SPLIT_PARALLEL = 16;
const MAX_BACKOFF_MS = 200;
/** Unit attentions retried at once before the backoff applies. */
const MAX_QUICK_ATTENTIONS = 4;
/** REPORT LUNS data for every LUN 0..16383 fits. */
const MAX_REPORT_LUNS_BYTES = 8 + 8 * 16384;

export interface IscsiLunOptions {
  /** How long transient SCSI conditions and timed-out commands are retried (the agent's hold timeout). */
  holdMs?: number;
  /** Per-command timeout passed to the transport when less of the hold is left (default: the transport's). */
  commandTimeoutMs?: number;
  /** Cap on one READ/WRITE's size below the LUN's own maximum. */
  maxTransferBytes?: number;
}

export interface LunGeometry {
  blockSize: number;
  blocks: number;
  /** Bytes. */
  capacity: number;
  vendor: string;
  product: string;
  /** Blocks per READ/WRITE command (the LUN's limit and ours). */
  maxTransferBlocks: number;
  /** VPD B0h as reported (absent when the LUN has no such page). */
  limits?: BlockLimitsVpd;
  /** VPD B2h as reported, or the READ CAPACITY(16) bits when the page is absent. */
  provisioning: ProvisioningVpd;
}

/** SCSI outcomes the caller handles itself instead of getting an error (feature probing). */
type Unsupported = 'unsupported';

const UA_OR_TRANSIENT = new Set<number>([SenseKey.UnitAttention, SenseKey.NotReady, SenseKey.AbortedCommand]);

/** ILLEGAL REQUEST answers that mean "this LUN does not do that command (that way)". */
function unsupported(s: SenseData): boolean {
  // 20h invalid command operation code, 24h invalid field in CDB, 26h invalid field in parameter list
  return s.key === SenseKey.IllegalRequest && (s.asc === 0x20 || s.asc === 0x24 || s.asc === 0x26);
}

function errnoOfSense(s: SenseData): string {
  switch (s.key) {
    case SenseKey.DataProtect:
      return 'EROFS';
    case SenseKey.IllegalRequest:
      return 'EINVAL';
    default:
      return 'EIO';
  }
}

export class IscsiLun {
  /** Offset that error offsets count from (the container's data area, once the driver knows it). */
  #errorBase = 0;
  #writeSame = true;
  #writeSameUnmap = true;
  #syncCache16 = true;
  #syncCache = true;
  /** Writes in flight, by block range; a read-modify-write waits for overlapping ones (and they for it). */
  readonly #active = new Set<ActiveWrite>();
  #rmwActive = 0;
  readonly #holdMs: number;
  readonly #commandTimeoutMs: number | undefined;

  private constructor(
    readonly transport: ScsiTransport,
    readonly lun: number,
    /** Redacted locator, for messages. */
    readonly path: string,
    readonly geometry: LunGeometry,
    opts: IscsiLunOptions,
  ) {
    this.#holdMs = opts.holdMs ?? DEFAULT_HOLD_MS;
    this.#commandTimeoutMs = opts.commandTimeoutMs;
  }

  /**
   * Learns the LUN's geometry: INQUIRY (a direct-access block device must be
   * there), READ CAPACITY(16) (10 when 16 is refused), the supported VPD
   * pages, then B0h and B2h where listed. Throws ContainerIoError('open').
   */
  static async probe(transport: ScsiTransport, lun: number, path: string, opts: IscsiLunOptions = {}): Promise<IscsiLun> {
    try {
      return await IscsiLun.#probe(transport, lun, path, opts);
    } catch (e) {
      if (e instanceof ContainerIoError) throw e;
      // A decoder's complaint about what the LUN sent.
      throw new ContainerIoError('open', path, -1, 'EIO', (e as Error).message);
    }
  }

  static async #probe(transport: ScsiTransport, lun: number, path: string, opts: IscsiLunOptions): Promise<IscsiLun> {
    const probe = new IscsiLun(transport, lun, path, EMPTY_GEOMETRY, opts);
    const inq = decodeInquiry(await probe.#dataIn(inquiryCdb(96), 96));
    if (inq.qualifier !== 0) throw new ContainerIoError('open', path, -1, 'ENXIO', `no logical unit at LUN ${lun} (peripheral qualifier ${inq.qualifier})`);
    if (inq.deviceType !== 0) {
      throw new ContainerIoError('open', path, -1, 'ENODEV', `LUN ${lun} is not a block device (peripheral device type 0x${inq.deviceType.toString(16)})`);
    }
    let cap: Capacity;
    const rc16 = await probe.#dataInIf(readCapacity16Cdb(32), 32);
    if (rc16 === 'unsupported') cap = decodeReadCapacity10(await probe.#dataIn(readCapacity10Cdb(), 8));
    else cap = decodeReadCapacity16(rc16);
    const bs = cap.blockSize;
    if (bs < 512 || bs > 4096 || (bs & (bs - 1)) !== 0) {
      throw new ContainerIoError('open', path, -1, 'EINVAL', `LUN ${lun} has ${bs}-byte blocks (512 to 4096, a power of two, is needed)`);
    }
    const pagesData = await probe.#dataInIf(inquiryCdb(255, 0x00), 255);
    const pages = pagesData === 'unsupported' ? [] : decodeSupportedPages(pagesData);
    let limits: BlockLimitsVpd | undefined;
    if (pages.includes(0xb0)) {
      const d = await probe.#dataInIf(inquiryCdb(64, 0xb0), 64);
      if (d !== 'unsupported') limits = decodeBlockLimits(d);
    }
    let provisioning: ProvisioningVpd = { unmap: false, writeSameUnmap: false, readsZeroWhenUnmapped: cap.readsZeroWhenUnmapped };
    if (pages.includes(0xb2)) {
      const d = await probe.#dataInIf(inquiryCdb(64, 0xb2), 64);
      if (d !== 'unsupported') provisioning = decodeProvisioning(d);
    }
    if (!cap.thin) provisioning = { unmap: false, writeSameUnmap: false, readsZeroWhenUnmapped: provisioning.readsZeroWhenUnmapped };
    const ours = Math.max(1, Math.floor((opts.maxTransferBytes ?? DEFAULT_MAX_TRANSFER_BYTES) / bs));
    const theirs = limits?.maxTransferBlocks ?? 0;
    const geometry: LunGeometry = {
      blockSize: bs,
      blocks: cap.blocks,
      capacity: cap.blocks * bs,
      vendor: inq.vendor,
      product: inq.product,
      maxTransferBlocks: theirs > 0 ? Math.min(theirs, ours) : ours,
      provisioning,
      ...(limits === undefined ? {} : { limits }),
    };
    return new IscsiLun(transport, lun, path, geometry, opts);
  }

  /**
   * The LUNs of the target `transport` is logged in to (REPORT LUNS, sent to
   * LUN 0 as SPC-4 allows for any LUN), in increasing order.
   */
  static async reportLuns(transport: ScsiTransport, path: string, opts: IscsiLunOptions = {}): Promise<number[]> {
    const any = new IscsiLun(transport, 0, path, EMPTY_GEOMETRY, opts);
    let alloc = 8 + 8 * 256;
    for (;;) {
      const d = await any.#dataIn(reportLunsCdb(alloc), alloc);
      const whole = reportLunsLength(d);
      if (whole <= alloc || alloc >= MAX_REPORT_LUNS_BYTES) return [...new Set(decodeReportLuns(d))].sort((a, b) => a - b);
      alloc = Math.min(whole, MAX_REPORT_LUNS_BYTES);
    }
  }

  /** Error offsets from now on count from `offset` (the data area's start). */
  reportOffsetsFrom(offset: number): void {
    this.#errorBase = offset;
  }

  // ---- reads ----

  /** Reads `length` bytes at LUN byte `offset` into `target[targetOffset..]`. */
  async readInto(offset: number, target: Buffer, targetOffset: number, length: number): Promise<void> {
    if (length === 0) return;
    const bs = this.geometry.blockSize;
    const first = Math.floor(offset / bs);
    const end = Math.ceil((offset + length) / bs);
    if (offset % bs === 0 && length % bs === 0 && end - first <= this.geometry.maxTransferBlocks) {
      // Whole blocks in one command (the agent's usual read): straight into the caller's buffer, without the split's frames.
      await this.#readBlocks(first, end - first, target.subarray(targetOffset, targetOffset + length));
      return;
    }
    await this.#split(first, end - first, this.geometry.maxTransferBlocks, async (lba, n) => {
      // The piece of [offset, offset+length) these blocks hold.
      const from = Math.max(offset, lba * bs);
      const to = Math.min(offset + length, (lba + n) * bs);
      const dest = target.subarray(targetOffset + (from - offset), targetOffset + (to - offset));
      // Whole blocks land straight in the caller's buffer (the initiator's dataInBuffer); ragged ends via a copy.
      const whole = from === lba * bs && to === (lba + n) * bs;
      const data = await this.#readBlocks(lba, n, whole ? dest : undefined);
      if (data.buffer !== dest.buffer || data.byteOffset !== dest.byteOffset) data.copy(dest, 0, from - lba * bs, to - lba * bs);
    });
  }

  /** Reads blocks [lba, lba+n), into `into` (exactly n blocks) when given, and returns where they are. */
  async #readBlocks(lba: number, n: number, into?: Buffer): Promise<Buffer> {
    const bytes = n * this.geometry.blockSize;
    const req: ScsiRequest = { lun: this.lun, cdb: read16Cdb(lba, n), dataInLength: bytes };
    if (into !== undefined) req.dataInBuffer = into;
    const r = await this.#run('read', lba * this.geometry.blockSize, req);
    const data = r.data;
    if (data === undefined || data.length < bytes) {
      throw this.#error('read', lba * this.geometry.blockSize, 'EIO', `READ(16) lba=${lba} blocks=${n}: ${data?.length ?? 0} of ${bytes} bytes came back`);
    }
    // A transport that does not honour dataInBuffer (a SessionPool's member may be any) returns its own buffer.
    if (into !== undefined && !(data.buffer === into.buffer && data.byteOffset === into.byteOffset)) {
      data.copy(into, 0, 0, bytes);
      return into;
    }
    return data;
  }

  // ---- writes ----

  /** Writes all of `data` at LUN byte `offset`; partial blocks at either end are read, patched and written. */
  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const bs = this.geometry.blockSize;
    if (offset % bs === 0 && data.length % bs === 0 && data.length > 0) {
      // Whole blocks (the agent's usual write): what #byBlocks would do, without its job list.
      const lba = offset / bs;
      return this.#guarded(lba, lba + data.length / bs, false, () => this.#writeBlocks(lba, data, fua));
    }
    await this.#byBlocks(
      'write',
      offset,
      data.length,
      (lba, n, at) => this.#writeBlocks(lba, data.subarray(at, at + n * bs), fua),
      (_offset, length, at) => data.subarray(at, at + length),
      fua,
    );
  }

  async #writeBlocks(lba: number, data: Buffer, fua: boolean): Promise<void> {
    const n = data.length / this.geometry.blockSize;
    if (n <= this.geometry.maxTransferBlocks) {
      await this.#run('write', lba * this.geometry.blockSize, { lun: this.lun, cdb: write16Cdb(lba, n, fua), dataOut: data });
      return;
    }
    await this.#split(lba, n, this.geometry.maxTransferBlocks, async (l, k) => {
      const bs = this.geometry.blockSize;
      const piece = data.subarray((l - lba) * bs, (l - lba + k) * bs);
      await this.#run('write', l * bs, { lun: this.lun, cdb: write16Cdb(l, k, fua), dataOut: piece });
    });
  }

  /** Makes [offset, offset+length) read as zeros, keeping it allocated: WRITE SAME(16), else zero buffers. */
  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.#byBlocks('zero', offset, length, (lba, n) => this.#zeroBlocks('zero', lba, n), (_o, l) => Buffer.alloc(l), false);
  }

  /**
   * Deallocates where the LUN can and guarantees zeros when read back:
   * WRITE SAME(16) with UNMAP (LBPWS: the LUN writes the zeros where it does
   * not deallocate), else UNMAP when unmapped blocks read as zeros (LBPU and
   * LBPRZ) on whole unmap granules, else zeroes.
   */
  async discard(offset: number, length: number): Promise<void> {
    await this.#byBlocks('discard', offset, length, (lba, n) => this.#discardBlocks(lba, n), (_o, l) => Buffer.alloc(l), false);
  }

  async #discardBlocks(lba: number, n: number): Promise<void> {
    const p = this.geometry.provisioning;
    if (p.writeSameUnmap && this.#writeSameUnmap) {
      if (await this.#writeSameBlocks('discard', lba, n, true)) return;
      this.#writeSameUnmap = false;
    }
    const l = this.geometry.limits;
    if (p.unmap && p.readsZeroWhenUnmapped && l !== undefined && l.maxUnmapBlocks > 0 && l.maxUnmapDescriptors > 0) {
      const g = Math.max(1, l.unmapGranularity);
      const start = Math.ceil(lba / g) * g;
      const end = Math.floor((lba + n) / g) * g;
      if (end > start) {
        if (await this.#unmap(start, end - start)) {
          await Promise.all([start > lba ? this.#zeroBlocks('discard', lba, start - lba) : undefined, end < lba + n ? this.#zeroBlocks('discard', end, lba + n - end) : undefined]);
          return;
        }
      }
    }
    await this.#zeroBlocks('discard', lba, n);
  }

  /** UNMAP of whole blocks; false when the LUN refuses the command. */
  async #unmap(lba: number, n: number): Promise<boolean> {
    const l = this.geometry.limits!;
    const perDescriptor = Math.min(l.maxUnmapBlocks, 0xffffffff);
    const ranges: { lba: number; blocks: number }[] = [];
    for (let at = lba; at < lba + n; at += perDescriptor) ranges.push({ lba: at, blocks: Math.min(perDescriptor, lba + n - at) });
    const perCommand = Math.min(l.maxUnmapDescriptors, 4095);
    const commands: { lba: number; blocks: number }[][] = [];
    for (let i = 0; i < ranges.length; i += perCommand) commands.push(ranges.slice(i, i + perCommand));
    let refused = false;
    await runLimited(commands, SPLIT_PARALLEL, async (batch) => {
      const { cdb, data } = unmapCommand(batch);
      const first = batch[0]!;
      const r = await this.#try('discard', first.lba * this.geometry.blockSize, { lun: this.lun, cdb, dataOut: data });
      if (r === 'unsupported') refused = true;
    });
    return !refused;
  }

  async #zeroBlocks(op: ContainerOp, lba: number, n: number): Promise<void> {
    if (this.#writeSame && (await this.#writeSameBlocks(op, lba, n, false))) return;
    const bs = this.geometry.blockSize;
    const chunk = Math.min(this.geometry.maxTransferBlocks, Math.max(1, (1 << 20) / bs));
    const zero = Buffer.alloc(chunk * bs);
    await this.#split(lba, n, chunk, (l, k) =>
      this.#run(op, l * bs, { lun: this.lun, cdb: write16Cdb(l, k, false), dataOut: zero.subarray(0, k * bs) }, ' (zeros)').then(() => undefined),
    );
  }

  /** WRITE SAME(16) of a zero block over [lba, lba+n); false (and never again) when the LUN refuses it. */
  async #writeSameBlocks(op: ContainerOp, lba: number, n: number, unmap: boolean): Promise<boolean> {
    const bs = this.geometry.blockSize;
    const reported = this.geometry.limits?.maxWriteSameBlocks ?? 0;
    const ours = MAX_WRITE_SAME_BYTES / bs;
    const per = reported > 0 ? Math.min(reported, ours) : ours;
    const zero = Buffer.alloc(bs);
    let refused = false;
    await this.#split(lba, n, per, async (l, k) => {
      if (refused) return;
      const r = await this.#try(op, l * bs, { lun: this.lun, cdb: writeSame16Cdb(l, k, unmap), dataOut: zero });
      if (r === 'unsupported') refused = true;
    });
    if (refused && !unmap) this.#writeSame = false;
    // Pieces written before the refusal are zeros already; writing them again is harmless.
    return !refused;
  }

  /** Makes completed writes durable: SYNCHRONIZE CACHE(16), else (10), else nothing (a LUN without a cache). */
  async flush(): Promise<void> {
    if (this.#syncCache16) {
      const r = await this.#try('flush', -1, { lun: this.lun, cdb: synchronizeCache16Cdb() });
      if (r !== 'unsupported') return;
      this.#syncCache16 = false;
    }
    if (this.#syncCache) {
      const r = await this.#try('flush', -1, { lun: this.lun, cdb: synchronizeCache10Cdb() });
      if (r === 'unsupported') this.#syncCache = false;
    }
  }

  /**
   * Splits [offset, offset+length) into whole blocks, done by `blocks`, and
   * partial blocks at the ends, done as read-modify-write of bytes given by
   * `bytes(offset, length, at)` where `at` counts from the range's start.
   */
  async #byBlocks(
    op: ContainerOp,
    offset: number,
    length: number,
    blocks: (lba: number, n: number, at: number) => Promise<void>,
    bytes: (offset: number, length: number, at: number) => Buffer,
    fua: boolean,
  ): Promise<void> {
    if (length === 0) return;
    const bs = this.geometry.blockSize;
    const end = offset + length;
    const firstWhole = Math.ceil(offset / bs);
    const endWhole = Math.floor(end / bs);
    const jobs: Promise<void>[] = [];
    if (endWhole > firstWhole) {
      jobs.push(this.#guarded(firstWhole, endWhole, false, () => blocks(firstWhole, endWhole - firstWhole, firstWhole * bs - offset)));
    }
    const head = Math.floor(offset / bs);
    if (offset % bs !== 0) {
      const to = Math.min(end, (head + 1) * bs);
      jobs.push(this.#patch(op, head, offset - head * bs, bytes(offset, to - offset, 0), fua));
    }
    const tail = Math.floor(end / bs);
    if (end % bs !== 0 && (tail !== head || offset % bs === 0)) {
      const from = Math.max(offset, tail * bs);
      jobs.push(this.#patch(op, tail, 0, bytes(from, end - from, from - offset), fua));
    }
    await settleAll(jobs);
  }

  /** Read-modify-write of one block: `data` goes at byte `within` of block `lba`. */
  #patch(op: ContainerOp, lba: number, within: number, data: Buffer, fua: boolean): Promise<void> {
    return this.#guarded(lba, lba + 1, true, async () => {
      const block = await this.#readBlocks(lba, 1);
      data.copy(block, within);
      const bs = this.geometry.blockSize;
      await this.#run(op, lba * bs + within, { lun: this.lun, cdb: write16Cdb(lba, 1, fua), dataOut: block }, ' (read-modify-write)');
    });
  }

  /** Runs a write of blocks [start, end) once no conflicting write is in flight: an RMW conflicts with any, others only with RMWs. */
  async #guarded(start: number, end: number, rmw: boolean, fn: () => Promise<void>): Promise<void> {
    for (;;) {
      if (!rmw && this.#rmwActive === 0) break;
      const blocking: Promise<void>[] = [];
      for (const a of this.#active) if ((rmw || a.rmw) && a.start < end && start < a.end) blocking.push((a.done ??= new Promise<void>((r) => (a.release = r))));
      if (blocking.length === 0) break;
      await Promise.allSettled(blocking);
    }
    // `done` is made only when a write has to wait for this one: rarely, so no promise per write.
    const entry: ActiveWrite = { start, end, rmw, done: undefined, release: undefined };
    this.#active.add(entry);
    if (rmw) this.#rmwActive++;
    try {
      await fn();
    } finally {
      this.#active.delete(entry);
      if (rmw) this.#rmwActive--;
      entry.release?.();
    }
  }

  /** Runs `fn` over [lba, lba+n) in pieces of at most `per` blocks, several at once. */
  async #split(lba: number, n: number, per: number, fn: (lba: number, n: number) => Promise<void>): Promise<void> {
    if (n <= per) return fn(lba, n);
    const pieces: [number, number][] = [];
    for (let at = lba; at < lba + n; at += per) pieces.push([at, Math.min(per, lba + n - at)]);
    await runLimited(pieces, SPLIT_PARALLEL, ([l, k]) => fn(l, k));
  }

  // ---- one command, with retries and the error mapping ----

  async #dataIn(cdb: Buffer, length: number): Promise<Buffer> {
    return (await this.#run('open', -1, { lun: this.lun, cdb, dataInLength: length })).data ?? Buffer.alloc(0);
  }

  /** #dataIn, or 'unsupported' when the LUN refuses the command. */
  async #dataInIf(cdb: Buffer, length: number): Promise<Buffer | Unsupported> {
    const r = await this.#try('open', -1, { lun: this.lun, cdb, dataInLength: length });
    return r === 'unsupported' ? r : (r.data ?? Buffer.alloc(0));
  }

  /** #try, where a refusal is an error like any other. */
  #run(op: ContainerOp, offset: number, req: ScsiRequest, note = ''): Promise<ScsiResult> {
    // GOOD at the first try (nearly every command) skips the retry loop's async frame: one promise less per I/O.
    const start = Date.now();
    // The hold counts from here, whatever way the target goes away: the session gives up (and drops
    // the connection, so that reinstatement ends the task on the target) by then, not a command
    // timeout, an abort timeout and a hold later. Built here, one object per command.
    req.deadline = start + this.#holdMs;
    return this.transport.execute(req).then(
      (r) => (r.status === Status.Good ? r : (this.#attempt(op, offset, req, false, note, start, { r }) as Promise<ScsiResult>)),
      (e: unknown) => this.#attempt(op, offset, req, false, note, start, { e }) as Promise<ScsiResult>,
    );
  }

  /** Sends one command; ILLEGAL REQUEST for an unknown opcode or field returns 'unsupported'. */
  #try(op: ContainerOp, offset: number, req: ScsiRequest): Promise<ScsiResult | Unsupported> {
    return this.#attempt(op, offset, req, true, '');
  }

  /**
   * Sends one command until it has an outcome: GOOD returns it; transient
   * conditions are retried with backoff until the hold deadline; the rest
   * throw ContainerIoError.
   */
  async #attempt(
    op: ContainerOp,
    offset: number,
    req: ScsiRequest,
    mayRefuse: boolean,
    note: string,
    start = Date.now(),
    /** The outcome of a first try already made (by #run). */
    first?: { r: ScsiResult } | { e: unknown },
  ): Promise<ScsiResult | Unsupported> {
    // Named only when an error needs it: no string is built per command.
    const what = (): string => `${cdbText(req.cdb)}${note}`;
    const deadline = start + this.#holdMs;
    req.deadline ??= deadline;
    let delay = 1;
    let attentions = 0;
    let last = '';
    for (let attempt = 0; ; attempt++) {
      const left = deadline - Date.now();
      if (attempt > 0 && left <= 0) {
        throw this.#error(op, offset, 'EUNREACHABLE', `${what()}: ${last}, still so after ${this.#holdMs} ms of retries`);
      }
      let r: ScsiResult;
      try {
        if (attempt === 0 && first !== undefined) {
          if ('e' in first) throw first.e;
          r = first.r;
        } else {
          const timed = attempt > 0 && this.#commandTimeoutMs !== undefined && left < this.#commandTimeoutMs ? { ...req, timeoutMs: Math.max(1, left) } : req;
          r = await this.transport.execute(timed);
        }
      } catch (e) {
        if (!(e instanceof TransportError)) throw e;
        if (e.kind === 'closed') throw this.#error(op, offset, 'EBADF', `${what()}: ${e.message}`);
        // 'unreachable' comes after the session has already held the command for its hold time.
        if (e.kind === 'unreachable' || !e.retryable) throw this.#error(op, offset, 'EUNREACHABLE', `${what()}: ${e.kind}: ${e.message}`);
        last = `${e.kind}: ${e.message}`;
        delay = await this.#backoff(delay, deadline);
        continue;
      }
      switch (r.status) {
        case Status.Good:
        case Status.ConditionMet:
          return r;
        case Status.CheckCondition: {
          const s = decodeSense(r.sense);
          if (s === undefined) throw this.#error(op, offset, 'EIO', `${what()}: CHECK CONDITION without usable sense data`);
          if (s.key === SenseKey.RecoveredError) return r;
          if (mayRefuse && unsupported(s)) return 'unsupported';
          if (UA_OR_TRANSIENT.has(s.key)) {
            last = senseText(s);
            // A unit attention is reported once, so the retry goes at once (a few in a row: a reset and a
            // capacity change, say); a target that keeps reporting them is paced like any other condition.
            if (s.key !== SenseKey.UnitAttention || ++attentions > MAX_QUICK_ATTENTIONS) delay = await this.#backoff(delay, deadline);
            continue;
          }
          const at = s.info !== undefined && offset >= 0 && (op === 'read' || op === 'write') ? s.info * this.geometry.blockSize : offset;
          throw this.#error(op, at, errnoOfSense(s), `${what()}: ${senseText(s)}`);
        }
        case Status.Busy:
        case Status.TaskSetFull:
        case Status.TaskAborted:
          last = statusName(r.status);
          delay = await this.#backoff(delay, deadline);
          continue;
        case Status.ReservationConflict:
          throw this.#error(op, offset, 'EACCES', `${what()}: RESERVATION CONFLICT (another initiator holds a reservation on the LUN)`);
        default:
          throw this.#error(op, offset, 'EIO', `${what()}: ${statusName(r.status)}`);
      }
    }
  }

  /** Waits `delay` ms (never past the deadline); returns the next delay. */
  async #backoff(delay: number, deadline: number): Promise<number> {
    const wait = Math.min(delay, Math.max(0, deadline - Date.now()));
    if (wait > 0) await sleep(wait);
    return Math.min(delay * 2, MAX_BACKOFF_MS);
  }

  #error(op: ContainerOp, lunOffset: number, code: string, message: string): ContainerIoError {
    const at = lunOffset < 0 ? -1 : Math.max(0, lunOffset - this.#errorBase);
    // The code in the text too: fault details and logs carry only the message.
    return new ContainerIoError(op, this.path, at, code, `${message} (${code})`);
  }
}

interface ActiveWrite {
  start: number;
  end: number;
  rmw: boolean;
  /** Settles when the write is over; made by the first write that waits for it. */
  done: Promise<void> | undefined;
  release: (() => void) | undefined;
}

const EMPTY_GEOMETRY: LunGeometry = {
  blockSize: 512,
  blocks: 0,
  capacity: 0,
  vendor: '',
  product: '',
  maxTransferBlocks: 1,
  provisioning: { unmap: false, writeSameUnmap: false, readsZeroWhenUnmapped: false },
};

/** Waits for every job, then throws the first failure (no job left running behind an error). */
async function settleAll(jobs: Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(jobs);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/** Runs `fn` over `items` with at most `limit` at once; waits for all, throws the first failure. */
async function runLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { e: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (next < items.length && failure === undefined) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (e) {
        failure ??= { e };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure !== undefined) throw failure.e;
}
