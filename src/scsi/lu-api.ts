// The logical unit and its target as command handlers see them
// (LogicalUnitApi, TargetApi) and the pieces those expose: identity, block
// limits, port groups, unit attention scope, busy state and the reservation
// gate. logical-unit.ts and target-device.ts implement them; the handlers
// (one file per command family) import only this, not the classes, because
// logical-unit.ts imports the handlers through the command table.
import type { BlockDevice } from '../blockdev/block-device.js';
import type { ModeState } from './mode-pages.js';
import type { Asc, SenseOptions } from './sense.js';
import type { Nexus, ScsiRequest, ScsiStatus } from './port.js';

/** Identification of a logical unit (INQUIRY, VPD 0x80/0x83). Stable across restarts. */
export interface LuIdentity {
  vendor: string; // 8 chars
  product: string; // 16 chars
  revision: string; // 4 chars
  serial: string;
  /** 16-byte NAA IEEE Registered Extended (type 6) designator from a stable LUN id. */
  naa: Buffer;
}

/** Block limits advertised in VPD page 0xB0 and enforced by the handlers. */
export interface BlockLimits {
  /** MAXIMUM TRANSFER LENGTH for READ/WRITE/VERIFY (blocks). */
  maxTransferBlocks: number;
  /** OPTIMAL TRANSFER LENGTH (blocks). */
  optimalTransferBlocks: number;
  /** OPTIMAL TRANSFER LENGTH GRANULARITY (blocks). */
  transferGranularity: number;
  maxUnmapBlocks: number;
  maxUnmapDescriptors: number;
  /** OPTIMAL UNMAP GRANULARITY (blocks). */
  unmapGranularity: number;
  maxWriteSameBlocks: number;
  /** MAXIMUM COMPARE AND WRITE LENGTH (blocks, <= 255). */
  maxCompareAndWriteBlocks: number;
  /** MAXIMUM ATOMIC TRANSFER LENGTH (blocks) for WRITE ATOMIC(16). */
  maxAtomicBlocks: number;
  /** ATOMIC ALIGNMENT (blocks; 0 = any). */
  atomicAlignment: number;
  /** ATOMIC TRANSFER LENGTH GRANULARITY (blocks; 0 = any). */
  atomicGranularity: number;
}

export const DEFAULT_LIMITS_BYTES = {
  optimalTransfer: 1 << 20,
  maxUnmap: 1 << 30,
  maxWriteSame: 1 << 30,
  maxAtomic: 1 << 20,
};

export function defaultLimits(blockSize: number): BlockLimits {
  return {
    // 65536 blocks: libiscsi moves that much in one WRITE(16)/READ(16) without consulting the limit
    maxTransferBlocks: 65536,
    optimalTransferBlocks: DEFAULT_LIMITS_BYTES.optimalTransfer / blockSize,
    transferGranularity: 1,
    // libiscsi treats more than 1M LBAs or descriptors as insane
    maxUnmapBlocks: Math.min(1 << 20, DEFAULT_LIMITS_BYTES.maxUnmap / blockSize),
    maxUnmapDescriptors: 256,
    unmapGranularity: 1,
    maxWriteSameBlocks: DEFAULT_LIMITS_BYTES.maxWriteSame / blockSize,
    maxCompareAndWriteBlocks: 64,
    maxAtomicBlocks: DEFAULT_LIMITS_BYTES.maxAtomic / blockSize,
    atomicAlignment: 0,
    atomicGranularity: 0,
  };
}

/** Asymmetric access states (SPC-4 5.16.2), by the codes REPORT TARGET PORT GROUPS reports. */
export const enum AccessState {
  ActiveOptimized = 0x0,
  ActiveNonOptimized = 0x1,
  Standby = 0x2,
  Unavailable = 0x3,
  Transitioning = 0xf,
}

/** A target port group as reported by REPORT TARGET PORT GROUPS and VPD 0x83. */
export interface PortGroup {
  id: number;
  relativePortIds: number[];
  /**
   * Its asymmetric access state. Absent: a target whose groups are always
   * active/optimized (`tabula target`), which reports no other state as
   * supported either.
   */
  state?: AccessState;
}

export interface UnitAttentionScope {
  /** Raise only for this nexus. */
  only?: Nexus;
  /** Raise for every nexus except this one. */
  except?: Nexus;
}

/**
 * How a command interacts with reservations (SPC-4 5.13.1 table, SBC-4 4.17);
 * a column of the command table:
 * - allowed: never conflicts (INQUIRY, REPORT LUNS, REQUEST SENSE, PR IN/OUT which check themselves, ...)
 * - read: reads the medium (conflicts only under exclusive-access types for non-holders)
 * - write: modifies the medium or LU state (conflicts under write-exclusive and exclusive-access types for non-holders)
 * - conflict: conflicts whenever another nexus holds any reservation
 */
export type ReservationClass = 'allowed' | 'read' | 'write' | 'conflict';

/**
 * Reservation state of one LU (SPC-2 RESERVE/RELEASE and SPC-3+ persistent
 * reservations). Implemented in reservations.ts; the state store sits behind
 * an interface so that the controller can own it cluster-wide later.
 */
export interface ReservationGate {
  /** true if a command of this reservation class (its command table row) from `req.nexus` conflicts with the current reservation. */
  conflicts(req: ScsiRequest, spec: { readonly reservation: ReservationClass }): boolean;
  /** LU reset / target reset: releases SPC-2 reservations (persistent ones survive). */
  onReset(): void;
  /** A nexus went away (session closed): drops its SPC-2 reservation. */
  onNexusLost(nexus: Nexus): void;
}

/**
 * A request that changes the LU's reservation state or raises unit
 * attentions on other nexuses: what one path's action must make every path
 * see (docs/architecture.md, "One logical unit on every path").
 * - prout: PERSISTENT RESERVE OUT (cdb, data); reserve / release: RESERVE /
 *   RELEASE (6) or (10) (cdb)
 * - lu-reset: LOGICAL UNIT RESET; clear-task-set: CLEAR TASK SET
 * - nexus-lost: the nexus went away (drops its SPC-2 reservation)
 * - mode-select: MODE SELECT(6)/(10) (cdb, data: the parameter list)
 */
export type LuRequestKind = 'prout' | 'reserve' | 'release' | 'lu-reset' | 'clear-task-set' | 'nexus-lost' | 'mode-select';

export interface LuStateRequest {
  kind: LuRequestKind;
  cdb: Buffer;
  data: Buffer | null;
}

/** How a request ended: GOOD, RESERVATION CONFLICT, or CHECK CONDITION with sense. */
export interface LuOutcome {
  status: ScsiStatus;
  sense?: { code: Asc; opts: SenseOptions };
  /** Why (for the log). */
  message?: string;
}

/** A unit attention a request raises, and whether it also aborts the LU's tasks (resets, CLEAR TASK SET). */
export interface LuEvent {
  code: Asc;
  scope: UnitAttentionScope;
  abortTasks: boolean;
}

/**
 * Who decides an LU's reservation requests. Without one, the LU decides
 * them itself (reservations.ts, applyLuRequest). An agent serving a vdisk
 * that the controller owns gives each LU an authority that asks the
 * controller; decide() resolves only once the new state is installed in
 * this LU's replica and its unit attentions are raised.
 */
export interface ReservationAuthority {
  decide(nexus: Nexus, req: LuStateRequest): Promise<LuOutcome>;
}

/** A condition that makes most commands fail with NOT READY (e.g. sanitize in progress). */
export interface BusyState {
  sense: Asc;
  /** Progress 0..65535 for the sense-key specific field, if known. */
  progress(): number | undefined;
}

/** What a command handler may use of its logical unit. */
export interface LogicalUnitApi {
  readonly lun: number;
  readonly device: BlockDevice;
  readonly identity: LuIdentity;
  readonly reservations: ReservationGate;
  /** The target this LU belongs to (EXTENDED COPY finds other LUs here; REPORT LUNS lists them). */
  readonly target: TargetApi;
  /** Read-only LU (e.g. an exported snapshot): writes get DATA PROTECT. */
  readonly readOnly: boolean;
  readonly mode: ModeState;
  readonly limits: BlockLimits;
  /** Whether EXTENDED COPY is offered (3PC bit, VPD 0x8F). */
  readonly thirdPartyCopy: boolean;
  /** D_SENSE in the control mode page: report sense in descriptor format. */
  descriptorSense(): boolean;
  /** Target port groups of this LU (ALUA, implicit): its own when set (setPortGroups), else the target's. */
  portGroups(): readonly PortGroup[];
  raiseUnitAttention(code: Asc, scope?: UnitAttentionScope): void;
  /** Dequeue the oldest pending unit attention for this nexus (REQUEST SENSE). */
  takeUnitAttention(nexus: Nexus): Asc | undefined;
  /** Run `fn` with no other command of this LU in progress (COMPARE AND WRITE, SANITIZE, ...). */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
  /** The current busy state (SANITIZE in progress), if any. */
  busy(): BusyState | null;
  /** Set or clear a busy state (SANITIZE in progress). */
  setBusy(state: BusyState | null): void;
}

/** What a command handler may use of the target its LU belongs to. */
export interface TargetApi {
  readonly name: string;
  luns(): number[];
  lu(lun: number): LogicalUnitApi | undefined;
  /** Find an LU of this target by a VPD 0x83 designator (EXTENDED COPY identification descriptors). */
  luByDesignator(designator: Buffer): LogicalUnitApi | undefined;
}
