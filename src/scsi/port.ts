// The port between the iSCSI transport and the SCSI device server (SPDK's
// lib/iscsi vs lib/scsi): ScsiPort and what crosses it (I_T nexus, request,
// response, status, task attributes, task management codes). iSCSI builds a
// ScsiRequest per command and hands it to a ScsiPort; it knows nothing about
// LUN semantics, and asks the port what it must know of a command.

export const enum ScsiStatus {
  Good = 0x00,
  CheckCondition = 0x02,
  ConditionMet = 0x04,
  Busy = 0x08,
  ReservationConflict = 0x18,
  TaskSetFull = 0x28,
  AcaActive = 0x30,
  TaskAborted = 0x40,
}

export const enum TaskAttribute {
  Untagged = 0,
  Simple = 1,
  Ordered = 2,
  HeadOfQueue = 3,
  Aca = 4,
}

/**
 * An I_T nexus: the pair of SCSI ports a command travels between.
 * For iSCSI (RFC 7143 / SPC-4 TransportID): initiator port name
 * "<initiator iqn>,i,0x<isid hex 12>", target port name "<target iqn>,t,0x<tpgt hex 4>".
 */
export interface Nexus {
  /** Stable key for maps: `${initiatorPort}|${targetPort}`. */
  readonly id: string;
  readonly initiatorName: string;
  readonly initiatorPort: string;
  /** ISID (6 bytes) as a 48-bit number. */
  readonly isid: number;
  readonly targetName: string;
  readonly targetPort: string;
  readonly relativeTargetPortId: number;
  readonly targetPortGroup: number;
}

export function makeNexus(
  initiatorName: string,
  isid: number,
  targetName: string,
  tpgt: number,
  relativeTargetPortId = tpgt,
  targetPortGroup = tpgt,
): Nexus {
  const initiatorPort = `${initiatorName},i,0x${isid.toString(16).padStart(12, '0')}`;
  const targetPort = `${targetName},t,0x${tpgt.toString(16).padStart(4, '0')}`;
  return {
    id: `${initiatorPort}|${targetPort}`,
    initiatorName,
    initiatorPort,
    isid,
    targetName,
    targetPort,
    relativeTargetPortId,
    targetPortGroup,
  };
}

export interface ScsiRequest {
  nexus: Nexus;
  /** LUN number decoded from the 8-byte SAM LUN (flat or peripheral addressing). */
  lun: number;
  cdb: Buffer;
  attr: TaskAttribute;
  /** Transport task tag (iSCSI ITT), unique among this nexus's outstanding tasks. */
  tag: number;
  /** Bytes the initiator sent (length <= expectedLength); null for commands without Data-Out. */
  dataOut: Buffer | null;
  /** Expected Data Transfer Length the initiator declared (for the data-out or data-in direction). */
  expectedLength: number;
  /** Set by the transport when the task is aborted; long-running handlers may check it. */
  aborted?: boolean;
}

export interface ScsiResponse {
  status: ScsiStatus;
  /** Sense data (fixed or descriptor format) when status is CHECK CONDITION. */
  sense?: Buffer;
  /** Data-In the command produced, untruncated (the transport clips to expectedLength and reports residuals). */
  dataIn?: Buffer;
  /** For commands with Data-Out: the number of bytes the CDB asked for (drives write residuals). */
  dataOutLength?: number;
}

export const enum TmfCode {
  AbortTask = 1,
  AbortTaskSet = 2,
  ClearAca = 3,
  ClearTaskSet = 4,
  LogicalUnitReset = 5,
  TargetWarmReset = 6,
  TargetColdReset = 7,
}

export const enum TmfResult {
  Complete = 0,
  TaskDoesNotExist = 1,
  LunDoesNotExist = 2,
  NotSupported = 5,
  Rejected = 255,
}

/**
 * What a SCSI target device (a set of LUNs) offers a transport.
 * The transport owns task bookkeeping (which tasks exist, waiting for aborted
 * tasks to finish); the device server owns SCSI side effects of task management
 * (unit attentions, reservation release on reset).
 */
export interface ScsiPort {
  execute(req: ScsiRequest): Promise<ScsiResponse>;
  /**
   * Optional: execute() answering in the same turn when it can (a READ or
   * WRITE done inline, a check that fails), else a promise. The transport
   * uses it when present, to skip promise hops per command; a throw counts
   * as execute() rejecting.
   */
  start?(req: ScsiRequest): ScsiResponse | Promise<ScsiResponse>;
  /** SCSI-level effects of a task management function, after the transport has aborted the tasks concerned. */
  taskManagement(fn: TmfCode, nexus: Nexus, lun: number): Promise<TmfResult>;
  /**
   * True if the command's handler is done with its Data-Out buffer once
   * execute() settles, so the transport may reuse the buffer (WRITE data;
   * from the command table). Called per command: must not allocate.
   */
  releasesDataOut(cdb: Buffer): boolean;
  /** True if `lun` exists (TMF "LUN does not exist"). */
  hasLun(lun: number): boolean;
  /** The I_T nexus is gone (session closed); not a reset. */
  nexusLost(nexus: Nexus): void;
}
