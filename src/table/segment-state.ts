// Segment states and what each one does to an I/O (docs/architecture.md,
// "Segment states"). The
// agent asks `inhibits(state, op)` once per segment piece of every I/O; the
// answer comes from one table so the policy lives in exactly one place.

export const enum SegmentState {
  /** Allocated: reads and writes go to the container. */
  Normal = 0,
  /** Never written or unmapped: reads return zeros, writes fault. */
  Zero = 1,
  /** Shared (snapshot/clone) or being migrated: reads go to the container, writes fault. */
  NoWrite = 2,
  /** Being reconfigured, beyond the end during a resize, or fenced: everything faults. */
  Invalid = 3,
  /** The container failed: everything fails with MEDIUM ERROR and a fault is reported. */
  Error = 4,
}

/** Number of states; states are the integers 0 .. SEGMENT_STATE_COUNT-1. */
export const SEGMENT_STATE_COUNT = 5;

/** Names in state order, as printed by the CLI and carried in faults. */
export const SEGMENT_STATE_NAMES: readonly string[] = ['normal', 'zero', 'no-write', 'invalid', 'error'];

export function isSegmentState(n: number): n is SegmentState {
  return Number.isInteger(n) && n >= 0 && n < SEGMENT_STATE_COUNT;
}

export function segmentStateName(state: SegmentState): string {
  const name = SEGMENT_STATE_NAMES[state];
  if (name === undefined) throw new RangeError(`unknown segment state ${String(state)}`);
  return name;
}

/** Parses a state name (case-insensitive; `nowrite` and `no_write` accepted for `no-write`). */
export function parseSegmentState(text: string): SegmentState {
  const key = text.trim().toLowerCase().replace(/_/g, '-');
  const i = SEGMENT_STATE_NAMES.indexOf(key === 'nowrite' ? 'no-write' : key);
  if (i < 0) throw new RangeError(`unknown segment state "${text}" (expected one of ${SEGMENT_STATE_NAMES.join(', ')})`);
  return i as SegmentState;
}

/** True for states whose entries point at a container segment (or may, for error). */
export function stateHasLocation(state: SegmentState): boolean {
  return state === SegmentState.Normal || state === SegmentState.NoWrite || state === SegmentState.Error;
}

/** True for states whose entries must point at a container segment. */
export function stateNeedsLocation(state: SegmentState): boolean {
  return state === SegmentState.Normal || state === SegmentState.NoWrite;
}

/** The operation an I/O performs on a segment, as reported in a fault. */
export const enum IoOp {
  Read = 0,
  Write = 1,
  Unmap = 2,
  CompareAndWrite = 3,
  WriteSame = 4,
  Verify = 5,
}

export const IO_OP_COUNT = 6;

export const IO_OP_NAMES: readonly string[] = ['read', 'write', 'unmap', 'compare-and-write', 'write-same', 'verify'];

export function isIoOp(n: number): n is IoOp {
  return Number.isInteger(n) && n >= 0 && n < IO_OP_COUNT;
}

export function ioOpName(op: IoOp): string {
  const name = IO_OP_NAMES[op];
  if (name === undefined) throw new RangeError(`unknown I/O operation ${String(op)}`);
  return name;
}

export function parseIoOp(text: string): IoOp {
  const i = IO_OP_NAMES.indexOf(text.trim().toLowerCase().replace(/_/g, '-'));
  if (i < 0) throw new RangeError(`unknown I/O operation "${text}" (expected one of ${IO_OP_NAMES.join(', ')})`);
  return i as IoOp;
}

/** True when the operation only reads the segment (it never changes data). */
export function isReadOp(op: IoOp): boolean {
  return op === IoOp.Read || op === IoOp.Verify;
}

/**
 * What the agent does with an I/O piece on a segment in a given state:
 * - `proceed`: do the container I/O;
 * - `zero-read`: satisfy the read with zeros, no container I/O;
 * - `fault`: hold the I/O and report a fault to the controller;
 * - `fail`: fail it now (MEDIUM ERROR) and report a fault.
 */
export type Inhibition = 'proceed' | 'zero-read' | 'fault' | 'fail';

// Rows by SegmentState, columns by IoOp:
//                  read         write    unmap    c-and-w  w-same   verify
// Unmap of a zero segment faults like any write (docs/architecture.md,
// "Segment states"): the
// controller, not the agent, decides that nothing needs doing.
const POLICY: readonly (readonly Inhibition[])[] = [
  /* normal   */ ['proceed', 'proceed', 'proceed', 'proceed', 'proceed', 'proceed'],
  /* zero     */ ['zero-read', 'fault', 'fault', 'fault', 'fault', 'zero-read'],
  /* no-write */ ['proceed', 'fault', 'fault', 'fault', 'fault', 'proceed'],
  /* invalid  */ ['fault', 'fault', 'fault', 'fault', 'fault', 'fault'],
  /* error    */ ['fail', 'fail', 'fail', 'fail', 'fail', 'fail'],
];

/** The single policy function: how `state` affects an `op` piece. */
export function inhibits(state: SegmentState, op: IoOp): Inhibition {
  const row = POLICY[state];
  const result = row?.[op];
  if (result === undefined) {
    throw new RangeError(`inhibits: unknown ${row === undefined ? `segment state ${String(state)}` : `I/O operation ${String(op)}`}`);
  }
  return result;
}
