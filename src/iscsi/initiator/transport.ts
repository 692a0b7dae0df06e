// What a SCSI command sent through an iSCSI initiator looks like to its user
// (the iSCSI container driver): a CDB and its data in, a SCSI status and its
// data out. A SCSI status, CHECK CONDITION included, is a result; only a
// failure to deliver the command or to hear its outcome is a TransportError.

export interface ScsiRequest {
  lun: number;
  /** 6 to 16 bytes. */
  cdb: Buffer;
  /** The WRITE payload: exactly the command's transfer length. */
  dataOut?: Buffer;
  /** Bytes expected from the target (READ, INQUIRY, ...). */
  dataInLength?: number;
  /**
   * Where the Data-In lands (at least dataInLength bytes), e.g. the caller's
   * read buffer: saves a copy, and result.data is then a view of it. Its
   * contents are undefined when the command fails.
   */
  dataInBuffer?: Buffer;
  /** Overrides the session's command timeout for this command. */
  timeoutMs?: number;
  /**
   * When the caller stops waiting (Date.now() ms): its hold. The command's
   * timeout and its abort are cut to fit, the connection is dropped rather
   * than waited on past it (so the target drops the task when the session is
   * reinstated), and it is held for a new session only until then.
   */
  deadline?: number;
}

export interface ScsiResult {
  /** SCSI status byte: 0 GOOD, 2 CHECK CONDITION, 8 BUSY, 0x18 RESERVATION CONFLICT, 0x28 TASK SET FULL. */
  status: number;
  /** Sense bytes with CHECK CONDITION. */
  sense?: Buffer;
  /** Data-In, at most dataInLength bytes. */
  data?: Buffer;
  /** Bytes the target did not transfer (underflow) or would have (overflow, negative). */
  residual?: number;
}

/**
 * - `unreachable`: no connection to the target (and none came back in time);
 * - `timeout`: the command got no answer within its timeout (it was aborted);
 * - `login`: the target refused the login (wrong name, no such target, ...);
 * - `auth`: CHAP failed, either way;
 * - `closed`: the transport was closed by its owner;
 * - `protocol`: the target broke the protocol (the connection was dropped).
 */
export type TransportErrorKind = 'unreachable' | 'timeout' | 'login' | 'auth' | 'closed' | 'protocol';

/** The command could not be delivered or its outcome is unknown; never a SCSI status. */
export class TransportError extends Error {
  constructor(
    readonly kind: TransportErrorKind,
    message: string,
  ) {
    super(message);
    this.name = 'TransportError';
  }

  /** Worth trying again later: the target may come back. */
  get retryable(): boolean {
    return this.kind === 'unreachable' || this.kind === 'timeout' || this.kind === 'protocol';
  }
}

export type TransportState = 'connecting' | 'up' | 'down' | 'closed';

export interface ScsiTransport {
  execute(req: ScsiRequest): Promise<ScsiResult>;
  readonly state: TransportState;
  close(): Promise<void>;
}
