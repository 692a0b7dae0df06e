// READ CAPACITY(10) and READ CAPACITY(16) (SBC-4 5.20, 5.21).
import { alloc32, clip } from './cdb.js';
import type { CommandContext } from './command-spec.js';
import { good } from './command-spec.js';
import { ScsiError } from './sense.js';
import type { ScsiResponse } from './port.js';

/** READ CAPACITY(10) 0x25: last LBA (0xFFFFFFFF when it does not fit) and block length. */
export function readCapacity10(ctx: CommandContext): ScsiResponse {
  const { cdb } = ctx.req;
  const pmi = (cdb[8]! & 0x01) !== 0;
  if (!pmi && cdb.readUInt32BE(2) !== 0) throw ScsiError.cdb(2, undefined, 'LOGICAL BLOCK ADDRESS must be zero when PMI is zero');
  const dev = ctx.lu.device;
  const b = Buffer.alloc(8);
  const last = dev.blockCount - 1;
  b.writeUInt32BE(last > 0xfffffffe ? 0xffffffff : last, 0);
  b.writeUInt32BE(dev.blockSize, 4);
  return good(b);
}

/** READ CAPACITY(16) 0x9e/0x10: adds LBPME/LBPRZ and the physical block exponent. */
export function readCapacity16(ctx: CommandContext): ScsiResponse {
  const { cdb } = ctx.req;
  const allocation = alloc32(cdb, 10);
  const dev = ctx.lu.device;
  const b = Buffer.alloc(32);
  b.writeBigUInt64BE(BigInt(dev.blockCount - 1), 0);
  b.writeUInt32BE(dev.blockSize, 8);
  b[12] = 0; // no protection information
  // One logical block per physical block. Reporting 4 KiB physical blocks under 512-byte
  // logical ones would be truer of the page cache, but GET LBA STATUS then could not both
  // follow SBC (the first descriptor contains the starting LBA) and satisfy initiators that
  // expect physical-block-aligned extents (libiscsi GetLBAStatus.UnmapSingle).
  b[13] = 0;
  // LBPME when the device can deallocate; LBPRZ: deallocated blocks read as zeros
  b[14] = dev.thin ? 0xc0 : 0;
  return good(clip(b, allocation));
}
