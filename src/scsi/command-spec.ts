// A row of the command table (commands.ts) and what its handler gets. A
// handler receives a CommandContext (the request, its logical unit as
// lu-api.ts describes it, and its own row), returns a ScsiResponse or throws
// ScsiError / ReservationConflictError / BlockDeviceError; the dispatcher
// (logical-unit.ts) turns exceptions into status and sense.
import type { LogicalUnitApi, ReservationClass, TargetApi } from './lu-api.js';
import type { ScsiRequest, ScsiResponse } from './port.js';
import type { Asc } from './sense.js';

export interface CommandContext {
  readonly req: ScsiRequest;
  readonly lu: LogicalUnitApi;
  readonly spec: CommandSpec;
}

export type CommandHandler = (ctx: CommandContext) => Promise<ScsiResponse> | ScsiResponse;

/** Answers a command addressed to a LUN with no logical unit behind it (SPC-4 5.8: INQUIRY, REPORT LUNS, REQUEST SENSE). */
export type NoLunHandler = (req: ScsiRequest, target: TargetApi) => ScsiResponse;

export interface CommandSpec {
  opcode: number;
  /** For opcodes with service actions (0x9e, 0xa3, 0x7f, 0x48, 0x5e, 0x5f, 0x83, 0x84...). */
  serviceAction?: number;
  name: string;
  cdbLength: number;
  handler: CommandHandler;
  /** The command carries a Data-Out buffer (write data or a parameter list). */
  dataOut: boolean;
  /**
   * The handler is done with the Data-Out buffer once it completes, so the
   * transport may reuse it for a later command (WRITE data); other commands'
   * parameter data may be kept (e.g. a SANITIZE pattern).
   */
  releasesDataOut?: boolean;
  reservation: ReservationClass;
  /** Processed without reporting a pending unit attention (INQUIRY, REPORT LUNS, REQUEST SENSE). */
  skipsUnitAttention?: boolean;
  /** A pending unit attention this command answers, cleared when it runs (REPORT LUNS: REPORTED LUNS DATA HAS CHANGED, SPC-4 6.33). */
  clearsUnitAttention?: Asc;
  /** Allowed while a SANITIZE is in progress (INQUIRY, REPORT LUNS, REQUEST SENSE, ...). */
  allowedWhileBusy?: boolean;
  /** Modifies the medium: refused with DATA PROTECT on a read-only LU before the handler runs. */
  writesMedium?: boolean;
  /** How the target answers it for a LUN that does not exist; without it, LOGICAL UNIT NOT SUPPORTED. */
  noLun?: NoLunHandler;
  /** CDB usage bitmap for REPORT SUPPORTED OPERATION CODES (one byte per CDB byte; bit set = field used). */
  cdbUsage: number[];
}

export function good(dataIn?: Buffer): ScsiResponse {
  return dataIn ? { status: 0, dataIn } : { status: 0 };
}
