// The block-device interface under the SCSI layer (tcmu-runner style): what a
// logical unit needs from whatever stores its blocks. A plain file implements
// it for `tabula target`; the agent's table-driven vdisk implements it too.
// LBAs and block counts are in logical blocks of `blockSize` bytes.

export type BlockErrorKind =
  | 'read-error' // unrecoverable read error (medium error)
  | 'write-error' // write fault (medium error)
  | 'not-ready' // held I/O timed out or device transitioning; initiators retry
  | 'no-space' // thin pool exhausted
  | 'write-protected'
  | 'out-of-range';

/** A failed block operation; the SCSI layer maps `kind` to exactly one sense code. */
export class BlockDeviceError extends Error {
  constructor(
    readonly kind: BlockErrorKind,
    message: string,
    /** First LBA that failed, when known (reported in the sense INFORMATION field). */
    readonly lba?: number,
  ) {
    super(message);
    this.name = 'BlockDeviceError';
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
  /** Make every completed write durable (SYNCHRONIZE CACHE). */
  flush(): Promise<void>;
  /** Deallocate; afterwards the range reads as zeros (LBPRZ). A no-op on thick devices is not allowed: they must write zeros. */
  unmap(lba: number, blocks: number): Promise<void>;
  /** Make the range read as zeros; `deallocate` lets a thin device unmap instead of writing. */
  writeZeroes(lba: number, blocks: number, deallocate: boolean): Promise<void>;
  /** Provisioning status of the extent starting at `lba` (GET LBA STATUS). */
  provisioning(lba: number, maxBlocks: number): Promise<ProvisioningStatus>;
  close(): Promise<void>;
}
