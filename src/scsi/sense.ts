// Sense data (SPC-4 4.4): fixed (0x70) and descriptor (0x72) formats, and the
// ScsiError that command handlers throw to end a command with CHECK CONDITION.

export const enum SenseKey {
  NoSense = 0x0,
  RecoveredError = 0x1,
  NotReady = 0x2,
  MediumError = 0x3,
  HardwareError = 0x4,
  IllegalRequest = 0x5,
  UnitAttention = 0x6,
  DataProtect = 0x7,
  BlankCheck = 0x8,
  CopyAborted = 0xa,
  AbortedCommand = 0xb,
  VolumeOverflow = 0xd,
  Miscompare = 0xe,
}

/** An additional sense code and qualifier, with the sense key it normally goes with. */
export interface Asc {
  readonly key: SenseKey;
  readonly asc: number;
  readonly ascq: number;
}

const a = (key: SenseKey, asc: number, ascq: number): Asc => ({ key, asc, ascq });

/** The sense codes Tabula reports, by name. */
export const Sense = {
  invalidOpcode: a(SenseKey.IllegalRequest, 0x20, 0x00),
  lbaOutOfRange: a(SenseKey.IllegalRequest, 0x21, 0x00),
  invalidFieldInCdb: a(SenseKey.IllegalRequest, 0x24, 0x00),
  lunNotSupported: a(SenseKey.IllegalRequest, 0x25, 0x00),
  invalidFieldInParameterList: a(SenseKey.IllegalRequest, 0x26, 0x00),
  parameterListLengthError: a(SenseKey.IllegalRequest, 0x1a, 0x00),
  invalidReleaseOfPersistentReservation: a(SenseKey.IllegalRequest, 0x26, 0x04),
  savingParametersNotSupported: a(SenseKey.IllegalRequest, 0x39, 0x00),
  invalidCommandOperationCode: a(SenseKey.IllegalRequest, 0x20, 0x00),
  insufficientRegistrationResources: a(SenseKey.IllegalRequest, 0x55, 0x04),
  writeProtected: a(SenseKey.DataProtect, 0x27, 0x00),
  softwareWriteProtected: a(SenseKey.DataProtect, 0x27, 0x02),
  spaceAllocationFailedWriteProtect: a(SenseKey.DataProtect, 0x27, 0x07),
  unrecoveredReadError: a(SenseKey.MediumError, 0x11, 0x00),
  writeError: a(SenseKey.MediumError, 0x0c, 0x00),
  miscompareDuringVerify: a(SenseKey.Miscompare, 0x1d, 0x00),
  notReadyCauseNotReportable: a(SenseKey.NotReady, 0x04, 0x00),
  notReadyManualIntervention: a(SenseKey.NotReady, 0x04, 0x03),
  notReadyFormatInProgress: a(SenseKey.NotReady, 0x04, 0x04),
  notReadyTransition: a(SenseKey.NotReady, 0x04, 0x0a),
  notReadySanitizeInProgress: a(SenseKey.NotReady, 0x04, 0x1b),
  notReadyStopped: a(SenseKey.NotReady, 0x04, 0x02),
  mediumNotPresent: a(SenseKey.NotReady, 0x3a, 0x00),
  powerOnReset: a(SenseKey.UnitAttention, 0x29, 0x00),
  powerOnOccurred: a(SenseKey.UnitAttention, 0x29, 0x01),
  busReset: a(SenseKey.UnitAttention, 0x29, 0x02),
  deviceResetOccurred: a(SenseKey.UnitAttention, 0x29, 0x03),
  modeParametersChanged: a(SenseKey.UnitAttention, 0x2a, 0x01),
  reservationsPreempted: a(SenseKey.UnitAttention, 0x2a, 0x03),
  reservationsReleased: a(SenseKey.UnitAttention, 0x2a, 0x04),
  registrationsPreempted: a(SenseKey.UnitAttention, 0x2a, 0x05),
  capacityDataChanged: a(SenseKey.UnitAttention, 0x2a, 0x09),
  asymmetricAccessStateChanged: a(SenseKey.UnitAttention, 0x2a, 0x06),
  reportedLunsDataChanged: a(SenseKey.UnitAttention, 0x3f, 0x0e),
  commandsClearedByAnotherInitiator: a(SenseKey.UnitAttention, 0x2f, 0x00),
  commandsClearedByDeviceServer: a(SenseKey.UnitAttention, 0x2f, 0x01),
  mediumRemovalPrevented: a(SenseKey.IllegalRequest, 0x53, 0x02),
  copyTargetDeviceNotReachable: a(SenseKey.CopyAborted, 0x0d, 0x02),
  copyAbortedInvalidParameter: a(SenseKey.CopyAborted, 0x26, 0x00),
  unreachableCopyTarget: a(SenseKey.CopyAborted, 0x08, 0x04),
  tooManySegmentDescriptors: a(SenseKey.IllegalRequest, 0x26, 0x08),
  tooManyTargetDescriptors: a(SenseKey.IllegalRequest, 0x26, 0x06),
  unsupportedSegmentDescriptorType: a(SenseKey.IllegalRequest, 0x26, 0x09),
  unsupportedTargetDescriptorType: a(SenseKey.IllegalRequest, 0x26, 0x07),
  internalTargetFailure: a(SenseKey.HardwareError, 0x44, 0x00),
  logicalUnitCommunicationFailure: a(SenseKey.HardwareError, 0x08, 0x00),
  /** The same cause, retryable: a container reached over the network is away (Linux retries ABORTED COMMAND). */
  logicalUnitCommunicationFailureAborted: a(SenseKey.AbortedCommand, 0x08, 0x00),
  sanitizeFailed: a(SenseKey.MediumError, 0x31, 0x03),
  mediumFormatCorrupted: a(SenseKey.MediumError, 0x31, 0x00),
  noAdditionalSense: a(SenseKey.NoSense, 0x00, 0x00),
  dataPhaseError: a(SenseKey.AbortedCommand, 0x4b, 0x00),
} as const satisfies Record<string, Asc>;

/** Sense-key specific field pointer (SKSV): which CDB or parameter byte (and bit) was wrong. */
export interface FieldPointer {
  /** true = the error is in the CDB; false = in the parameter list (Data-Out). */
  inCdb: boolean;
  byte: number;
  /** Bit 0..7, if the error is in a particular bit. */
  bit?: number;
}

export interface SenseOptions {
  /** INFORMATION field (e.g. the first failing LBA, or the miscompare offset). */
  information?: number | bigint;
  field?: FieldPointer;
  /** Progress indication 0..65535 (sense-key specific, NOT READY / NO SENSE). */
  progress?: number;
}

/** Build sense data in fixed (0x70) or descriptor (0x72) format. */
export function buildSense(code: Asc, descriptor: boolean, opts: SenseOptions = {}): Buffer {
  const sks = senseKeySpecific(opts);
  if (!descriptor) {
    const b = Buffer.alloc(18);
    b[0] = 0x70 | (opts.information !== undefined ? 0x80 : 0);
    b[2] = code.key & 0x0f;
    if (opts.information !== undefined) b.writeUInt32BE(Number(BigInt(opts.information) & 0xffffffffn), 3);
    b[7] = 10; // additional sense length
    b[12] = code.asc;
    b[13] = code.ascq;
    if (sks) sks.copy(b, 15);
    return b;
  }
  const descs: Buffer[] = [];
  if (opts.information !== undefined) {
    const d = Buffer.alloc(12);
    d[0] = 0x00; // information descriptor
    d[1] = 0x0a;
    d[2] = 0x80; // VALID
    d.writeBigUInt64BE(BigInt(opts.information), 4);
    descs.push(d);
  }
  if (sks) {
    const d = Buffer.alloc(8);
    d[0] = 0x02; // sense key specific descriptor
    d[1] = 0x06;
    sks.copy(d, 4);
    descs.push(d);
  }
  const body = Buffer.concat(descs);
  const b = Buffer.alloc(8 + body.length);
  b[0] = 0x72;
  b[1] = code.key & 0x0f;
  b[2] = code.asc;
  b[3] = code.ascq;
  b[7] = body.length;
  body.copy(b, 8);
  return b;
}

function senseKeySpecific(opts: SenseOptions): Buffer | undefined {
  if (opts.field) {
    const s = Buffer.alloc(3);
    s[0] = 0x80 | (opts.field.inCdb ? 0x40 : 0) | (opts.field.bit !== undefined ? 0x08 | (opts.field.bit & 7) : 0);
    s.writeUInt16BE(opts.field.byte & 0xffff, 1);
    return s;
  }
  if (opts.progress !== undefined) {
    const s = Buffer.alloc(3);
    s[0] = 0x80;
    s.writeUInt16BE(Math.max(0, Math.min(0xffff, opts.progress)), 1);
    return s;
  }
  return undefined;
}

/** Parsed view of sense data in either format (for tests and REQUEST SENSE conversions). */
export function parseSense(b: Buffer): { key: number; asc: number; ascq: number; descriptor: boolean } {
  const code = b[0]! & 0x7f;
  if (code === 0x72 || code === 0x73) return { key: b[1]! & 0x0f, asc: b[2]!, ascq: b[3]!, descriptor: true };
  return { key: b[2]! & 0x0f, asc: b[12] ?? 0, ascq: b[13] ?? 0, descriptor: false };
}

/**
 * Thrown by a command handler to end the command with CHECK CONDITION.
 * The dispatcher formats the sense in the LU's current format (D_SENSE).
 */
export class ScsiError extends Error {
  constructor(
    readonly code: Asc,
    readonly opts: SenseOptions = {},
    message?: string,
  ) {
    super(message ?? `sense ${code.key.toString(16)}/${code.asc.toString(16).padStart(2, '0')}/${code.ascq.toString(16).padStart(2, '0')}`);
    this.name = 'ScsiError';
  }

  /** Invalid field in CDB at `byte` (and `bit`). */
  static cdb(byte: number, bit?: number, message?: string): ScsiError {
    return new ScsiError(Sense.invalidFieldInCdb, { field: { inCdb: true, byte, bit } }, message);
  }

  /** Invalid field in the parameter list at `byte` (and `bit`). */
  static param(byte: number, bit?: number, message?: string): ScsiError {
    return new ScsiError(Sense.invalidFieldInParameterList, { field: { inCdb: false, byte, bit } }, message);
  }
}

/** Thrown when a command conflicts with a reservation: status RESERVATION CONFLICT, no sense. */
export class ReservationConflictError extends Error {
  constructor(message = 'reservation conflict') {
    super(message);
    this.name = 'ReservationConflictError';
  }
}
