// Encoding of typed PDUs into wire bytes (RFC 7143 section 11), as an iovec
// list for socket.writev/cork: the payload Buffer is passed through, never copied.
import { dataDigest, headerDigest, writeDigest } from './digest.js';
import { DIGEST_LENGTH, MAX_AHS_BYTES, MAX_DATA_SEGMENT_LENGTH, ZERO_PADS, padLength } from './layout.js';
import { PduError } from './pdu-error.js';
import { AhsType, BHS_LENGTH, Opcode, RESERVED_TAG, RejectReason } from './types.js';
import type { AhsSegment, DigestSettings, Pdu, ScsiCommandPdu } from './types.js';

/**
 * The PDU as wire bytes: [BHS + AHS (+ header digest)], then, when the data
 * segment is non-empty, [data] (pdu.data itself) and [padding (+ data digest)]
 * when that is non-empty. The padding buffers without a digest are shared
 * constants: callers must not write into the returned buffers.
 */
export function encodePdu(pdu: Pdu, digests: DigestSettings): Buffer[] {
  const header = buildHeader(pdu, digests.header ? DIGEST_LENGTH : 0);
  if (digests.header) {
    const end = header.length - DIGEST_LENGTH;
    writeDigest(header, end, headerDigest(header.subarray(0, end)));
  }
  const data = pdu.data;
  if (data.length === 0) return [header];
  const pad = padLength(data.length);
  if (!digests.data) return pad === 0 ? [header, data] : [header, data, ZERO_PADS[pad]!];
  const tail = Buffer.allocUnsafe(pad + DIGEST_LENGTH);
  tail.fill(0, 0, pad);
  writeDigest(tail, pad, dataDigest(data));
  return [header, data, tail];
}

/** BHS + AHS of the PDU (48 bytes plus TotalAHSLength*4), without digest. */
export function encodeHeader(pdu: Pdu): Buffer {
  return buildHeader(pdu, 0);
}

/**
 * The data segment of a SCSI Response carrying sense data (11.4.7):
 * 2-byte SenseLength followed by the sense bytes. Empty sense gives an empty
 * segment, since a response without sense carries no data segment.
 */
export function senseSegment(sense: Buffer): Buffer {
  if (sense.length === 0) return Buffer.alloc(0);
  if (sense.length > 0xffff) throw new RangeError(`sense data of ${sense.length} bytes exceeds SenseLength (16 bits)`);
  const out = Buffer.allocUnsafe(2 + sense.length);
  out.writeUInt16BE(sense.length, 0);
  sense.copy(out, 2);
  return out;
}

/**
 * The data segment of a Reject (11.17.1): a copy of the rejected PDU's 48-byte
 * BHS, so it outlives the receive buffer it came from.
 */
export function rejectData(header: Buffer): Buffer {
  if (header.length < BHS_LENGTH) {
    throw new PduError(RejectReason.ProtocolError, `Reject data needs the 48-byte BHS, got ${header.length} bytes`);
  }
  return Buffer.from(header.subarray(0, BHS_LENGTH));
}

/** Opcodes whose byte 0 carries the I (immediate) bit; for the rest it is reserved. */
function hasImmediateBit(op: Opcode): boolean {
  return (
    op === Opcode.NopOut ||
    op === Opcode.ScsiCommand ||
    op === Opcode.TaskMgmtRequest ||
    op === Opcode.LoginRequest ||
    op === Opcode.TextRequest ||
    op === Opcode.LogoutRequest
  );
}

function segmentSize(dataLength: number): number {
  return (3 + dataLength + 3) & ~3;
}

/** Whether an AHS from pdu.ahs is emitted as is (for SCSI Command, types 1 and 2 come from cdb/bidiReadLength). */
function passThrough(pdu: Pdu, seg: AhsSegment): boolean {
  return pdu.opcode !== Opcode.ScsiCommand || (seg.type !== AhsType.ExtendedCdb && seg.type !== AhsType.BidiReadLength);
}

function ahsBytes(pdu: Pdu): number {
  let n = 0;
  if (pdu.opcode === Opcode.ScsiCommand) {
    if (pdu.cdb.length > 16) n += segmentSize(pdu.cdb.length - 15);
    if (pdu.bidiReadLength !== undefined) n += segmentSize(5);
  }
  for (const seg of pdu.ahs) {
    if (!passThrough(pdu, seg)) continue;
    if (seg.data.length > 0xffff) {
      throw new PduError(RejectReason.InvalidPduField, `opcode 0x${pdu.opcode.toString(16)}: AHS type ${seg.type} of ${seg.data.length} bytes exceeds AHSLength (16 bits)`);
    }
    n += segmentSize(seg.data.length);
  }
  if (n > MAX_AHS_BYTES) {
    throw new PduError(RejectReason.InvalidPduField, `opcode 0x${pdu.opcode.toString(16)}: ${n} bytes of AHS exceed TotalAHSLength (${MAX_AHS_BYTES})`);
  }
  return n;
}

function writeSegment(buf: Buffer, off: number, type: number, len: number): number {
  buf.writeUInt16BE(len, off);
  buf[off + 2] = type;
  const size = segmentSize(len);
  buf.fill(0, off + 3 + len, off + size);
  return off + size;
}

function writeAhs(buf: Buffer, pdu: Pdu): void {
  let off = BHS_LENGTH;
  if (pdu.opcode === Opcode.ScsiCommand) {
    if (pdu.cdb.length > 16) {
      const start = off;
      off = writeSegment(buf, off, AhsType.ExtendedCdb, pdu.cdb.length - 15);
      buf[start + 3] = 0;
      pdu.cdb.copy(buf, start + 4, 16);
    }
    if (pdu.bidiReadLength !== undefined) {
      const start = off;
      off = writeSegment(buf, off, AhsType.BidiReadLength, 5);
      buf[start + 3] = 0;
      buf.writeUInt32BE(pdu.bidiReadLength, start + 4);
    }
  }
  for (const seg of pdu.ahs) {
    if (!passThrough(pdu, seg)) continue;
    const start = off;
    off = writeSegment(buf, off, seg.type, seg.data.length);
    seg.data.copy(buf, start + 3);
  }
}

/** BHS + AHS in a buffer with `extra` trailing bytes left for the header digest. */
function buildHeader(pdu: Pdu, extra: number): Buffer {
  const ahs = pdu.ahs.length === 0 && !commandNeedsAhs(pdu) ? 0 : ahsBytes(pdu);
  const dsl = pdu.data.length;
  if (dsl > MAX_DATA_SEGMENT_LENGTH) {
    throw new PduError(RejectReason.InvalidPduField, `opcode 0x${pdu.opcode.toString(16)}: data segment of ${dsl} bytes exceeds DataSegmentLength (24 bits)`);
  }
  const h = Buffer.allocUnsafe(BHS_LENGTH + ahs + extra);
  h.fill(0, 0, BHS_LENGTH);
  h[0] = pdu.opcode | (pdu.immediate && hasImmediateBit(pdu.opcode) ? 0x40 : 0);
  h[4] = ahs >> 2;
  h.writeUIntBE(dsl, 5, 3);
  if (ahs !== 0) writeAhs(h, pdu);
  writeFields(h, pdu);
  return h;
}

function commandNeedsAhs(pdu: Pdu): boolean {
  return pdu.opcode === Opcode.ScsiCommand && (pdu.cdb.length > 16 || pdu.bidiReadLength !== undefined);
}

function writeCdb(h: Buffer, pdu: ScsiCommandPdu): void {
  pdu.cdb.copy(h, 32, 0, Math.min(16, pdu.cdb.length));
}

// The last LUN written, as its two 32-bit halves: no BigInt arithmetic per PDU.
let lastLun = 0n;
let lastLunHi = 0;
let lastLunLo = 0;

/** The 8-byte LUN field at bytes 8..15 (already zero: LUN 0 writes nothing). */
function writeLun(h: Buffer, lun: bigint): void {
  if (lun === 0n) return;
  if (lun !== lastLun) {
    h.writeBigUInt64BE(lun, 8);
    lastLun = lun;
    lastLunHi = h.readUInt32BE(8);
    lastLunLo = h.readUInt32BE(12);
    return;
  }
  h.writeUInt32BE(lastLunHi, 8);
  h.writeUInt32BE(lastLunLo, 12);
}

/** Opcode-specific BHS fields; bytes not written stay zero (reserved). */
function writeFields(h: Buffer, pdu: Pdu): void {
  switch (pdu.opcode) {
    case Opcode.NopOut:
      h[1] = 0x80;
      writeLun(h, pdu.lun);
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt32BE(pdu.ttt, 20);
      h.writeUInt32BE(pdu.cmdSN, 24);
      h.writeUInt32BE(pdu.expStatSN, 28);
      return;
    case Opcode.ScsiCommand:
      h[1] = (pdu.final ? 0x80 : 0) | (pdu.read ? 0x40 : 0) | (pdu.write ? 0x20 : 0) | (pdu.attr & 0x07);
      writeLun(h, pdu.lun);
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt32BE(pdu.expectedDataTransferLength, 20);
      h.writeUInt32BE(pdu.cmdSN, 24);
      h.writeUInt32BE(pdu.expStatSN, 28);
      writeCdb(h, pdu);
      return;
    case Opcode.TaskMgmtRequest:
      h[1] = 0x80 | (pdu.fn & 0x7f);
      writeLun(h, pdu.lun);
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt32BE(pdu.referencedTaskTag, 20);
      h.writeUInt32BE(pdu.cmdSN, 24);
      h.writeUInt32BE(pdu.expStatSN, 28);
      h.writeUInt32BE(pdu.refCmdSN, 32);
      h.writeUInt32BE(pdu.expDataSN, 36);
      return;
    case Opcode.LoginRequest:
      h[1] = (pdu.transit ? 0x80 : 0) | (pdu.cont ? 0x40 : 0) | ((pdu.csg & 3) << 2) | (pdu.nsg & 3);
      h[2] = pdu.versionMax;
      h[3] = pdu.versionMin;
      h.writeUIntBE(pdu.isid, 8, 6);
      h.writeUInt16BE(pdu.tsih, 14);
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt16BE(pdu.cid, 20);
      h.writeUInt32BE(pdu.cmdSN, 24);
      h.writeUInt32BE(pdu.expStatSN, 28);
      return;
    case Opcode.TextRequest:
      h[1] = (pdu.final ? 0x80 : 0) | (pdu.cont ? 0x40 : 0);
      writeLun(h, pdu.lun);
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt32BE(pdu.ttt, 20);
      h.writeUInt32BE(pdu.cmdSN, 24);
      h.writeUInt32BE(pdu.expStatSN, 28);
      return;
    case Opcode.DataOut:
      h[1] = pdu.final ? 0x80 : 0;
      writeLun(h, pdu.lun);
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt32BE(pdu.ttt, 20);
      h.writeUInt32BE(pdu.expStatSN, 28);
      h.writeUInt32BE(pdu.dataSN, 36);
      h.writeUInt32BE(pdu.bufferOffset, 40);
      return;
    case Opcode.LogoutRequest:
      h[1] = 0x80 | (pdu.reason & 0x7f);
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt16BE(pdu.cid, 20);
      h.writeUInt32BE(pdu.cmdSN, 24);
      h.writeUInt32BE(pdu.expStatSN, 28);
      return;
    case Opcode.SnackRequest:
      h[1] = 0x80 | (pdu.type & 0x0f);
      writeLun(h, pdu.lun);
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt32BE(pdu.ttt, 20);
      h.writeUInt32BE(pdu.expStatSN, 28);
      h.writeUInt32BE(pdu.begRun, 40);
      h.writeUInt32BE(pdu.runLength, 44);
      return;
    case Opcode.NopIn:
      h[1] = 0x80;
      writeLun(h, pdu.lun);
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt32BE(pdu.ttt, 20);
      h.writeUInt32BE(pdu.statSN, 24);
      h.writeUInt32BE(pdu.expCmdSN, 28);
      h.writeUInt32BE(pdu.maxCmdSN, 32);
      return;
    case Opcode.ScsiResponse:
      h[1] =
        0x80 |
        (pdu.bidiOverflow ? 0x10 : 0) |
        (pdu.bidiUnderflow ? 0x08 : 0) |
        (pdu.overflow ? 0x04 : 0) |
        (pdu.underflow ? 0x02 : 0);
      h[2] = pdu.response;
      h[3] = pdu.status;
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt32BE(pdu.snack, 20);
      h.writeUInt32BE(pdu.statSN, 24);
      h.writeUInt32BE(pdu.expCmdSN, 28);
      h.writeUInt32BE(pdu.maxCmdSN, 32);
      h.writeUInt32BE(pdu.expDataSN, 36);
      h.writeUInt32BE(pdu.bidiResidualCount, 40);
      h.writeUInt32BE(pdu.residualCount, 44);
      return;
    case Opcode.TaskMgmtResponse:
      h[1] = 0x80;
      h[2] = pdu.response;
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt32BE(pdu.statSN, 24);
      h.writeUInt32BE(pdu.expCmdSN, 28);
      h.writeUInt32BE(pdu.maxCmdSN, 32);
      return;
    case Opcode.LoginResponse:
      h[1] = (pdu.transit ? 0x80 : 0) | (pdu.cont ? 0x40 : 0) | ((pdu.csg & 3) << 2) | (pdu.nsg & 3);
      h[2] = pdu.versionMax;
      h[3] = pdu.versionActive;
      h.writeUIntBE(pdu.isid, 8, 6);
      h.writeUInt16BE(pdu.tsih, 14);
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt32BE(pdu.statSN, 24);
      h.writeUInt32BE(pdu.expCmdSN, 28);
      h.writeUInt32BE(pdu.maxCmdSN, 32);
      h[36] = pdu.statusClass;
      h[37] = pdu.statusDetail;
      return;
    case Opcode.TextResponse:
      h[1] = (pdu.final ? 0x80 : 0) | (pdu.cont ? 0x40 : 0);
      writeLun(h, pdu.lun);
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt32BE(pdu.ttt, 20);
      h.writeUInt32BE(pdu.statSN, 24);
      h.writeUInt32BE(pdu.expCmdSN, 28);
      h.writeUInt32BE(pdu.maxCmdSN, 32);
      return;
    case Opcode.DataIn:
      h[1] =
        (pdu.final ? 0x80 : 0) |
        (pdu.ack ? 0x40 : 0) |
        (pdu.overflow ? 0x04 : 0) |
        (pdu.underflow ? 0x02 : 0) |
        (pdu.hasStatus ? 0x01 : 0);
      h[3] = pdu.hasStatus ? pdu.status : 0;
      writeLun(h, pdu.lun);
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt32BE(pdu.ttt, 20);
      h.writeUInt32BE(pdu.statSN, 24);
      h.writeUInt32BE(pdu.expCmdSN, 28);
      h.writeUInt32BE(pdu.maxCmdSN, 32);
      h.writeUInt32BE(pdu.dataSN, 36);
      h.writeUInt32BE(pdu.bufferOffset, 40);
      h.writeUInt32BE(pdu.residualCount, 44);
      return;
    case Opcode.LogoutResponse:
      h[1] = 0x80;
      h[2] = pdu.response;
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt32BE(pdu.statSN, 24);
      h.writeUInt32BE(pdu.expCmdSN, 28);
      h.writeUInt32BE(pdu.maxCmdSN, 32);
      h.writeUInt16BE(pdu.time2Wait, 40);
      h.writeUInt16BE(pdu.time2Retain, 42);
      return;
    case Opcode.R2T:
      h[1] = 0x80;
      writeLun(h, pdu.lun);
      h.writeUInt32BE(pdu.itt, 16);
      h.writeUInt32BE(pdu.ttt, 20);
      h.writeUInt32BE(pdu.statSN, 24);
      h.writeUInt32BE(pdu.expCmdSN, 28);
      h.writeUInt32BE(pdu.maxCmdSN, 32);
      h.writeUInt32BE(pdu.r2tSN, 36);
      h.writeUInt32BE(pdu.bufferOffset, 40);
      h.writeUInt32BE(pdu.desiredDataTransferLength, 44);
      return;
    case Opcode.AsyncMessage:
      h[1] = 0x80;
      writeLun(h, pdu.lun);
      h.writeUInt32BE(RESERVED_TAG, 16);
      h.writeUInt32BE(pdu.statSN, 24);
      h.writeUInt32BE(pdu.expCmdSN, 28);
      h.writeUInt32BE(pdu.maxCmdSN, 32);
      h[36] = pdu.asyncEvent;
      h[37] = pdu.asyncVCode;
      h.writeUInt16BE(pdu.parameter1, 38);
      h.writeUInt16BE(pdu.parameter2, 40);
      h.writeUInt16BE(pdu.parameter3, 42);
      return;
    case Opcode.Reject:
      h[1] = 0x80;
      h[2] = pdu.reason;
      h.writeUInt32BE(RESERVED_TAG, 16);
      h.writeUInt32BE(pdu.statSN, 24);
      h.writeUInt32BE(pdu.expCmdSN, 28);
      h.writeUInt32BE(pdu.maxCmdSN, 32);
      h.writeUInt32BE(pdu.dataSN, 36);
      return;
    default: {
      const never: never = pdu;
      throw new PduError(RejectReason.CommandNotSupported, `cannot encode unknown opcode ${String((never as { opcode: unknown }).opcode)}`);
    }
  }
}
