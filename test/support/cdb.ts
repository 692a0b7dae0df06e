// SCSI CDBs and parameter lists built by hand from the standard, for tests
// that send commands to a target: independent of src/scsi, so a wrong field
// there cannot hide in the test.

/** A 10-byte READ/WRITE CDB: opcode, LBA, transfer length. */
function rw10(opcode: number, lba: number, blocks: number): Buffer {
  const c = Buffer.alloc(10);
  c[0] = opcode;
  c.writeUInt32BE(lba, 2);
  c.writeUInt16BE(blocks, 7);
  return c;
}

/** READ(10). */
export const read10 = (lba: number, blocks: number): Buffer => rw10(0x28, lba, blocks);
/** WRITE(10). */
export const write10 = (lba: number, blocks: number): Buffer => rw10(0x2a, lba, blocks);

/** UNMAP (0x42) with a parameter list of `paramLength` bytes. */
export function unmapCdb(paramLength: number): Buffer {
  const c = Buffer.alloc(10);
  c[0] = 0x42;
  c.writeUInt16BE(paramLength, 7);
  return c;
}

/** UNMAP parameter list with one block descriptor (SBC-4 5.32.2): 24 bytes. */
export function unmapList(lba: number, blocks: number): Buffer {
  const b = Buffer.alloc(24);
  b.writeUInt16BE(22, 0);
  b.writeUInt16BE(16, 2);
  b.writeBigUInt64BE(BigInt(lba), 8);
  b.writeUInt32BE(blocks, 16);
  return b;
}
