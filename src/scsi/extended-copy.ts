// EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18): a copy
// manager for block-to-block segments between LUs of this target, addressed
// by identification CSCD descriptors (0xE4) carrying the LU's NAA designator.
// Data moves in bounded chunks through the LUs' BlockDevices.
import { BlockDeviceError } from '../blockdev/block-device.js';
import type { CommandContext, CommandSpec } from './command-spec.js';
import type { LogicalUnitApi } from './lu-api.js';
import { good } from './command-spec.js';
import { ReservationConflictError, ScsiError, SenseKey, Sense, buildSense } from './sense.js';
import type { Asc } from './sense.js';
import type { ScsiResponse } from './port.js';
import { ScsiStatus } from './port.js';

/** What this copy manager accepts (RECEIVE COPY RESULTS OPERATING PARAMETERS, VPD 0x8F). */
export const COPY_LIMITS = {
  maxCscdDescriptors: 8,
  maxSegmentDescriptors: 64,
  /** Bytes of CSCD + segment descriptors in one parameter list. */
  maxDescriptorListLength: 2048,
  /** Bytes one segment may move. */
  maxSegmentLength: 256 << 20,
  totalConcurrentCopies: 16,
  maxIdentifiedConcurrentCopies: 16,
} as const;

/** Copy chunk: bounds the memory a copy holds at once. */
const CHUNK_BYTES = 1 << 20;
/** Held copy results per LU (oldest dropped first). */
const MAX_HELD_RESULTS = 64;

const CSCD_IDENTIFICATION = 0xe4;
const SEG_BLOCK_TO_BLOCK = 0x02;
const DESIGNATOR_NAA = 3;

const copyAborted = (asc: number, ascq: number): Asc => ({ key: SenseKey.CopyAborted, asc, ascq });
/** Unreachable copy target (08/04): bad CSCD index, null CSCD, unknown LU. */
const UNREACHABLE = Sense.unreachableCopyTarget;
/** The copy target refused or failed I/O (0D/02), as Linux LIO reports it. */
const TARGET_NOT_REACHABLE = Sense.copyTargetDeviceNotReachable;
const OPERATION_IN_PROGRESS: Asc = { key: SenseKey.IllegalRequest, asc: 0x00, ascq: 0x16 };

const enum ListIdUsage {
  Hold = 0,
  Reserved = 1,
  NoHold = 2,
  NoListId = 3,
}

interface Cscd {
  offset: number;
  nul: boolean;
  lu: LogicalUnitApi | undefined;
  blockLength: number;
}

interface Segment {
  offset: number;
  src: number;
  dst: number;
  blocks: number;
  dc: boolean;
  srcLba: bigint;
  dstLba: bigint;
}

interface CopyRecord {
  state: 'running' | 'done' | 'failed';
  segmentsProcessed: number;
  bytes: number;
  sense?: Buffer;
}

/** Copy results of one LU by `${nexus id}#${list id}` (list identifiers are per I_T nexus). */
const results = new WeakMap<LogicalUnitApi, Map<string, CopyRecord>>();

function registry(lu: LogicalUnitApi): Map<string, CopyRecord> {
  let m = results.get(lu);
  if (!m) results.set(lu, (m = new Map()));
  return m;
}

function hold(m: Map<string, CopyRecord>, key: string, rec: CopyRecord): void {
  m.delete(key);
  m.set(key, rec);
  while (m.size > MAX_HELD_RESULTS) {
    const oldest = m.keys().next().value as string;
    m.delete(oldest);
  }
}

const plle = (msg: string): ScsiError => new ScsiError(Sense.parameterListLengthError, {}, `EXTENDED COPY: ${msg}`);

/** EXTENDED COPY (0x83, service action 0x00: LID1). */
export async function extendedCopy(ctx: CommandContext): Promise<ScsiResponse> {
  const { cdb, nexus } = ctx.req;
  if ((cdb[1]! & 0x1f) !== 0) throw ScsiError.cdb(1, 4, `EXTENDED COPY service action ${cdb[1]! & 0x1f} (only LID1) is not supported`);
  const paramLen = cdb.readUInt32BE(10);
  if (paramLen === 0) return good();
  const data = ctx.req.dataOut ?? Buffer.alloc(0);
  if (paramLen < 16 || data.length < paramLen) throw plle(`parameter list length ${paramLen} (received ${data.length})`);

  const listId = data[0]!;
  const usage = (data[1]! >> 3) & 3;
  const cscdLen = data.readUInt16BE(2);
  const segLen = data.readUInt32BE(8);
  const inlineLen = data.readUInt32BE(12);
  if (16 + cscdLen + segLen + inlineLen > paramLen) throw plle(`descriptor lengths ${cscdLen}+${segLen}+${inlineLen} exceed the parameter list`);
  if (cscdLen + segLen > COPY_LIMITS.maxDescriptorListLength) throw plle(`descriptor list length ${cscdLen + segLen} > ${COPY_LIMITS.maxDescriptorListLength}`);
  if (usage === ListIdUsage.Reserved) throw ScsiError.param(1, 4, 'LIST ID USAGE 01b is reserved');
  if (usage === ListIdUsage.NoListId && listId !== 0) throw ScsiError.param(0, undefined, 'LIST ID must be 0 with LIST ID USAGE 11b');
  if (inlineLen !== 0) throw ScsiError.param(12, undefined, 'inline data is not supported');

  const cscds = parseCscds(ctx, data, 16, cscdLen);
  const segments = parseSegments(data, 16 + cscdLen, segLen);
  const plans = segments.map((s) => plan(ctx, s, cscds));

  const m = registry(ctx.lu);
  const key = `${nexus.id}#${listId}`;
  if (usage !== ListIdUsage.NoListId && m.get(key)?.state === 'running') {
    throw new ScsiError(OPERATION_IN_PROGRESS, {}, `EXTENDED COPY list ${listId} is already in progress`);
  }
  const rec: CopyRecord = { state: 'running', segmentsProcessed: 0, bytes: 0 };
  const track = usage !== ListIdUsage.NoListId;
  if (track) hold(m, key, rec);
  try {
    for (const p of plans) {
      if (ctx.req.aborted) return { status: ScsiStatus.TaskAborted };
      await copySegment(p, ctx, rec);
      rec.segmentsProcessed++;
    }
  } catch (e) {
    rec.state = 'failed';
    const err = e instanceof ScsiError ? e : new ScsiError(TARGET_NOT_REACHABLE, {}, `EXTENDED COPY: ${(e as Error).message}`);
    rec.sense = buildSense(err.code, false, err.opts);
    if (track && usage === ListIdUsage.NoHold) m.delete(key);
    throw err;
  }
  rec.state = 'done';
  if (track && usage === ListIdUsage.NoHold) m.delete(key);
  return good();
}

function parseCscds(ctx: CommandContext, data: Buffer, start: number, len: number): Cscd[] {
  const found: { offset: number; type: number }[] = [];
  for (let off = start; off < start + len; ) {
    const type = data[off]!;
    found.push({ offset: off, type });
    off += type === 0xea || type === 0xeb ? 64 : 32; // IPv6 and IP copy service descriptors are 64 bytes
    if (off > start + len) throw plle('CSCD descriptor list ends inside a descriptor');
  }
  if (found.length > COPY_LIMITS.maxCscdDescriptors) {
    throw new ScsiError(Sense.tooManyTargetDescriptors, {}, `EXTENDED COPY: ${found.length} CSCD descriptors > ${COPY_LIMITS.maxCscdDescriptors}`);
  }
  return found.map(({ offset, type }) => {
    if (type !== CSCD_IDENTIFICATION) {
      throw new ScsiError(Sense.unsupportedTargetDescriptorType, { field: { inCdb: false, byte: offset } }, `CSCD descriptor type 0x${type.toString(16)} is not supported`);
    }
    // LU ID TYPE (byte 1 bits 7-6) is not checked: the LU is found by its designator, and
    // SPC-4 devices ignore the reserved values (libiscsi ExtendedCopy.ValidTgtDescr expects GOOD).
    const nul = (data[offset + 1]! & 0x20) !== 0;
    const ptype = data[offset + 1]! & 0x1f;
    if (ptype !== 0) throw ScsiError.param(offset + 1, 4, `CSCD peripheral device type ${ptype} is not a block device`);
    const assoc = (data[offset + 5]! >> 4) & 3;
    const dtype = data[offset + 5]! & 0x0f;
    const dlen = data[offset + 7]!;
    if (dlen > 20) throw ScsiError.param(offset + 7, undefined, `CSCD designator length ${dlen} > 20`);
    const blockLength = data.readUIntBE(offset + 29, 3);
    const lu = !nul && dtype === DESIGNATOR_NAA && assoc === 0 ? ctx.lu.target.luByDesignator(data.subarray(offset + 8, offset + 8 + dlen)) : undefined;
    return { offset, nul, lu, blockLength };
  });
}

function parseSegments(data: Buffer, start: number, len: number): Segment[] {
  const found: { offset: number; type: number; length: number }[] = [];
  for (let off = start; off < start + len; ) {
    if (off + 4 > start + len) throw plle('segment descriptor list ends inside a descriptor header');
    const length = data.readUInt16BE(off + 2) + 4;
    found.push({ offset: off, type: data[off]!, length });
    off += length;
    if (off > start + len) throw plle('segment descriptor list ends inside a descriptor');
  }
  if (found.length > COPY_LIMITS.maxSegmentDescriptors) {
    throw new ScsiError(Sense.tooManySegmentDescriptors, {}, `EXTENDED COPY: ${found.length} segment descriptors > ${COPY_LIMITS.maxSegmentDescriptors}`);
  }
  return found.map(({ offset, type, length }) => {
    if (type !== SEG_BLOCK_TO_BLOCK) {
      throw new ScsiError(Sense.unsupportedSegmentDescriptorType, { field: { inCdb: false, byte: offset } }, `segment descriptor type 0x${type.toString(16)} is not supported`);
    }
    if (length !== 28) throw ScsiError.param(offset + 2, undefined, `block-to-block segment descriptor length ${length - 4} is not 24`);
    return {
      offset,
      dc: (data[offset + 1]! & 0x02) !== 0,
      src: data.readUInt16BE(offset + 4),
      dst: data.readUInt16BE(offset + 6),
      blocks: data.readUInt16BE(offset + 10),
      srcLba: data.readBigUInt64BE(offset + 12),
      dstLba: data.readBigUInt64BE(offset + 20),
    };
  });
}

interface Plan {
  src: LogicalUnitApi;
  dst: LogicalUnitApi;
  srcLba: number;
  dstLba: number;
  bytes: number;
}

const readClass: Pick<CommandSpec, 'reservation'> = { reservation: 'read' };
const writeClass: Pick<CommandSpec, 'reservation'> = { reservation: 'write' };

/** Resolve and check one segment before any data moves, so that a bad list changes nothing. */
function plan(ctx: CommandContext, s: Segment, cscds: Cscd[]): Plan {
  const src = resolve(cscds, s.src, 'source');
  const dst = resolve(cscds, s.dst, 'destination');
  const sbs = src.device.blockSize;
  const dbs = dst.device.blockSize;
  const bytes = s.blocks * (s.dc ? dbs : sbs);
  if (bytes % sbs !== 0 || bytes % dbs !== 0) throw new ScsiError(Sense.copyAbortedInvalidParameter, {}, `segment at byte ${s.offset}: ${bytes} bytes is not whole blocks on both devices`);
  if (bytes > COPY_LIMITS.maxSegmentLength) throw new ScsiError(Sense.copyAbortedInvalidParameter, {}, `segment at byte ${s.offset}: ${bytes} bytes > maximum segment length`);
  const srcEnd = s.srcLba + BigInt(bytes / sbs);
  const dstEnd = s.dstLba + BigInt(bytes / dbs);
  if (srcEnd > BigInt(src.device.blockCount)) throw new ScsiError(TARGET_NOT_REACHABLE, {}, `segment at byte ${s.offset}: source lba=${s.srcLba} len=${bytes / sbs} beyond LU ${src.lun}'s capacity`);
  if (dstEnd > BigInt(dst.device.blockCount)) throw new ScsiError(TARGET_NOT_REACHABLE, {}, `segment at byte ${s.offset}: destination lba=${s.dstLba} len=${bytes / dbs} beyond LU ${dst.lun}'s capacity`);
  // The LU that received the command was checked by the dispatcher; other LUs are checked here.
  if (src !== ctx.lu && src.reservations.conflicts(ctx.req, { ...ctx.spec, ...readClass })) throw new ReservationConflictError(`EXTENDED COPY source LU ${src.lun} is reserved`);
  if (dst !== ctx.lu && dst.reservations.conflicts(ctx.req, { ...ctx.spec, ...writeClass })) throw new ReservationConflictError(`EXTENDED COPY destination LU ${dst.lun} is reserved`);
  if (dst.readOnly) throw new ScsiError(copyAborted(0x27, 0x00), {}, `EXTENDED COPY destination LU ${dst.lun} is write protected`);
  return { src, dst, srcLba: Number(s.srcLba), dstLba: Number(s.dstLba), bytes };
}

function resolve(cscds: Cscd[], index: number, what: string): LogicalUnitApi {
  const c = cscds[index];
  if (!c) throw new ScsiError(UNREACHABLE, {}, `${what} CSCD index ${index} does not name a CSCD descriptor`);
  if (c.nul) throw new ScsiError(UNREACHABLE, {}, `${what} CSCD descriptor at byte ${c.offset} is a null device`);
  if (!c.lu) throw new ScsiError(UNREACHABLE, {}, `${what} CSCD descriptor at byte ${c.offset} names no LU of this target`);
  if (c.blockLength !== c.lu.device.blockSize) {
    throw ScsiError.param(c.offset + 29, undefined, `${what} CSCD block length ${c.blockLength} != LU ${c.lu.lun}'s ${c.lu.device.blockSize}`);
  }
  return c.lu;
}

async function copySegment(p: Plan, ctx: CommandContext, rec: CopyRecord): Promise<void> {
  const sbs = p.src.device.blockSize;
  const dbs = p.dst.device.blockSize;
  const unit = Math.max(sbs, dbs);
  const chunk = Math.max(unit, Math.floor(CHUNK_BYTES / unit) * unit);
  // Copy backwards when the destination overlaps the source from above.
  const overlapUp = p.src.device === p.dst.device && p.dstLba > p.srcLba && p.dstLba < p.srcLba + p.bytes / sbs;
  const offsets: number[] = [];
  for (let o = 0; o < p.bytes; o += chunk) offsets.push(o);
  if (overlapUp) offsets.reverse();
  for (const o of offsets) {
    if (ctx.req.aborted) return;
    const n = Math.min(chunk, p.bytes - o);
    try {
      const buf = await p.src.device.read(p.srcLba + o / sbs, n / sbs);
      await p.dst.device.write(p.dstLba + o / dbs, buf);
    } catch (e) {
      if (e instanceof BlockDeviceError) {
        throw new ScsiError(copyAborted(0x0d, 0x01), { information: e.lba }, `EXTENDED COPY: ${e.message}`); // third party device failure
      }
      throw e;
    }
    rec.bytes += n;
  }
}

/** RECEIVE COPY RESULTS (0x84): COPY STATUS, OPERATING PARAMETERS, FAILED SEGMENT DETAILS. */
export function receiveCopyResults(ctx: CommandContext): ScsiResponse {
  const { cdb, nexus } = ctx.req;
  const sa = cdb[1]! & 0x1f;
  const listId = cdb[2]!;
  const alloc = cdb.readUInt32BE(10);
  let data: Buffer;
  switch (sa) {
    case 0x00: {
      const rec = registry(ctx.lu).get(`${nexus.id}#${listId}`);
      if (!rec) throw ScsiError.cdb(2, undefined, `no EXTENDED COPY with list identifier ${listId} from this I_T nexus`);
      data = copyStatus(rec);
      break;
    }
    case 0x03:
      data = operatingParameters(ctx.lu);
      break;
    case 0x04: {
      const rec = registry(ctx.lu).get(`${nexus.id}#${listId}`);
      if (!rec || rec.state === 'running') throw ScsiError.cdb(2, undefined, `no completed EXTENDED COPY with list identifier ${listId}`);
      data = failedSegmentDetails(rec);
      break;
    }
    default:
      throw ScsiError.cdb(1, 4, `RECEIVE COPY RESULTS service action ${sa} is not supported`);
  }
  return good(data.length > alloc ? data.subarray(0, alloc) : data);
}

function copyStatus(rec: CopyRecord): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt32BE(8, 0);
  b[4] = rec.state === 'running' ? 0x00 : rec.state === 'done' ? 0x01 : 0x02;
  b.writeUInt16BE(Math.min(rec.segmentsProcessed, 0xffff), 5);
  // TRANSFER COUNT UNITS: bytes, KiB, MiB, GiB... whatever keeps the count in 32 bits.
  let units = 0;
  let count = rec.bytes;
  while (count > 0xffffffff) {
    count = Math.floor(count / 1024);
    units++;
  }
  b[7] = units;
  b.writeUInt32BE(count, 8);
  return b;
}

function failedSegmentDetails(rec: CopyRecord): Buffer {
  const sense = rec.sense ?? Buffer.alloc(0);
  const b = Buffer.alloc(60 + sense.length);
  b.writeUInt32BE(b.length - 4, 0);
  b[56] = rec.state === 'failed' ? ScsiStatus.CheckCondition : ScsiStatus.Good;
  b.writeUInt16BE(sense.length, 58);
  sense.copy(b, 60);
  return b;
}

function operatingParameters(lu: LogicalUnitApi): Buffer {
  const supported = [SEG_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION];
  const b = Buffer.alloc(44 + supported.length);
  b.writeUInt32BE(b.length - 4, 0);
  b[4] = 0x01; // SNLID: list identifiers are tracked (per I_T nexus)
  b.writeUInt16BE(COPY_LIMITS.maxCscdDescriptors, 8);
  b.writeUInt16BE(COPY_LIMITS.maxSegmentDescriptors, 10);
  b.writeUInt32BE(COPY_LIMITS.maxDescriptorListLength, 12);
  b.writeUInt32BE(COPY_LIMITS.maxSegmentLength, 16);
  // maximum inline data length, held data limit, maximum stream device transfer size: 0
  b.writeUInt16BE(COPY_LIMITS.totalConcurrentCopies, 34);
  b[36] = COPY_LIMITS.maxIdentifiedConcurrentCopies;
  b[37] = Math.log2(lu.device.blockSize); // data segment granularity
  b[43] = supported.length;
  supported.forEach((t, i) => (b[44 + i] = t));
  return b;
}

/** Third-party copy descriptor: type, length, body padded to a multiple of 4. */
function tpcDescriptor(type: number, body: Buffer): Buffer {
  const padded = (body.length + 3) & ~3;
  const d = Buffer.alloc(4 + padded);
  d.writeUInt16BE(type, 0);
  d.writeUInt16BE(padded, 2);
  body.copy(d, 4);
  return d;
}

/** VPD page 0x8F (Third-party Copy), with its 4-byte page header, for the LID1 copy manager (SPC-4 7.8.17). */
export function thirdPartyCopyVpd(lu: LogicalUnitApi): Buffer {
  // Supported commands: EXTENDED COPY(LID1); RECEIVE COPY RESULTS status, operating parameters, failed segment details.
  const commands = Buffer.from([0x83, 1, 0x00, 0x84, 3, 0x00, 0x03, 0x04]);
  const supportedCommands = tpcDescriptor(0x0000, Buffer.concat([Buffer.from([commands.length]), commands]));

  const param = Buffer.alloc(28);
  param.writeUInt16BE(COPY_LIMITS.maxCscdDescriptors, 4);
  param.writeUInt16BE(COPY_LIMITS.maxSegmentDescriptors, 6);
  param.writeUInt32BE(COPY_LIMITS.maxDescriptorListLength, 8);
  // maximum inline data length (12-15): 0
  const parameterData = tpcDescriptor(0x0004, param);

  const supportedDescriptors = tpcDescriptor(0x0008, Buffer.from([2, SEG_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION]));
  const supportedCscdIds = tpcDescriptor(0x000c, Buffer.from([0, 0])); // no special CSCD IDs

  const general = Buffer.alloc(32);
  general.writeUInt32BE(COPY_LIMITS.totalConcurrentCopies, 0);
  general.writeUInt32BE(COPY_LIMITS.maxIdentifiedConcurrentCopies, 4);
  general.writeUInt32BE(COPY_LIMITS.maxSegmentLength, 8);
  general[12] = Math.log2(lu.device.blockSize); // data segment granularity
  general[13] = 0; // inline data granularity: no inline data
  const generalCopy = tpcDescriptor(0x8001, general);

  const body = Buffer.concat([supportedCommands, parameterData, supportedDescriptors, supportedCscdIds, generalCopy]);
  const page = Buffer.alloc(4 + body.length);
  page[1] = 0x8f;
  page.writeUInt16BE(body.length, 2);
  body.copy(page, 4);
  return page;
}
