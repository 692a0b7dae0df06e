// CDB builders for the commands an initiator's user needs most (SBC-3, SPC-4),
// and the sense fields it looks at. Plain bytes: no transport here.

export const enum ScsiStatus {
  Good = 0x00,
  CheckCondition = 0x02,
  Busy = 0x08,
  ReservationConflict = 0x18,
  TaskSetFull = 0x28,
}

export function testUnitReadyCdb(): Buffer {
  return Buffer.alloc(6);
}

/** INQUIRY (standard data, or the VPD page when page is given). */
export function inquiryCdb(allocation: number, page?: number): Buffer {
  const cdb = Buffer.alloc(6);
  cdb[0] = 0x12;
  if (page !== undefined) {
    cdb[1] = 0x01;
    cdb[2] = page;
  }
  cdb.writeUInt16BE(allocation, 3);
  return cdb;
}

export function readCapacity16Cdb(allocation = 32): Buffer {
  const cdb = Buffer.alloc(16);
  cdb[0] = 0x9e;
  cdb[1] = 0x10;
  cdb.writeUInt32BE(allocation, 10);
  return cdb;
}

function rw16(op: number, lba: bigint | number, blocks: number, fua: boolean): Buffer {
  const cdb = Buffer.alloc(16);
  cdb[0] = op;
  if (fua) cdb[1] = 0x08;
  cdb.writeBigUInt64BE(BigInt(lba), 2);
  cdb.writeUInt32BE(blocks, 10);
  return cdb;
}

export function read16Cdb(lba: bigint | number, blocks: number, fua = false): Buffer {
  return rw16(0x88, lba, blocks, fua);
}

export function write16Cdb(lba: bigint | number, blocks: number, fua = false): Buffer {
  return rw16(0x8a, lba, blocks, fua);
}

/** SYNCHRONIZE CACHE(16) of the whole LU (blocks 0 = to the end). */
export function synchronizeCache16Cdb(lba: bigint | number = 0, blocks = 0): Buffer {
  return rw16(0x91, lba, blocks, false);
}

/** Sense key (fixed or descriptor format), or undefined without sense. */
export function senseKey(sense: Buffer | undefined): number | undefined {
  if (!sense || sense.length < 2) return undefined;
  const code = sense[0]! & 0x7f;
  if (code === 0x72 || code === 0x73) return sense[1]! & 0x0f;
  return sense.length > 2 ? sense[2]! & 0x0f : undefined;
}

/** [ASC, ASCQ] (fixed or descriptor format), or undefined. */
export function senseCode(sense: Buffer | undefined): [number, number] | undefined {
  if (!sense || sense.length < 2) return undefined;
  const code = sense[0]! & 0x7f;
  if (code === 0x72 || code === 0x73) return sense.length >= 4 ? [sense[2]!, sense[3]!] : undefined;
  return sense.length >= 14 ? [sense[12]!, sense[13]!] : undefined;
}
