// What the table-driven block device tells the controller and what it gets
// back (docs/architecture.md, "Decisions"). The device only knows these interfaces; the agent's
// connection code implements FaultSink over the wire (proto Fault/FaultReply,
// Release/ReleaseReply), and tests implement it directly.
import { BlockDeviceError, type BlockErrorKind, type SenseCode } from '../blockdev/block-device.js';
import type { IoOp, SegmentState } from '../table/segment-state.js';

/** One I/O piece (one segment's share of an I/O) met a state that inhibits it. */
export interface Fault {
  vdiskId: string;
  /** Table version the piece was evaluated against. */
  version: number;
  segment: number;
  op: IoOp;
  /** First LBA and block count of the piece within the segment. */
  lba: number;
  blocks: number;
  /** The inhibiting state; Error also for a container that failed under a normal segment. */
  state: SegmentState;
  /** Why, for state Error: the container's I/O error; for a leg fault, the failed leg's error. */
  detail?: string;
  /**
   * A leg fault: the I/O failed on this copy (container id) of a mirrored
   * segment only, and `state` is the segment's state. Absent otherwise.
   */
  failedContainer?: string;
}

/** The controller's sense for a failed fault is the block device's sense type: the logical unit reports it as is. */
export type { SenseCode };

/**
 * The controller's answer to a fault:
 * - `retry`: re-evaluate the piece against the table, once it is at `minVersion` or newer when given;
 * - `fail`: end the I/O with the controller's sense, exactly (MEDIUM ERROR when it gives none);
 * - `wait`: keep holding; re-evaluate after the next table installation (or fail at the hold timeout);
 * - `done`: the controller completed the operation itself; finish the piece with GOOD, no container I/O.
 */
export type FaultDecision =
  | { action: 'retry'; minVersion?: number }
  | { action: 'fail'; sense?: SenseCode; reason?: string }
  | { action: 'wait' }
  | { action: 'done' };

/** Whole segments in state normal were unmapped: return them to zero and free their container space. */
export interface ReleaseRequest {
  vdiskId: string;
  version: number;
  firstSegment: number;
  segmentCount: number;
}

export interface ReleaseResult {
  ok: boolean;
  /** When ok: the table version in which the segments are zero; the unmap completes once it is installed. */
  version: number;
  error?: string;
}

/**
 * Where the device sends faults. `fault` resolves with the controller's
 * decision; it should stay pending (not reject) while the controller is
 * unreachable, since the device enforces the hold timeout itself. A rejection
 * means the fault could not be delivered: the piece is held until a new table
 * arrives or the hold timeout.
 *
 * `release` is optional. Without it, or when it rejects (not delivered) or
 * answers !ok, whole normal segments are zeroed in place (discarded in their
 * container) instead, which keeps LBPRZ but leaves them allocated. A release
 * that WAS sent but whose answer was lost must reject with ReleaseLostError:
 * the controller may have applied it, so zeroing in place and completing
 * could let a later write be lost to the table change; the unmap fails NOT
 * READY instead and the initiator retries it.
 */
export interface FaultSink {
  fault(f: Fault): Promise<FaultDecision>;
  release?(r: ReleaseRequest): Promise<ReleaseResult>;
}

/**
 * The controller's lease as a device sees it (Welcome.lease_ms). While
 * `expired`, the controller may have allocated or copied segments of this
 * vdisk behind the agent's back (another agent wrote them), so segments in
 * state zero or no-write are not served from the table held here: their I/O
 * is held until the lease is renewed (the agent has resynced its tables) or
 * the hold timeout. Normal segments are served regardless.
 */
export interface Lease {
  /** Read on the I/O path: keep it cheap. */
  readonly expired: boolean;
  /** Calls `fn` each time the lease is valid again; returns the unsubscribe. */
  onRenewed(fn: () => void): () => void;
}

/** A release reached the controller but its answer did not come back (the stream broke). */
export class ReleaseLostError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ReleaseLostError';
  }
}

/** A failed vdisk I/O: a BlockDeviceError that also says where. */
export class VdiskIoError extends BlockDeviceError {
  constructor(
    /** By name, or the sense the controller chose for a failed fault. */
    error: BlockErrorKind | SenseCode,
    message: string,
    lba: number | undefined,
    readonly vdiskId: string,
    /** Vdisk segment of the failed piece (-1 when not about one segment). */
    readonly segment: number,
  ) {
    super(error, message, lba);
    this.name = 'VdiskIoError';
  }
}
