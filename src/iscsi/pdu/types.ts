// Typed iSCSI PDUs (RFC 7143 section 11). The contract between the pure codec
// (decode.ts / encode.ts / parser.ts) and the connection layer.
// Numbers are host values; 32-bit sequence numbers are unsigned (0..2^32-1).
// `lun` is the raw 8-byte LUN field as a bigint (see lun.ts for SAM decoding).
// `data` is always a view into the received bytes (never copied by the decoder).

export const enum Opcode {
  // initiator -> target
  NopOut = 0x00,
  ScsiCommand = 0x01,
  TaskMgmtRequest = 0x02,
  LoginRequest = 0x03,
  TextRequest = 0x04,
  DataOut = 0x05,
  LogoutRequest = 0x06,
  SnackRequest = 0x10,
  // target -> initiator
  NopIn = 0x20,
  ScsiResponse = 0x21,
  TaskMgmtResponse = 0x22,
  LoginResponse = 0x23,
  TextResponse = 0x24,
  DataIn = 0x25,
  LogoutResponse = 0x26,
  R2T = 0x31,
  AsyncMessage = 0x32,
  Reject = 0x3f,
}

export const BHS_LENGTH = 48;
export const RESERVED_TAG = 0xffffffff;

export const enum TaskAttr {
  Untagged = 0,
  Simple = 1,
  Ordered = 2,
  HeadOfQueue = 3,
  ACA = 4,
}

export const enum TmfFunction {
  AbortTask = 1,
  AbortTaskSet = 2,
  ClearAca = 3,
  ClearTaskSet = 4,
  LogicalUnitReset = 5,
  TargetWarmReset = 6,
  TargetColdReset = 7,
  TaskReassign = 8,
}

export const enum TmfResponse {
  Complete = 0,
  TaskDoesNotExist = 1,
  LunDoesNotExist = 2,
  TaskStillAllegiant = 3,
  ReassignmentNotSupported = 4,
  NotSupported = 5,
  AuthorizationFailed = 6,
  Rejected = 255,
}

export const enum RejectReason {
  DataDigestError = 0x02,
  SnackReject = 0x03,
  ProtocolError = 0x04,
  CommandNotSupported = 0x05,
  ImmediateCommandReject = 0x06,
  TaskInProgress = 0x07,
  InvalidDataAck = 0x08,
  InvalidPduField = 0x09,
  LongOpReject = 0x0a,
  Deprecated = 0x0b,
  WaitingForLogout = 0x0c,
}

/** Login stages (CSG/NSG). */
export const enum Stage {
  Security = 0,
  Operational = 1,
  FullFeature = 3,
}

export interface AhsSegment {
  type: number;
  /** Type-specific bytes after the 3-byte header (AHSLength bytes, no padding). */
  data: Buffer;
}

interface PduBase {
  immediate: boolean;
  ahs: AhsSegment[];
  data: Buffer;
}

export interface NopOut extends PduBase {
  opcode: Opcode.NopOut;
  lun: bigint;
  itt: number;
  ttt: number;
  cmdSN: number;
  expStatSN: number;
}

export interface ScsiCommandPdu extends PduBase {
  opcode: Opcode.ScsiCommand;
  final: boolean;
  read: boolean;
  write: boolean;
  attr: TaskAttr;
  lun: bigint;
  itt: number;
  expectedDataTransferLength: number;
  cmdSN: number;
  expStatSN: number;
  /** 16-byte CDB field; with an Extended CDB AHS the decoder returns the full CDB here. */
  cdb: Buffer;
  /** From the Bidirectional Read Expected Data Transfer Length AHS, if present. */
  bidiReadLength?: number;
}

export interface TaskMgmtRequest extends PduBase {
  opcode: Opcode.TaskMgmtRequest;
  fn: TmfFunction;
  lun: bigint;
  itt: number;
  referencedTaskTag: number;
  cmdSN: number;
  expStatSN: number;
  refCmdSN: number;
  expDataSN: number;
}

export interface LoginRequest extends PduBase {
  opcode: Opcode.LoginRequest;
  transit: boolean;
  cont: boolean;
  csg: Stage;
  nsg: Stage;
  versionMax: number;
  versionMin: number;
  /** 6-byte ISID as a 48-bit number. */
  isid: number;
  tsih: number;
  itt: number;
  cid: number;
  cmdSN: number;
  expStatSN: number;
}

export interface TextRequest extends PduBase {
  opcode: Opcode.TextRequest;
  final: boolean;
  cont: boolean;
  lun: bigint;
  itt: number;
  ttt: number;
  cmdSN: number;
  expStatSN: number;
}

export interface DataOut extends PduBase {
  opcode: Opcode.DataOut;
  final: boolean;
  lun: bigint;
  itt: number;
  ttt: number;
  expStatSN: number;
  dataSN: number;
  bufferOffset: number;
}

export interface LogoutRequest extends PduBase {
  opcode: Opcode.LogoutRequest;
  /** 0 close session, 1 close connection, 2 remove connection for recovery. */
  reason: number;
  itt: number;
  cid: number;
  cmdSN: number;
  expStatSN: number;
}

export interface SnackRequest extends PduBase {
  opcode: Opcode.SnackRequest;
  type: number;
  lun: bigint;
  itt: number;
  ttt: number;
  expStatSN: number;
  begRun: number;
  runLength: number;
}

export interface NopIn extends PduBase {
  opcode: Opcode.NopIn;
  lun: bigint;
  itt: number;
  ttt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
}

export interface ScsiResponsePdu extends PduBase {
  opcode: Opcode.ScsiResponse;
  bidiOverflow: boolean;
  bidiUnderflow: boolean;
  overflow: boolean;
  underflow: boolean;
  /** 0 = command completed at target; 1 = target failure. */
  response: number;
  status: number;
  itt: number;
  snack: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  expDataSN: number;
  bidiResidualCount: number;
  residualCount: number;
  // data = 2-byte SenseLength + sense bytes (+ response data), built by the caller with senseSegment()
}

export interface TaskMgmtResponsePdu extends PduBase {
  opcode: Opcode.TaskMgmtResponse;
  response: TmfResponse;
  itt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
}

export interface LoginResponse extends PduBase {
  opcode: Opcode.LoginResponse;
  transit: boolean;
  cont: boolean;
  csg: Stage;
  nsg: Stage;
  versionMax: number;
  versionActive: number;
  isid: number;
  tsih: number;
  itt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  statusClass: number;
  statusDetail: number;
}

export interface TextResponse extends PduBase {
  opcode: Opcode.TextResponse;
  final: boolean;
  cont: boolean;
  lun: bigint;
  itt: number;
  ttt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
}

export interface DataIn extends PduBase {
  opcode: Opcode.DataIn;
  final: boolean;
  ack: boolean;
  overflow: boolean;
  underflow: boolean;
  /** S bit: status is carried in this PDU (only with final). */
  hasStatus: boolean;
  status: number;
  lun: bigint;
  itt: number;
  ttt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  dataSN: number;
  bufferOffset: number;
  residualCount: number;
}

export interface LogoutResponse extends PduBase {
  opcode: Opcode.LogoutResponse;
  response: number;
  itt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  time2Wait: number;
  time2Retain: number;
}

export interface R2TPdu extends PduBase {
  opcode: Opcode.R2T;
  lun: bigint;
  itt: number;
  ttt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  r2tSN: number;
  bufferOffset: number;
  desiredDataTransferLength: number;
}

export interface AsyncMessagePdu extends PduBase {
  opcode: Opcode.AsyncMessage;
  lun: bigint;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  asyncEvent: number;
  asyncVCode: number;
  parameter1: number;
  parameter2: number;
  parameter3: number;
}

export interface RejectPdu extends PduBase {
  opcode: Opcode.Reject;
  reason: RejectReason;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  dataSN: number;
  // data = the complete header (BHS) of the rejected PDU
}

export type InitiatorPdu =
  | NopOut
  | ScsiCommandPdu
  | TaskMgmtRequest
  | LoginRequest
  | TextRequest
  | DataOut
  | LogoutRequest
  | SnackRequest;

export type TargetPdu =
  | NopIn
  | ScsiResponsePdu
  | TaskMgmtResponsePdu
  | LoginResponse
  | TextResponse
  | DataIn
  | LogoutResponse
  | R2TPdu
  | AsyncMessagePdu
  | RejectPdu;

export type Pdu = InitiatorPdu | TargetPdu;

// ---- Additions for the codec (parser.ts / encode.ts); nothing above changes. ----

/** AHSType values (RFC 7143 11.2.2). */
export const enum AhsType {
  ExtendedCdb = 1,
  BidiReadLength = 2,
}

/** Which digests are in force on a connection (CRC32C or None). */
export interface DigestSettings {
  header: boolean;
  data: boolean;
}

export interface ParserOptions {
  /** HeaderDigest=CRC32C in force from the first PDU (default false). */
  headerDigest?: boolean;
  /** DataDigest=CRC32C in force from the first PDU (default false). */
  dataDigest?: boolean;
  /** Our MaxRecvDataSegmentLength (default 8192, the RFC 7143 default). */
  maxDataSegmentLength?: number;
  /**
   * Above this (or above maxDataSegmentLength, whichever is larger) a data
   * segment length is taken as a sign of a desynchronised stream and is fatal
   * instead of skipped (default 1 MiB).
   */
  hardMaxDataSegmentLength?: number;
}

export interface ParseOk {
  ok: true;
  pdu: Pdu;
  /** The raw 48-byte BHS, e.g. for the data segment of a Reject. */
  header: Buffer;
}

export interface ParseError {
  ok: false;
  /** The stream cannot be resynchronised: close the connection. */
  fatal: boolean;
  reason: RejectReason;
  message: string;
  /** The raw 48-byte BHS of the offending PDU, when it could be framed. */
  header?: Buffer;
  /** The decoded PDU, when it decoded (e.g. a data digest error). */
  pdu?: Pdu;
}

export type ParseResult = ParseOk | ParseError;
