// Decoding of one framed PDU (RFC 7143 section 11): bytes in, typed object out.
// Pure: no I/O, no state. `data` is kept as the caller's Buffer view.
import { PduError } from './pdu-error.js';
import { AhsType, BHS_LENGTH, Opcode, RejectReason } from './types.js';
import type {
  AhsSegment,
  AsyncMessagePdu,
  DataIn,
  DataOut,
  LoginRequest,
  LoginResponse,
  LogoutRequest,
  LogoutResponse,
  NopIn,
  NopOut,
  Pdu,
  R2TPdu,
  RejectPdu,
  ScsiCommandPdu,
  ScsiResponsePdu,
  SnackRequest,
  Stage,
  TaskAttr,
  TaskMgmtRequest,
  TaskMgmtResponsePdu,
  TextRequest,
  TextResponse,
  TmfFunction,
  TmfResponse,
} from './types.js';

export { PduError } from './pdu-error.js';

/** Shared by every PDU without AHS; frozen so a stray push fails loudly. */
const NO_AHS = Object.freeze([]) as unknown as AhsSegment[];

// The last LUN field read, as its two halves and as the bigint: a session
// addresses the same LUN command after command, and this spares a BigInt
// allocation per PDU.
let lastLunHi = 0;
let lastLunLo = 0;
let lastLun = 0n;

/** The 8-byte LUN field at bytes 8..15. */
function readLun(h: Buffer): bigint {
  const hi = h.readUInt32BE(8);
  const lo = h.readUInt32BE(12);
  if (hi !== lastLunHi || lo !== lastLunLo) {
    lastLun = h.readBigUInt64BE(8);
    lastLunHi = hi;
    lastLunLo = lo;
  }
  return lastLun;
}

/** Opcode (low 6 bits of byte 0) of a BHS. */
export function peekOpcode(header: Buffer): number {
  return header[0]! & 0x3f;
}

/** DataSegmentLength (bytes 5..7), without padding. */
export function dataSegmentLength(header: Buffer): number {
  return header.readUIntBE(5, 3);
}

/** Length of the AHS in bytes (TotalAHSLength, byte 4, is in 4-byte words). */
export function totalAhsLength(header: Buffer): number {
  return header[4]! << 2;
}

/** Initiator Task Tag (bytes 16..19). */
export function itt(header: Buffer): number {
  return header.readUInt32BE(16);
}

/** True for the opcodes this codec knows (those of types.ts). */
export function isKnownOpcode(op: number): boolean {
  return KNOWN[op & 0x3f] === 1;
}

const KNOWN = new Uint8Array(64);
for (const op of [
  Opcode.NopOut,
  Opcode.ScsiCommand,
  Opcode.TaskMgmtRequest,
  Opcode.LoginRequest,
  Opcode.TextRequest,
  Opcode.DataOut,
  Opcode.LogoutRequest,
  Opcode.SnackRequest,
  Opcode.NopIn,
  Opcode.ScsiResponse,
  Opcode.TaskMgmtResponse,
  Opcode.LoginResponse,
  Opcode.TextResponse,
  Opcode.DataIn,
  Opcode.LogoutResponse,
  Opcode.R2T,
  Opcode.AsyncMessage,
  Opcode.Reject,
]) {
  KNOWN[op] = 1;
}

function hex(n: number): string {
  return '0x' + n.toString(16).padStart(2, '0');
}

/**
 * Decode one PDU. `header` is the 48-byte BHS followed by its AHS
 * (TotalAHSLength*4 bytes; anything after that is ignored); `data` is the data
 * segment without padding or digest and is returned as is, never copied.
 * Throws PduError for an unknown opcode, a short header, a data length that
 * disagrees with the BHS, or malformed AHS.
 */
export function decodePdu(header: Buffer, data: Buffer): Pdu {
  if (header.length < BHS_LENGTH) {
    throw new PduError(RejectReason.ProtocolError, `PDU header truncated: ${header.length} bytes, BHS needs ${BHS_LENGTH}`);
  }
  const op = header[0]! & 0x3f;
  const ahsLen = header[4]! << 2;
  if (header.length < BHS_LENGTH + ahsLen) {
    throw new PduError(
      RejectReason.ProtocolError,
      `PDU opcode ${hex(op)} itt=${hex(itt(header))}: header truncated: ${header.length} bytes, BHS+AHS needs ${BHS_LENGTH + ahsLen}`,
    );
  }
  const dsl = header.readUIntBE(5, 3);
  if (dsl !== data.length) {
    throw new PduError(
      RejectReason.ProtocolError,
      `PDU opcode ${hex(op)} itt=${hex(itt(header))}: DataSegmentLength ${dsl} but ${data.length} data bytes given`,
    );
  }
  const ahs = ahsLen === 0 ? NO_AHS : parseAhs(header, ahsLen, op);
  switch (op) {
    case Opcode.NopOut:
      return decodeNopOut(header, ahs, data);
    case Opcode.ScsiCommand:
      return decodeScsiCommand(header, ahs, data);
    case Opcode.TaskMgmtRequest:
      return decodeTaskMgmtRequest(header, ahs, data);
    case Opcode.LoginRequest:
      return decodeLoginRequest(header, ahs, data);
    case Opcode.TextRequest:
      return decodeTextRequest(header, ahs, data);
    case Opcode.DataOut:
      return decodeDataOut(header, ahs, data);
    case Opcode.LogoutRequest:
      return decodeLogoutRequest(header, ahs, data);
    case Opcode.SnackRequest:
      return decodeSnackRequest(header, ahs, data);
    case Opcode.NopIn:
      return decodeNopIn(header, ahs, data);
    case Opcode.ScsiResponse:
      return decodeScsiResponse(header, ahs, data);
    case Opcode.TaskMgmtResponse:
      return decodeTaskMgmtResponse(header, ahs, data);
    case Opcode.LoginResponse:
      return decodeLoginResponse(header, ahs, data);
    case Opcode.TextResponse:
      return decodeTextResponse(header, ahs, data);
    case Opcode.DataIn:
      return decodeDataIn(header, ahs, data);
    case Opcode.LogoutResponse:
      return decodeLogoutResponse(header, ahs, data);
    case Opcode.R2T:
      return decodeR2T(header, ahs, data);
    case Opcode.AsyncMessage:
      return decodeAsyncMessage(header, ahs, data);
    case Opcode.Reject:
      return decodeReject(header, ahs, data);
    default:
      throw new PduError(RejectReason.CommandNotSupported, `unknown PDU opcode ${hex(op)} itt=${hex(itt(header))}`);
  }
}

/** Split the AHS area into segments: 2-byte AHSLength, 1-byte type, data, pad to 4. */
function parseAhs(header: Buffer, ahsLen: number, op: number): AhsSegment[] {
  const out: AhsSegment[] = [];
  const end = BHS_LENGTH + ahsLen;
  let off = BHS_LENGTH;
  while (off < end) {
    if (off + 3 > end) {
      throw new PduError(RejectReason.ProtocolError, `PDU opcode ${hex(op)}: AHS at byte ${off} overruns TotalAHSLength (${ahsLen} bytes)`);
    }
    const len = header.readUInt16BE(off);
    const type = header[off + 2]!;
    const next = off + ((3 + len + 3) & ~3);
    if (next > end) {
      throw new PduError(
        RejectReason.ProtocolError,
        `PDU opcode ${hex(op)}: AHS type ${type} length ${len} at byte ${off} overruns TotalAHSLength (${ahsLen} bytes)`,
      );
    }
    out.push({ type, data: header.subarray(off + 3, off + 3 + len) });
    off = next;
  }
  return out;
}

function decodeNopOut(h: Buffer, ahs: AhsSegment[], data: Buffer): NopOut {
  return {
    opcode: Opcode.NopOut,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    lun: readLun(h),
    itt: h.readUInt32BE(16),
    ttt: h.readUInt32BE(20),
    cmdSN: h.readUInt32BE(24),
    expStatSN: h.readUInt32BE(28),
  };
}

function decodeScsiCommand(h: Buffer, ahs: AhsSegment[], data: Buffer): ScsiCommandPdu {
  const b1 = h[1]!;
  const pdu: ScsiCommandPdu = {
    opcode: Opcode.ScsiCommand,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    final: (b1 & 0x80) !== 0,
    read: (b1 & 0x40) !== 0,
    write: (b1 & 0x20) !== 0,
    attr: (b1 & 0x07) as TaskAttr,
    lun: readLun(h),
    itt: h.readUInt32BE(16),
    expectedDataTransferLength: h.readUInt32BE(20),
    cmdSN: h.readUInt32BE(24),
    expStatSN: h.readUInt32BE(28),
    cdb: h.subarray(32, 48),
  };
  if (ahs.length !== 0) applyCommandAhs(pdu, h);
  return pdu;
}

/** Extended CDB (type 1) and bidirectional read length (type 2) AHS, 11.3.1.x. */
function applyCommandAhs(pdu: ScsiCommandPdu, h: Buffer): void {
  let sawCdb = false;
  for (const seg of pdu.ahs) {
    if (seg.type === AhsType.ExtendedCdb) {
      // AHSLength = CDB length - 15: one reserved byte, then CDB bytes 16 onwards.
      if (sawCdb || seg.data.length < 2) {
        throw new PduError(
          RejectReason.ProtocolError,
          `SCSI Command itt=${hex(pdu.itt)}: ${sawCdb ? 'duplicate' : 'malformed'} Extended CDB AHS (AHSLength ${seg.data.length})`,
        );
      }
      sawCdb = true;
      pdu.cdb = Buffer.concat([h.subarray(32, 48), seg.data.subarray(1)]);
    } else if (seg.type === AhsType.BidiReadLength) {
      if (pdu.bidiReadLength !== undefined || seg.data.length !== 5) {
        throw new PduError(
          RejectReason.ProtocolError,
          `SCSI Command itt=${hex(pdu.itt)}: ${pdu.bidiReadLength !== undefined ? 'duplicate' : 'malformed'} Bidirectional Read Expected Data Transfer Length AHS (AHSLength ${seg.data.length}, expected 5)`,
        );
      }
      pdu.bidiReadLength = seg.data.readUInt32BE(1);
    }
  }
}

function decodeTaskMgmtRequest(h: Buffer, ahs: AhsSegment[], data: Buffer): TaskMgmtRequest {
  return {
    opcode: Opcode.TaskMgmtRequest,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    fn: (h[1]! & 0x7f) as TmfFunction,
    lun: readLun(h),
    itt: h.readUInt32BE(16),
    referencedTaskTag: h.readUInt32BE(20),
    cmdSN: h.readUInt32BE(24),
    expStatSN: h.readUInt32BE(28),
    refCmdSN: h.readUInt32BE(32),
    expDataSN: h.readUInt32BE(36),
  };
}

function decodeLoginRequest(h: Buffer, ahs: AhsSegment[], data: Buffer): LoginRequest {
  const b1 = h[1]!;
  return {
    opcode: Opcode.LoginRequest,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    transit: (b1 & 0x80) !== 0,
    cont: (b1 & 0x40) !== 0,
    csg: ((b1 >> 2) & 3) as Stage,
    nsg: (b1 & 3) as Stage,
    versionMax: h[2]!,
    versionMin: h[3]!,
    isid: h.readUIntBE(8, 6),
    tsih: h.readUInt16BE(14),
    itt: h.readUInt32BE(16),
    cid: h.readUInt16BE(20),
    cmdSN: h.readUInt32BE(24),
    expStatSN: h.readUInt32BE(28),
  };
}

function decodeTextRequest(h: Buffer, ahs: AhsSegment[], data: Buffer): TextRequest {
  const b1 = h[1]!;
  return {
    opcode: Opcode.TextRequest,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    final: (b1 & 0x80) !== 0,
    cont: (b1 & 0x40) !== 0,
    lun: readLun(h),
    itt: h.readUInt32BE(16),
    ttt: h.readUInt32BE(20),
    cmdSN: h.readUInt32BE(24),
    expStatSN: h.readUInt32BE(28),
  };
}

function decodeDataOut(h: Buffer, ahs: AhsSegment[], data: Buffer): DataOut {
  return {
    opcode: Opcode.DataOut,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    final: (h[1]! & 0x80) !== 0,
    lun: readLun(h),
    itt: h.readUInt32BE(16),
    ttt: h.readUInt32BE(20),
    expStatSN: h.readUInt32BE(28),
    dataSN: h.readUInt32BE(36),
    bufferOffset: h.readUInt32BE(40),
  };
}

function decodeLogoutRequest(h: Buffer, ahs: AhsSegment[], data: Buffer): LogoutRequest {
  return {
    opcode: Opcode.LogoutRequest,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    reason: h[1]! & 0x7f,
    itt: h.readUInt32BE(16),
    cid: h.readUInt16BE(20),
    cmdSN: h.readUInt32BE(24),
    expStatSN: h.readUInt32BE(28),
  };
}

function decodeSnackRequest(h: Buffer, ahs: AhsSegment[], data: Buffer): SnackRequest {
  return {
    opcode: Opcode.SnackRequest,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    type: h[1]! & 0x0f,
    lun: readLun(h),
    itt: h.readUInt32BE(16),
    ttt: h.readUInt32BE(20),
    expStatSN: h.readUInt32BE(28),
    begRun: h.readUInt32BE(40),
    runLength: h.readUInt32BE(44),
  };
}

function decodeNopIn(h: Buffer, ahs: AhsSegment[], data: Buffer): NopIn {
  return {
    opcode: Opcode.NopIn,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    lun: readLun(h),
    itt: h.readUInt32BE(16),
    ttt: h.readUInt32BE(20),
    statSN: h.readUInt32BE(24),
    expCmdSN: h.readUInt32BE(28),
    maxCmdSN: h.readUInt32BE(32),
  };
}

function decodeScsiResponse(h: Buffer, ahs: AhsSegment[], data: Buffer): ScsiResponsePdu {
  const b1 = h[1]!;
  return {
    opcode: Opcode.ScsiResponse,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    bidiOverflow: (b1 & 0x10) !== 0,
    bidiUnderflow: (b1 & 0x08) !== 0,
    overflow: (b1 & 0x04) !== 0,
    underflow: (b1 & 0x02) !== 0,
    response: h[2]!,
    status: h[3]!,
    itt: h.readUInt32BE(16),
    snack: h.readUInt32BE(20),
    statSN: h.readUInt32BE(24),
    expCmdSN: h.readUInt32BE(28),
    maxCmdSN: h.readUInt32BE(32),
    expDataSN: h.readUInt32BE(36),
    bidiResidualCount: h.readUInt32BE(40),
    residualCount: h.readUInt32BE(44),
  };
}

function decodeTaskMgmtResponse(h: Buffer, ahs: AhsSegment[], data: Buffer): TaskMgmtResponsePdu {
  return {
    opcode: Opcode.TaskMgmtResponse,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    response: h[2]! as TmfResponse,
    itt: h.readUInt32BE(16),
    statSN: h.readUInt32BE(24),
    expCmdSN: h.readUInt32BE(28),
    maxCmdSN: h.readUInt32BE(32),
  };
}

function decodeLoginResponse(h: Buffer, ahs: AhsSegment[], data: Buffer): LoginResponse {
  const b1 = h[1]!;
  return {
    opcode: Opcode.LoginResponse,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    transit: (b1 & 0x80) !== 0,
    cont: (b1 & 0x40) !== 0,
    csg: ((b1 >> 2) & 3) as Stage,
    nsg: (b1 & 3) as Stage,
    versionMax: h[2]!,
    versionActive: h[3]!,
    isid: h.readUIntBE(8, 6),
    tsih: h.readUInt16BE(14),
    itt: h.readUInt32BE(16),
    statSN: h.readUInt32BE(24),
    expCmdSN: h.readUInt32BE(28),
    maxCmdSN: h.readUInt32BE(32),
    statusClass: h[36]!,
    statusDetail: h[37]!,
  };
}

function decodeTextResponse(h: Buffer, ahs: AhsSegment[], data: Buffer): TextResponse {
  const b1 = h[1]!;
  return {
    opcode: Opcode.TextResponse,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    final: (b1 & 0x80) !== 0,
    cont: (b1 & 0x40) !== 0,
    lun: readLun(h),
    itt: h.readUInt32BE(16),
    ttt: h.readUInt32BE(20),
    statSN: h.readUInt32BE(24),
    expCmdSN: h.readUInt32BE(28),
    maxCmdSN: h.readUInt32BE(32),
  };
}

function decodeDataIn(h: Buffer, ahs: AhsSegment[], data: Buffer): DataIn {
  const b1 = h[1]!;
  return {
    opcode: Opcode.DataIn,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    final: (b1 & 0x80) !== 0,
    ack: (b1 & 0x40) !== 0,
    overflow: (b1 & 0x04) !== 0,
    underflow: (b1 & 0x02) !== 0,
    hasStatus: (b1 & 0x01) !== 0,
    status: h[3]!,
    lun: readLun(h),
    itt: h.readUInt32BE(16),
    ttt: h.readUInt32BE(20),
    statSN: h.readUInt32BE(24),
    expCmdSN: h.readUInt32BE(28),
    maxCmdSN: h.readUInt32BE(32),
    dataSN: h.readUInt32BE(36),
    bufferOffset: h.readUInt32BE(40),
    residualCount: h.readUInt32BE(44),
  };
}

function decodeLogoutResponse(h: Buffer, ahs: AhsSegment[], data: Buffer): LogoutResponse {
  return {
    opcode: Opcode.LogoutResponse,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    response: h[2]!,
    itt: h.readUInt32BE(16),
    statSN: h.readUInt32BE(24),
    expCmdSN: h.readUInt32BE(28),
    maxCmdSN: h.readUInt32BE(32),
    time2Wait: h.readUInt16BE(40),
    time2Retain: h.readUInt16BE(42),
  };
}

function decodeR2T(h: Buffer, ahs: AhsSegment[], data: Buffer): R2TPdu {
  return {
    opcode: Opcode.R2T,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    lun: readLun(h),
    itt: h.readUInt32BE(16),
    ttt: h.readUInt32BE(20),
    statSN: h.readUInt32BE(24),
    expCmdSN: h.readUInt32BE(28),
    maxCmdSN: h.readUInt32BE(32),
    r2tSN: h.readUInt32BE(36),
    bufferOffset: h.readUInt32BE(40),
    desiredDataTransferLength: h.readUInt32BE(44),
  };
}

function decodeAsyncMessage(h: Buffer, ahs: AhsSegment[], data: Buffer): AsyncMessagePdu {
  return {
    opcode: Opcode.AsyncMessage,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    lun: readLun(h),
    statSN: h.readUInt32BE(24),
    expCmdSN: h.readUInt32BE(28),
    maxCmdSN: h.readUInt32BE(32),
    asyncEvent: h[36]!,
    asyncVCode: h[37]!,
    parameter1: h.readUInt16BE(38),
    parameter2: h.readUInt16BE(40),
    parameter3: h.readUInt16BE(42),
  };
}

function decodeReject(h: Buffer, ahs: AhsSegment[], data: Buffer): RejectPdu {
  return {
    opcode: Opcode.Reject,
    immediate: (h[0]! & 0x40) !== 0,
    ahs,
    data,
    reason: h[2]! as RejectReason,
    statSN: h.readUInt32BE(24),
    expCmdSN: h.readUInt32BE(28),
    maxCmdSN: h.readUInt32BE(32),
    dataSN: h.readUInt32BE(36),
  };
}
