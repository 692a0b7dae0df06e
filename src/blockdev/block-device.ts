// The block-device interface under the SCSI layer (tcmu-runner style): what a
// logical unit needs from whatever stores its blocks. A plain file implements
// it for `tabula target`; the agent's table-driven vdisk implements it too.
// LBAs and block counts are in logical blocks of `blockSize` bytes. A failed
// operation throws BlockDeviceError, which says which sense code the command
// ends with.

import { Sense, type Asc } from '../scsi/sense.js';

/** Sense data (SPC-4): sense key, additional sense code and qualifier. */
export type SenseCode = Asc;

/**
 * The block errors that have a name, each exactly one sense code. The name
 * is for people (logs, the agent's error metrics); the sense is what the
 * initiator gets.
 */
export const BLOCK_ERROR_SENSE = {
  /** Unrecoverable read error. */
  'read-error': Sense.unrecoveredReadError,
  /** Write fault. */
  'write-error': Sense.writeError,
  /** Held I/O timed out or the device is transitioning: initiators retry. */
  'not-ready': Sense.notReadyTransition,
  /** Thin pool (container space) exhausted. */
  'no-space': Sense.spaceAllocationFailedWriteProtect,
  'write-protected': Sense.writeProtected,
  'out-of-range': Sense.lbaOutOfRange,
  /** The vdisk is not (or no longer) exported here. */
  'lu-not-supported': Sense.lunNotSupported,
  /** A failure the target cannot act on (e.g. a copy-on-write that failed). */
  'internal-failure': Sense.internalTargetFailure,
  /**
   * The container is unreachable (a network LUN whose target did not come
   * back within the hold timeout): not a medium error, and retryable.
   */
  unreachable: Sense.logicalUnitCommunicationFailureAborted,
} as const satisfies Record<string, SenseCode>;

export type BlockErrorKind = keyof typeof BLOCK_ERROR_SENSE;

/** The name of a sense code, or 'other-sense' for one without a name here. */
export function blockErrorKind(sense: SenseCode): BlockErrorKind | 'other-sense' {
  for (const [kind, s] of Object.entries(BLOCK_ERROR_SENSE)) {
    if (s.key === sense.key && s.asc === sense.asc && s.ascq === sense.ascq) return kind as BlockErrorKind;
  }
  return 'other-sense';
}

/**
 * A failed block operation. It carries the sense the command ends with,
 * given by name (a BlockErrorKind) or as sense chosen elsewhere (the
 * controller's, for a failed fault); the SCSI layer reports exactly that.
 */
export class BlockDeviceError extends Error {
  readonly sense: SenseCode;
  /** The sense's name, for logs and metrics. */
  readonly kind: BlockErrorKind | 'other-sense';

  constructor(
    error: BlockErrorKind | SenseCode,
    message: string,
    /** First LBA that failed, when known (reported in the sense INFORMATION field). */
    readonly lba?: number,
  ) {
    super(message);
    this.name = 'BlockDeviceError';
    if (typeof error === 'string') {
      this.kind = error;
      this.sense = BLOCK_ERROR_SENSE[error];
    } else {
      this.kind = blockErrorKind(error);
      this.sense = error;
    }
  }
}

export interface WriteOptions {
  /** Force unit access: durable on stable storage before the promise resolves. */
  fua?: boolean;
}

export interface ProvisioningStatus {
  /** true = mapped (holds data), false = deallocated (reads return zeros). */
  mapped: boolean;
  /** Number of blocks from `lba` with the same status (>= 1). */
  blocks: number;
}

export interface BlockDevice {
  readonly blockSize: number;
  /** Capacity in logical blocks; may change (resize). */
  readonly blockCount: number;
  /** Supports deallocation (UNMAP, WRITE SAME with UNMAP): LBPME. */
  readonly thin: boolean;

  /** Read `blocks` blocks at `lba`. The returned buffer is owned by the caller. */
  read(lba: number, blocks: number): Promise<Buffer>;
  /** Write data (a whole number of blocks) at `lba`. */
  write(lba: number, data: Buffer, opts?: WriteOptions): Promise<void>;
  /**
   * Optional synchronous fast path of read(): the data when the device can
   * read it inline right now (a page-cache hit), else undefined with nothing
   * done (call read()). Throws what read() would reject with. It spares the
   * SCSI layers their promise hops on the common 4 KiB I/O.
   */
  readNow?(lba: number, blocks: number): Buffer | undefined;
  /** Optional synchronous fast path of write(): true when written inline now, false with nothing done (call write()). */
  writeNow?(lba: number, data: Buffer, opts?: WriteOptions): boolean;
  /** Make every completed write durable (SYNCHRONIZE CACHE). */
  flush(): Promise<void>;
  /** Deallocate; afterwards the range reads as zeros (LBPRZ). A no-op on thick devices is not allowed: they must write zeros. */
  unmap(lba: number, blocks: number): Promise<void>;
  /** Make the range read as zeros; `deallocate` lets a thin device unmap instead of writing. */
  writeZeroes(lba: number, blocks: number, deallocate: boolean): Promise<void>;
  /** Provisioning status of the extent starting at `lba` (GET LBA STATUS). */
  provisioning(lba: number, maxBlocks: number): Promise<ProvisioningStatus>;
  /**
   * COMPARE AND WRITE as one operation of the device: compares the blocks
   * at `lba` with `verify` and, only when they are equal, writes `data`
   * (same length). Returns the byte offset of the first difference, or -1
   * when it wrote. Optional: a device whose read-compare-write must be
   * atomic beyond the LU's own exclusion (a vdisk exported on several
   * agents) implements it; others get read, compare and write.
   */
  compareAndWrite?(lba: number, verify: Buffer, data: Buffer, opts?: WriteOptions): Promise<number>;
  close(): Promise<void>;
}
