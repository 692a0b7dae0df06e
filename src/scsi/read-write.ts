// Medium access commands (SBC-4 5.x): READ, WRITE, WRITE AND VERIFY, VERIFY,
// PRE-FETCH, SYNCHRONIZE CACHE, ORWRITE, WRITE ATOMIC, COMPARE AND WRITE.
//
// Write data: the handler writes only the whole blocks it received. If the
// initiator sent less than the CDB asked for (iSCSI EDTL < transfer length),
// the blocks never received are left untouched rather than filled with
// garbage, and dataOutLength tells the transport to report the residual.
import type { WriteOptions } from '../blockdev/block-device.js';
import { checkLbaRange, lbaRange } from './cdb.js';
import type { CommandContext } from './command-spec.js';
import { good } from './command-spec.js';
import type { LogicalUnitApi } from './lu-api.js';
import { ScsiError, Sense } from './sense.js';
import type { ScsiResponse } from './port.js';
import { ScsiStatus } from './port.js';

/** Byte of the TRANSFER LENGTH field, for field pointers. */
function lengthByte(cdbLength: number): number {
  return cdbLength === 6 ? 4 : cdbLength === 10 ? 7 : cdbLength === 12 ? 6 : 10;
}

/** RDPROTECT / WRPROTECT / VRPROTECT / ORPROTECT (byte 1 bits 7-5): no protection information, so non-zero is invalid. */
function checkProtect(cdb: Buffer, cdbLength: number): void {
  if (cdbLength > 6 && cdb[1]! & 0xe0) throw ScsiError.cdb(1, 7, 'protection information is not supported');
}

interface Decoded {
  lu: LogicalUnitApi;
  lba: number;
  blocks: number;
}

function decode(ctx: CommandContext, maxBlocks?: number): Decoded {
  const lu = ctx.lu;
  const len = ctx.spec.cdbLength;
  const { cdb } = ctx.req;
  checkProtect(cdb, len);
  let lba: number;
  let blocks: number;
  const count = lu.device.blockCount;
  // READ/WRITE(10) and (16) with an LBA below 2^53 in range: plain numbers, no BigInt per command.
  if (len === 10) {
    lba = cdb.readUInt32BE(2);
    blocks = cdb.readUInt16BE(7);
  } else if (len === 16 && cdb.readUInt32BE(2) < 0x200000) {
    lba = cdb.readUInt32BE(2) * 0x1_0000_0000 + cdb.readUInt32BE(6);
    blocks = cdb.readUInt32BE(10);
  } else {
    lba = -1;
    blocks = 0;
  }
  if (lba < 0 || lba + blocks > count) {
    // Every other form, and every out-of-range one: the general decoder reports it.
    const r = lbaRange(cdb, len);
    lba = checkLbaRange(r.lba, r.blocks, count);
    blocks = r.blocks;
  }
  const max = maxBlocks ?? lu.limits.maxTransferBlocks;
  if (blocks > max) throw ScsiError.cdb(lengthByte(len), undefined, `transfer length ${blocks} exceeds the maximum ${max}`);
  return { lu, lba, blocks };
}

function writeOptions(ctx: CommandContext, lu: LogicalUnitApi): WriteOptions {
  // FUA (byte 1 bit 3) in 10/12/16-byte CDBs; with WCE=0 every write is durable before status
  const fua = (ctx.spec.cdbLength > 6 && (ctx.req.cdb[1]! & 0x08) !== 0) || !lu.mode.writeCacheEnabled;
  return fua ? FUA : BUFFERED;
}

const FUA: WriteOptions = Object.freeze({ fua: true });
const BUFFERED: WriteOptions = Object.freeze({});

/** READ(6/10/12/16): answered in the same turn when the device can read inline (readNow). */
export function read(ctx: CommandContext): ScsiResponse | Promise<ScsiResponse> {
  const { lu, lba, blocks } = decode(ctx);
  if (blocks === 0) return good();
  const device = lu.device;
  const now = device.readNow?.(lba, blocks);
  return now !== undefined ? good(now) : device.read(lba, blocks).then(good);
}

/** The whole blocks of Data-Out received, at most `blocks`. */
function receivedBlocks(dataOut: Buffer | null, blockSize: number, blocks: number): Buffer | undefined {
  if (!dataOut) return undefined;
  const n = Math.min(blocks, Math.floor(dataOut.length / blockSize));
  return n > 0 ? dataOut.subarray(0, n * blockSize) : undefined;
}

/** WRITE(6/10/12/16): answered in the same turn when the device can write inline (writeNow). */
export function write(ctx: CommandContext): ScsiResponse | Promise<ScsiResponse> {
  const { lu, lba, blocks } = decode(ctx);
  const device = lu.device;
  const bs = device.blockSize;
  const res: ScsiResponse = { status: ScsiStatus.Good, dataOutLength: blocks * bs };
  const data = receivedBlocks(ctx.req.dataOut, bs, blocks);
  if (!data) return res;
  const opts = writeOptions(ctx, lu);
  if (device.writeNow?.(lba, data, opts) === true) return res;
  return device.write(lba, data, opts).then(() => res);
}

/** BYTCHK field (byte 1 bits 2-1) of VERIFY and WRITE AND VERIFY. */
function bytchk(cdb: Buffer): number {
  return (cdb[1]! >> 1) & 0x03;
}

/** WRITE AND VERIFY(10/12/16): the data is written durably; comparing it with itself cannot fail. */
export async function writeAndVerify(ctx: CommandContext): Promise<ScsiResponse> {
  const b = bytchk(ctx.req.cdb);
  if (b === 2 || b === 3) throw ScsiError.cdb(1, 2, `BYTCHK ${b} is not supported for WRITE AND VERIFY`);
  const { lu, lba, blocks } = decode(ctx);
  const bs = lu.device.blockSize;
  const res: ScsiResponse = { status: ScsiStatus.Good, dataOutLength: blocks * bs };
  const data = receivedBlocks(ctx.req.dataOut, bs, blocks);
  if (data) await lu.device.write(lba, data, { fua: true });
  return res;
}

/** Offset of the first differing byte, or -1. */
function firstDifference(a: Buffer, b: Buffer, length: number): number {
  if (a.subarray(0, length).equals(b.subarray(0, length))) return -1;
  for (let i = 0; i < length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

function miscompare(offset: number, what: string): ScsiError {
  return new ScsiError(Sense.miscompareDuringVerify, { information: offset }, `${what}: miscompare at byte offset ${offset}`);
}

/** VERIFY(10/12/16): BYTCHK 0 reads the medium, 1 compares Data-Out, 3 compares one block against every block. */
export async function verify(ctx: CommandContext): Promise<ScsiResponse> {
  const b = bytchk(ctx.req.cdb);
  if (b === 2) throw ScsiError.cdb(1, 2, 'BYTCHK 2 is reserved');
  const { lu, lba, blocks } = decode(ctx);
  const bs = lu.device.blockSize;
  const dataOutLength = b === 0 ? undefined : b === 1 ? blocks * bs : bs;
  const res: ScsiResponse = dataOutLength === undefined ? { status: ScsiStatus.Good } : { status: ScsiStatus.Good, dataOutLength };
  if (blocks === 0) return res;
  const stored = await lu.device.read(lba, blocks);
  if (b === 0) return res;
  const data = ctx.req.dataOut ?? Buffer.alloc(0);
  if (b === 1) {
    const at = firstDifference(stored, data, Math.min(stored.length, data.length));
    if (at >= 0) throw miscompare(at, 'VERIFY');
    return res;
  }
  const pattern = data.subarray(0, Math.min(bs, data.length));
  for (let i = 0; i < blocks; i++) {
    const at = firstDifference(stored.subarray(i * bs, (i + 1) * bs), pattern, pattern.length);
    if (at >= 0) throw miscompare(i * bs + at, 'VERIFY');
  }
  return res;
}

/** PRE-FETCH(10/16): there is no cache to load, so GOOD once the range is valid. */
export function preFetch(ctx: CommandContext): ScsiResponse {
  const lu = ctx.lu;
  const r = lbaRange(ctx.req.cdb, ctx.spec.cdbLength);
  checkLbaRange(r.lba, r.blocks, lu.device.blockCount);
  return good();
}

/** SYNCHRONIZE CACHE(10/16): flush the whole device (ranges are checked, not used). */
export async function synchronizeCache(ctx: CommandContext): Promise<ScsiResponse> {
  const lu = ctx.lu;
  const r = lbaRange(ctx.req.cdb, ctx.spec.cdbLength);
  checkLbaRange(r.lba, r.blocks, lu.device.blockCount);
  await lu.device.flush();
  return good();
}

/** COMPARE AND WRITE 0x89: atomic against every other command of the LU. */
export async function compareAndWrite(ctx: CommandContext): Promise<ScsiResponse> {
  const lu = ctx.lu;
  const { cdb } = ctx.req;
  checkProtect(cdb, 16);
  const blocks = cdb[13]!;
  const lba = checkLbaRange(cdb.readBigUInt64BE(2), blocks, lu.device.blockCount);
  if (blocks > lu.limits.maxCompareAndWriteBlocks) throw ScsiError.cdb(13, undefined, `COMPARE AND WRITE of ${blocks} blocks exceeds ${lu.limits.maxCompareAndWriteBlocks}`);
  const bs = lu.device.blockSize;
  const need = 2 * blocks * bs;
  const res: ScsiResponse = { status: ScsiStatus.Good, dataOutLength: need };
  const data = ctx.req.dataOut;
  // the verify and write halves must both be there: a short or long buffer is an error, not a partial write
  if (ctx.req.expectedLength !== need || (need > 0 && (!data || data.length < need))) {
    throw ScsiError.cdb(13, undefined, `COMPARE AND WRITE needs ${need} bytes of Data-Out, initiator declared ${ctx.req.expectedLength}`);
  }
  if (blocks === 0 || !data) return res;
  const half = blocks * bs;
  const opts = writeOptions(ctx, lu);
  const device = lu.device;
  await lu.exclusive(async () => {
    // A device that does the whole operation itself makes it atomic beyond
    // this LU (other agents exporting the vdisk); still inside the exclusion.
    if (device.compareAndWrite !== undefined) {
      const at = await device.compareAndWrite(lba, data.subarray(0, half), data.subarray(half, need), opts);
      if (at >= 0) throw miscompare(at, 'COMPARE AND WRITE');
      return;
    }
    const stored = await device.read(lba, blocks);
    const at = firstDifference(stored, data, half);
    if (at >= 0) throw miscompare(at, 'COMPARE AND WRITE');
    await device.write(lba, data.subarray(half, need), opts);
  });
  return res;
}

/** ORWRITE(16) 0x8b: medium := medium OR Data-Out, atomically. */
export async function orWrite(ctx: CommandContext): Promise<ScsiResponse> {
  const { lu, lba, blocks } = decode(ctx);
  const bs = lu.device.blockSize;
  const res: ScsiResponse = { status: ScsiStatus.Good, dataOutLength: blocks * bs };
  const data = receivedBlocks(ctx.req.dataOut, bs, blocks);
  if (!data) return res;
  const n = data.length / bs;
  const opts = writeOptions(ctx, lu);
  await lu.exclusive(async () => {
    const stored = await lu.device.read(lba, n);
    for (let i = 0; i < stored.length; i++) stored[i] = stored[i]! | data[i]!;
    await lu.device.write(lba, stored, opts);
  });
  return res;
}

/** WRITE ATOMIC(16) 0x9c: within the VPD 0xB0 atomic limits, written while no other command runs. */
export async function writeAtomic(ctx: CommandContext): Promise<ScsiResponse> {
  const lu = ctx.lu;
  const { cdb } = ctx.req;
  checkProtect(cdb, 16);
  if (cdb.readUInt16BE(10) !== 0) throw ScsiError.cdb(10, undefined, 'atomic boundaries are not supported');
  const blocks = cdb.readUInt16BE(12);
  const lba = checkLbaRange(cdb.readBigUInt64BE(2), blocks, lu.device.blockCount);
  const l = lu.limits;
  if (blocks > l.maxAtomicBlocks) throw ScsiError.cdb(12, undefined, `WRITE ATOMIC of ${blocks} blocks exceeds ${l.maxAtomicBlocks}`);
  if (l.atomicAlignment > 1 && lba % l.atomicAlignment !== 0) throw ScsiError.cdb(2, undefined, 'WRITE ATOMIC lba is not aligned');
  if (l.atomicGranularity > 1 && blocks % l.atomicGranularity !== 0) throw ScsiError.cdb(12, undefined, 'WRITE ATOMIC length is not a multiple of the granularity');
  const bs = lu.device.blockSize;
  const res: ScsiResponse = { status: ScsiStatus.Good, dataOutLength: blocks * bs };
  if (blocks === 0) return res;
  const data = ctx.req.dataOut;
  // atomic means all or nothing: a short buffer is refused rather than partly written
  if (!data || data.length < blocks * bs) throw ScsiError.cdb(12, undefined, `WRITE ATOMIC got ${data?.length ?? 0} of ${blocks * bs} bytes`);
  const opts = writeOptions(ctx, lu);
  await lu.exclusive(() => lu.device.write(lba, data.subarray(0, blocks * bs), opts));
  return res;
}
