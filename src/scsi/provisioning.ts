// Logical block provisioning (SBC-4 4.7, 5.x): UNMAP, WRITE SAME(10/16),
// GET LBA STATUS. Anchored LBAs are not supported (ANC_SUP=0).
import { alloc32, checkLbaRange, clip } from './cdb.js';
import type { CommandContext } from './command-spec.js';
import { good } from './command-spec.js';
import { ScsiError, Sense } from './sense.js';
import type { ScsiResponse } from './port.js';
import { ScsiStatus } from './port.js';

/** Bytes written per device call when WRITE SAME repeats a non-zero pattern. */
const PATTERN_CHUNK_BYTES = 1 << 20;

/** UNMAP 0x42. */
export async function unmap(ctx: CommandContext): Promise<ScsiResponse> {
  const lu = ctx.lu;
  const { cdb } = ctx.req;
  if (!lu.device.thin) throw new ScsiError(Sense.invalidOpcode, {}, 'UNMAP on a fully provisioned LU');
  if (cdb[1]! & 0x01) throw ScsiError.cdb(1, 0, 'anchored LBAs are not supported');
  const listLength = cdb.readUInt16BE(7);
  const res: ScsiResponse = { status: ScsiStatus.Good, dataOutLength: listLength };
  if (listLength === 0) return res;
  const data = (ctx.req.dataOut ?? Buffer.alloc(0)).subarray(0, listLength);
  if (data.length < 8) throw new ScsiError(Sense.parameterListLengthError, {}, `UNMAP parameter list of ${data.length} bytes`);
  const descLength = Math.min(data.readUInt16BE(2), data.length - 8);
  const count = Math.floor(descLength / 16);
  const l = lu.limits;
  if (count > l.maxUnmapDescriptors) throw ScsiError.param(2, undefined, `${count} UNMAP descriptors exceed ${l.maxUnmapDescriptors}`);
  const ranges: Array<[number, number]> = [];
  let total = 0;
  // validate every descriptor before unmapping anything
  for (let i = 0; i < count; i++) {
    const off = 8 + i * 16;
    const blocks = data.readUInt32BE(off + 8);
    const lba = checkLbaRange(data.readBigUInt64BE(off), blocks, lu.device.blockCount);
    total += blocks;
    if (blocks > l.maxUnmapBlocks || total > l.maxUnmapBlocks) throw ScsiError.param(off + 8, undefined, `UNMAP of ${total} blocks exceeds ${l.maxUnmapBlocks}`);
    if (blocks > 0) ranges.push([lba, blocks]);
  }
  for (const [lba, blocks] of ranges) await lu.device.unmap(lba, blocks);
  return res;
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** WRITE SAME(10) 0x41 and WRITE SAME(16) 0x93. */
export async function writeSame(ctx: CommandContext): Promise<ScsiResponse> {
  const lu = ctx.lu;
  const { cdb } = ctx.req;
  const sixteen = ctx.spec.cdbLength === 16;
  if (cdb[1]! & 0xe0) throw ScsiError.cdb(1, 7, 'protection information is not supported');
  if (cdb[1]! & 0x10) throw ScsiError.cdb(1, 4, 'anchored LBAs are not supported');
  const unmapBit = (cdb[1]! & 0x08) !== 0;
  const ndob = sixteen && (cdb[1]! & 0x01) !== 0;
  const lbaField = sixteen ? cdb.readBigUInt64BE(2) : BigInt(cdb.readUInt32BE(2));
  const blocks = sixteen ? cdb.readUInt32BE(10) : cdb.readUInt16BE(7);
  const lengthByte = sixteen ? 10 : 7;
  const lba = checkLbaRange(lbaField, Math.max(blocks, 1), lu.device.blockCount);
  // WSNZ=0 in VPD 0xB0: zero blocks means from the starting LBA to the end of the medium.
  const count = blocks === 0 ? lu.device.blockCount - lba : blocks;
  if (count > lu.limits.maxWriteSameBlocks) throw ScsiError.cdb(lengthByte, undefined, `WRITE SAME of ${count} blocks exceeds ${lu.limits.maxWriteSameBlocks}`);
  const bs = lu.device.blockSize;
  const res: ScsiResponse = { status: ScsiStatus.Good, dataOutLength: ndob ? 0 : bs };
  let pattern: Buffer | undefined;
  if (!ndob) {
    // exactly one block of Data-Out: anything else is a malformed command, not a partial write
    const data = ctx.req.dataOut;
    if (ctx.req.expectedLength !== bs || !data || data.length < bs) {
      throw ScsiError.cdb(lengthByte, undefined, `WRITE SAME needs ${bs} bytes of Data-Out, initiator declared ${ctx.req.expectedLength}`);
    }
    pattern = data.subarray(0, bs);
  }
  // UNMAP on a thin LU deallocates whatever the pattern (as LIO and tgt do, and
  // initiators expect: with LBPRZ the range then reads as zeros).
  if (!pattern || isZero(pattern) || (unmapBit && lu.device.thin)) {
    await lu.device.writeZeroes(lba, count, unmapBit && lu.device.thin);
    return res;
  }
  const perChunk = Math.max(1, Math.min(count, Math.floor(PATTERN_CHUNK_BYTES / bs)));
  const chunk = Buffer.allocUnsafe(perChunk * bs);
  for (let i = 0; i < perChunk; i++) pattern.copy(chunk, i * bs);
  const opts = lu.mode.writeCacheEnabled ? {} : { fua: true };
  for (let done = 0; done < count; ) {
    const n = Math.min(perChunk, count - done);
    await lu.device.write(lba + done, n === perChunk ? chunk : chunk.subarray(0, n * bs), opts);
    done += n;
  }
  return res;
}

/** Most descriptors one GET LBA STATUS returns (bounds work per command). */
const MAX_LBA_STATUS_DESCRIPTORS = 512;

/** GET LBA STATUS 0x9e/0x12: mapped / deallocated extents from the starting LBA. */
export async function getLbaStatus(ctx: CommandContext): Promise<ScsiResponse> {
  const lu = ctx.lu;
  const { cdb } = ctx.req;
  const start = cdb.readBigUInt64BE(2);
  const allocation = alloc32(cdb, 10);
  const count = lu.device.blockCount;
  if (start >= BigInt(count)) throw new ScsiError(Sense.lbaOutOfRange, { information: start }, `GET LBA STATUS at ${start} beyond ${count} blocks`);
  const want = Math.max(1, Math.min(MAX_LBA_STATUS_DESCRIPTORS, Math.floor((allocation - 8) / 16)));
  const descs: Buffer[] = [];
  let lba = Number(start);
  while (descs.length < want && lba < count) {
    const st = await lu.device.provisioning(lba, Math.min(count - lba, 0xffffffff));
    const blocks = Math.max(1, Math.min(st.blocks, count - lba));
    const d = Buffer.alloc(16);
    d.writeBigUInt64BE(BigInt(lba), 0);
    d.writeUInt32BE(blocks, 8);
    d[12] = st.mapped ? 0 : 1;
    descs.push(d);
    lba += blocks;
  }
  const out = Buffer.alloc(8 + descs.length * 16);
  out.writeUInt32BE(out.length - 4, 0);
  descs.forEach((d, i) => d.copy(out, 8 + i * 16));
  return good(clip(out, allocation));
}
