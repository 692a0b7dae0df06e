// Types shared by the opcode table (commands.ts) and the command families
// (one file each). A handler gets a CommandContext, returns a ScsiResponse or
// throws ScsiError / ReservationConflictError / BlockDeviceError; the
// dispatcher turns exceptions into status and sense.
import type { BlockDevice } from '../blockdev/block-device.js';
import type { Asc } from './sense.js';
import type { Nexus, ScsiRequest, ScsiResponse } from './types.js';

/**
 * How a command interacts with reservations (SPC-4 5.13.1 table, SBC-4 4.17):
 * - allowed: never conflicts (INQUIRY, REPORT LUNS, REQUEST SENSE, PR IN/OUT which check themselves, ...)
 * - read: reads the medium (conflicts only under exclusive-access types for non-holders)
 * - write: modifies the medium or LU state (conflicts under write-exclusive and exclusive-access types for non-holders)
 * - conflict: conflicts whenever another nexus holds any reservation
 */
export type ReservationClass = 'allowed' | 'read' | 'write' | 'conflict';

export interface CommandContext {
  readonly req: ScsiRequest;
  readonly lu: LogicalUnitApi;
  readonly spec: CommandSpec;
}

export type CommandHandler = (ctx: CommandContext) => Promise<ScsiResponse> | ScsiResponse;

export interface CommandSpec {
  opcode: number;
  /** For opcodes with service actions (0x9e, 0xa3, 0x7f, 0x48, 0x5e, 0x5f, 0x83, 0x84...). */
  serviceAction?: number;
  name: string;
  cdbLength: number;
  handler: CommandHandler;
  /** The command carries a Data-Out buffer (write data or a parameter list). */
  dataOut: boolean;
  reservation: ReservationClass;
  /** Processed without reporting a pending unit attention (INQUIRY, REPORT LUNS, REQUEST SENSE). */
  skipsUnitAttention?: boolean;
  /** Allowed while a SANITIZE is in progress (INQUIRY, REPORT LUNS, REQUEST SENSE, ...). */
  allowedWhileBusy?: boolean;
  /** Modifies the medium: refused with DATA PROTECT on a read-only LU before the handler runs. */
  writesMedium?: boolean;
  /** CDB usage bitmap for REPORT SUPPORTED OPERATION CODES (one byte per CDB byte; bit set = field used). */
  cdbUsage: number[];
}

/** Identification of a logical unit (INQUIRY, VPD 0x80/0x83). Stable across restarts. */
export interface LuIdentity {
  vendor: string; // 8 chars
  product: string; // 16 chars
  revision: string; // 4 chars
  serial: string;
  /** 16-byte NAA IEEE Registered Extended (type 6) designator from a stable LUN id. */
  naa: Buffer;
}

export interface UnitAttentionScope {
  /** Raise only for this nexus. */
  only?: Nexus;
  /** Raise for every nexus except this one. */
  except?: Nexus;
}

/**
 * Reservation state of one LU (SPC-2 RESERVE/RELEASE and SPC-3+ persistent
 * reservations). Implemented in reservations.ts; the state store sits behind
 * an interface so that the controller can own it cluster-wide later.
 */
export interface ReservationGate {
  /** true if `spec` from `req.nexus` conflicts with the current reservation. */
  conflicts(req: ScsiRequest, spec: CommandSpec): boolean;
  /** LU reset / target reset: releases SPC-2 reservations (persistent ones survive). */
  onReset(): void;
  /** A nexus went away (session closed): drops its SPC-2 reservation. */
  onNexusLost(nexus: Nexus): void;
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
  /** D_SENSE in the control mode page: report sense in descriptor format. */
  descriptorSense(): boolean;
  raiseUnitAttention(code: Asc, scope?: UnitAttentionScope): void;
  /** Run `fn` with no other command of this LU in progress (COMPARE AND WRITE, SANITIZE, ...). */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
  /** Set or clear a busy state (SANITIZE in progress). */
  setBusy(state: BusyState | null): void;
}

export interface TargetApi {
  readonly name: string;
  luns(): number[];
  lu(lun: number): LogicalUnitApi | undefined;
  /** Find an LU of this target by a VPD 0x83 designator (EXTENDED COPY identification descriptors). */
  luByDesignator(designator: Buffer): LogicalUnitApi | undefined;
}

export function good(dataIn?: Buffer): ScsiResponse {
  return dataIn ? { status: 0, dataIn } : { status: 0 };
}
