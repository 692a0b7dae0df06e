// CDB field decoding shared by the command families (SBC-4 5.x, SPC-4 4.2).
// All decoders are pure functions of the CDB bytes; range checks against the
// device capacity live in checkLbaRange so every command reports 21/00 alike.
import { ScsiError, Sense } from './sense.js';

/** LBA and transfer length of a READ/WRITE-style CDB. `lba` is a bigint so that 64-bit LBAs survive until the range check. */
export interface LbaRange {
  lba: bigint;
  blocks: number;
}

/** READ(6)/WRITE(6): 21-bit LBA, 8-bit length where 0 means 256 blocks. */
export function rw6(cdb: Buffer): LbaRange {
  const lba = ((cdb[1]! & 0x1f) << 16) | (cdb[2]! << 8) | cdb[3]!;
  const len = cdb[4]!;
  return { lba: BigInt(lba), blocks: len === 0 ? 256 : len };
}

/** 10-byte form: LBA in bytes 2-5, length in bytes 7-8. */
export function rw10(cdb: Buffer): LbaRange {
  return { lba: BigInt(cdb.readUInt32BE(2)), blocks: cdb.readUInt16BE(7) };
}

/** 12-byte form: LBA in bytes 2-5, length in bytes 6-9. */
export function rw12(cdb: Buffer): LbaRange {
  return { lba: BigInt(cdb.readUInt32BE(2)), blocks: cdb.readUInt32BE(6) };
}

/** 16-byte form: LBA in bytes 2-9, length in bytes 10-13. */
export function rw16(cdb: Buffer): LbaRange {
  return { lba: cdb.readBigUInt64BE(2), blocks: cdb.readUInt32BE(10) };
}

/** Decode by CDB length (6, 10, 12 or 16). */
export function lbaRange(cdb: Buffer, cdbLength: number): LbaRange {
  switch (cdbLength) {
    case 6:
      return rw6(cdb);
    case 10:
      return rw10(cdb);
    case 12:
      return rw12(cdb);
    default:
      return rw16(cdb);
  }
}

/** GROUP NUMBER field (low 5 bits of byte 6 in 10-byte CDBs, byte 10 in 12-byte, byte 14 in 16-byte). */
export function groupNumber(cdb: Buffer, cdbLength: number): number {
  const at = cdbLength === 10 ? 6 : cdbLength === 12 ? 10 : cdbLength === 16 ? 14 : -1;
  return at < 0 ? 0 : cdb[at]! & 0x1f;
}

/**
 * Check an LBA range against the capacity (SBC-4 4.5): LBA OUT OF RANGE when
 * the first LBA or lba + blocks goes past the last block. A zero-length
 * transfer is allowed at any LBA up to the capacity.
 * Returns the LBA as a number (always safe once within capacity).
 */
export function checkLbaRange(lba: bigint, blocks: number, blockCount: number): number {
  const cap = BigInt(blockCount);
  if (lba > cap || lba + BigInt(blocks) > cap) {
    throw new ScsiError(Sense.lbaOutOfRange, { information: lba }, `lba ${lba} + ${blocks} blocks beyond capacity ${blockCount}`);
  }
  return Number(lba);
}

/**
 * The CONTROL byte (last CDB byte): NACA (bit 2) and LINK (bit 0) are not
 * supported, so either set is INVALID FIELD IN CDB (SAM-5 5.2).
 */
export function checkControlByte(cdb: Buffer, cdbLength: number): void {
  const at = cdbLength - 1;
  const c = cdb[at] ?? 0;
  if (c & 0x04) throw ScsiError.cdb(at, 2, 'NACA is not supported');
  if (c & 0x01) throw ScsiError.cdb(at, 0, 'linked commands are not supported');
}

/** Reserved bits of a CDB byte must be zero: `mask` selects the reserved bits. */
export function checkReserved(cdb: Buffer, byte: number, mask: number): void {
  const v = (cdb[byte] ?? 0) & mask;
  if (v !== 0) throw ScsiError.cdb(byte, 31 - Math.clz32(v));
}

/** Allocation length helpers (SPC-4 4.2.5.6). */
export function alloc16(cdb: Buffer, at: number): number {
  return cdb.readUInt16BE(at);
}

export function alloc32(cdb: Buffer, at: number): number {
  return cdb.readUInt32BE(at);
}

/** Clip a response to the allocation length without copying. */
export function clip(data: Buffer, allocationLength: number): Buffer {
  return data.length > allocationLength ? data.subarray(0, allocationLength) : data;
}
