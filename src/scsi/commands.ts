// The one table of SCSI commands Tabula serves (tgt/gotgt style): a row per
// operation code (and service action), naming its handler, CDB length,
// reservation class (SPC-4 5.13 / SBC-4 4.17 conflict tables) and CDB usage
// bitmap. Dispatch and REPORT SUPPORTED OPERATION CODES both read this table,
// so adding a command is adding one row.
import { readCapacity10, readCapacity16 } from './capacity.js';
import { alloc32, clip } from './cdb.js';
import type { CommandContext, CommandHandler, CommandSpec, NoLunHandler } from './command-spec.js';
import { good } from './command-spec.js';
import type { ReservationClass } from './lu-api.js';
import { extendedCopy, receiveCopyResults } from './extended-copy.js';
import { inquiry, inquiryNoLun } from './inquiry.js';
import { modeSelect, modeSense } from './mode.js';
import { getLbaStatus, unmap, writeSame } from './provisioning.js';
import { persistentReserveIn, persistentReserveOut, release10, release6, reserve10, reserve6 } from './reservations.js';
import { sanitize } from './sanitize.js';
import { compareAndWrite, orWrite, preFetch, read, synchronizeCache, verify, write, writeAndVerify, writeAtomic } from './read-write.js';
import { preventAllowMediumRemoval, readDefectData, startStopUnit } from './medium.js';
import { requestSense, requestSenseNoLun, testUnitReady } from './readiness.js';
import { reportLuns, reportLunsNoLun, reportTargetPortGroups } from './target-reports.js';
import type { Asc } from './sense.js';
import { ScsiError, Sense } from './sense.js';
import type { ScsiResponse } from './port.js';

interface RowOptions {
  sa?: number;
  dataOut?: boolean;
  skipsUnitAttention?: boolean;
  clearsUnitAttention?: Asc;
  allowedWhileBusy?: boolean;
  writesMedium?: boolean;
  releasesDataOut?: boolean;
  noLun?: NoLunHandler;
}

function row(
  opcode: number,
  name: string,
  handler: CommandHandler,
  reservation: ReservationClass,
  usage: number[],
  opts: RowOptions = {},
): CommandSpec {
  // Every row has every field, in one order: one object shape, so the
  // dispatcher's loads of them per command stay monomorphic.
  const spec: CommandSpec = {
    opcode,
    serviceAction: opts.sa,
    name,
    cdbLength: usage.length,
    handler,
    dataOut: opts.dataOut ?? false,
    releasesDataOut: opts.releasesDataOut === true,
    reservation,
    skipsUnitAttention: opts.skipsUnitAttention === true,
    clearsUnitAttention: opts.clearsUnitAttention,
    allowedWhileBusy: opts.allowedWhileBusy === true,
    writesMedium: opts.writesMedium === true,
    noLun: opts.noLun,
    // byte 0 is the operation code; a service action sits in byte 1 bits 4-0
    cdbUsage: [opcode, ...usage.slice(1)],
  };
  if (opts.sa !== undefined) spec.cdbUsage[1] = (spec.cdbUsage[1]! & 0xe0) | opts.sa;
  return spec;
}

const F = 0xff;
const lba4 = [F, F, F, F];
const lba8 = [F, F, F, F, F, F, F, F];
/** Rows that take data and change the medium. */
const WRITES_MEDIUM = { dataOut: true, writesMedium: true };
/**
 * WRITE(10/12/16): the write handler is done with the data when it completes,
 * so the transport recycles these buffers. (WRITE(6), same handler, could be
 * too; it carries at most 256 blocks and was left out when the pool was
 * measured.)
 */
const WRITE_DATA = { ...WRITES_MEDIUM, releasesDataOut: true };

/** Every command Tabula implements. Opcodes not listed get INVALID COMMAND OPERATION CODE. */
export const COMMANDS: readonly CommandSpec[] = [
  row(0x00, 'TEST UNIT READY', testUnitReady, 'allowed', [0, 0, 0, 0, 0, 0]),
  row(0x03, 'REQUEST SENSE', requestSense, 'allowed', [0, 0x01, 0, 0, F, 0], { skipsUnitAttention: true, allowedWhileBusy: true, noLun: requestSenseNoLun }),
  row(0x08, 'READ(6)', read, 'read', [0, 0x1f, F, F, F, 0]),
  row(0x0a, 'WRITE(6)', write, 'write', [0, 0x1f, F, F, F, 0], WRITES_MEDIUM),
  row(0x12, 'INQUIRY', inquiry, 'allowed', [0, 0x01, F, F, F, 0], { skipsUnitAttention: true, allowedWhileBusy: true, noLun: inquiryNoLun }),
  row(0x15, 'MODE SELECT(6)', modeSelect, 'conflict', [0, 0x10, 0, 0, F, 0], { dataOut: true }),
  // RESERVE / RELEASE and PR IN / OUT check reservations themselves (reservations.ts)
  row(0x16, 'RESERVE(6)', reserve6, 'allowed', [0, 0, 0, 0, 0, 0]),
  row(0x17, 'RELEASE(6)', release6, 'allowed', [0, 0, 0, 0, 0, 0]),
  row(0x1a, 'MODE SENSE(6)', modeSense, 'read', [0, 0x08, F, F, F, 0]),
  row(0x1b, 'START STOP UNIT', startStopUnit, 'write', [0, 0x01, 0, 0x0f, 0xf7, 0]),
  row(0x1e, 'PREVENT ALLOW MEDIUM REMOVAL', preventAllowMediumRemoval, 'write', [0, 0, 0, 0, 0x03, 0]),
  row(0x25, 'READ CAPACITY(10)', readCapacity10, 'allowed', [0, 0, ...lba4, 0, 0, 0x01, 0]),
  row(0x28, 'READ(10)', read, 'read', [0, 0x18, ...lba4, 0x1f, F, F, 0]),
  row(0x2a, 'WRITE(10)', write, 'write', [0, 0x1a, ...lba4, 0x1f, F, F, 0], WRITE_DATA),
  row(0x2e, 'WRITE AND VERIFY(10)', writeAndVerify, 'write', [0, 0x12, ...lba4, 0x1f, F, F, 0], WRITES_MEDIUM),
  row(0x2f, 'VERIFY(10)', verify, 'read', [0, 0x16, ...lba4, 0x1f, F, F, 0], { dataOut: true }),
  row(0x34, 'PRE-FETCH(10)', preFetch, 'read', [0, 0x02, ...lba4, 0x1f, F, F, 0]),
  row(0x35, 'SYNCHRONIZE CACHE(10)', synchronizeCache, 'write', [0, 0x02, ...lba4, 0x1f, F, F, 0]),
  row(0x37, 'READ DEFECT DATA(10)', readDefectData, 'read', [0, 0, 0x1f, 0, 0, 0, 0, F, F, 0]),
  row(0x41, 'WRITE SAME(10)', writeSame, 'write', [0, 0x08, ...lba4, 0x1f, F, F, 0], WRITES_MEDIUM),
  row(0x42, 'UNMAP', unmap, 'write', [0, 0, 0, 0, 0, 0, 0x1f, F, F, 0], WRITES_MEDIUM),
  // SANITIZE: OVERWRITE, BLOCK ERASE, EXIT FAILURE MODE; it gets through a busy LU to report progress or leave failure mode
  ...[0x01, 0x02, 0x1f].map((sa) =>
    row(0x48, 'SANITIZE', sanitize, 'write', [0, 0xa0, 0, 0, 0, 0, 0, F, F, 0], { sa, dataOut: true, writesMedium: true, allowedWhileBusy: true }),
  ),
  row(0x55, 'MODE SELECT(10)', modeSelect, 'conflict', [0, 0x10, 0, 0, 0, 0, 0, F, F, 0], { dataOut: true }),
  row(0x56, 'RESERVE(10)', reserve10, 'allowed', [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
  row(0x57, 'RELEASE(10)', release10, 'allowed', [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
  row(0x5a, 'MODE SENSE(10)', modeSense, 'read', [0, 0x18, F, F, 0, 0, 0, F, F, 0]),
  ...[0x00, 0x01, 0x02, 0x03].map((sa) =>
    row(0x5e, 'PERSISTENT RESERVE IN', persistentReserveIn, 'allowed', [0, 0, 0, 0, 0, 0, 0, F, F, 0], { sa }),
  ),
  ...[0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07].map((sa) =>
    row(0x5f, 'PERSISTENT RESERVE OUT', persistentReserveOut, 'allowed', [0, 0, F, 0, 0, F, F, F, F, 0], { sa, dataOut: true }),
  ),
  row(0x83, 'EXTENDED COPY', extendedCopy, 'write', [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ...lba4, 0, 0], { sa: 0x00, dataOut: true }),
  ...[0x00, 0x03, 0x04].map((sa) =>
    row(0x84, 'RECEIVE COPY RESULTS', receiveCopyResults, 'read', [0, 0, F, 0, 0, 0, 0, 0, 0, 0, ...lba4, 0, 0], { sa }),
  ),
  row(0x88, 'READ(16)', read, 'read', [0, 0x18, ...lba8, ...lba4, 0x1f, 0]),
  row(0x89, 'COMPARE AND WRITE', compareAndWrite, 'write', [0, 0x18, ...lba8, 0, 0, 0, F, 0x1f, 0], WRITES_MEDIUM),
  row(0x8a, 'WRITE(16)', write, 'write', [0, 0x1a, ...lba8, ...lba4, 0x1f, 0], WRITE_DATA),
  row(0x8b, 'ORWRITE(16)', orWrite, 'write', [0, 0x18, ...lba8, ...lba4, 0x1f, 0], WRITES_MEDIUM),
  row(0x8e, 'WRITE AND VERIFY(16)', writeAndVerify, 'write', [0, 0x12, ...lba8, ...lba4, 0x1f, 0], WRITES_MEDIUM),
  row(0x8f, 'VERIFY(16)', verify, 'read', [0, 0x16, ...lba8, ...lba4, 0x1f, 0], { dataOut: true }),
  row(0x90, 'PRE-FETCH(16)', preFetch, 'read', [0, 0x02, ...lba8, ...lba4, 0x1f, 0]),
  row(0x91, 'SYNCHRONIZE CACHE(16)', synchronizeCache, 'write', [0, 0x02, ...lba8, ...lba4, 0x1f, 0]),
  row(0x93, 'WRITE SAME(16)', writeSame, 'write', [0, 0x09, ...lba8, ...lba4, 0x1f, 0], WRITES_MEDIUM),
  row(0x9c, 'WRITE ATOMIC(16)', writeAtomic, 'write', [0, 0x18, ...lba8, 0, 0, F, F, 0x1f, 0], WRITES_MEDIUM),
  row(0x9e, 'READ CAPACITY(16)', readCapacity16, 'allowed', [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ...lba4, 0, 0], { sa: 0x10 }),
  row(0x9e, 'GET LBA STATUS', getLbaStatus, 'read', [0, 0, ...lba8, ...lba4, 0, 0], { sa: 0x12 }),
  row(0xa0, 'REPORT LUNS', reportLuns, 'allowed', [0, 0, F, 0, 0, 0, ...lba4, 0, 0], { skipsUnitAttention: true, clearsUnitAttention: Sense.reportedLunsDataChanged, allowedWhileBusy: true, noLun: reportLunsNoLun }),
  row(0xa3, 'REPORT TARGET PORT GROUPS', reportTargetPortGroups, 'allowed', [0, 0xe0, 0, 0, 0, 0, ...lba4, 0, 0], { sa: 0x0a }),
  row(0xa3, 'REPORT SUPPORTED OPERATION CODES', reportSupportedOperationCodes, 'allowed', [0, 0, 0x87, F, F, F, ...lba4, 0, 0], { sa: 0x0c }),
  row(0xa3, 'REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS', reportSupportedTmfs, 'allowed', [0, 0, 0x80, 0, 0, 0, ...lba4, 0, 0], { sa: 0x0d }),
  row(0xa8, 'READ(12)', read, 'read', [0, 0x18, ...lba4, ...lba4, 0x1f, 0]),
  row(0xaa, 'WRITE(12)', write, 'write', [0, 0x1a, ...lba4, ...lba4, 0x1f, 0], WRITE_DATA),
  row(0xae, 'WRITE AND VERIFY(12)', writeAndVerify, 'write', [0, 0x12, ...lba4, ...lba4, 0x1f, 0], WRITES_MEDIUM),
  row(0xaf, 'VERIFY(12)', verify, 'read', [0, 0x16, ...lba4, ...lba4, 0x1f, 0], { dataOut: true }),
  row(0xb7, 'READ DEFECT DATA(12)', readDefectData, 'read', [0, 0x1f, 0, 0, 0, 0, ...lba4, 0, 0]),
];

/** Per opcode: the row, or the rows by service action. */
type Slot = CommandSpec | Map<number, CommandSpec>;
const TABLE: Array<Slot | undefined> = new Array<Slot | undefined>(256);

for (const spec of COMMANDS) {
  if (spec.cdbUsage.length !== spec.cdbLength) throw new Error(`${spec.name}: CDB usage length ${spec.cdbUsage.length} != ${spec.cdbLength}`);
  const slot = TABLE[spec.opcode];
  if (spec.serviceAction === undefined) {
    if (slot) throw new Error(`duplicate command row for opcode 0x${spec.opcode.toString(16)}`);
    TABLE[spec.opcode] = spec;
  } else {
    const m = slot instanceof Map ? slot : new Map<number, CommandSpec>();
    if (slot && !(slot instanceof Map)) throw new Error(`opcode 0x${spec.opcode.toString(16)} mixes rows with and without service actions`);
    if (m.has(spec.serviceAction)) throw new Error(`duplicate row ${spec.name}`);
    m.set(spec.serviceAction, spec);
    TABLE[spec.opcode] = m;
  }
}

/** Service action of a CDB whose opcode has service actions (byte 1, bits 4-0, for every such opcode Tabula serves). */
function serviceActionOf(cdb: Buffer): number {
  return (cdb[1] ?? 0) & 0x1f;
}

export type Lookup = { spec: CommandSpec } | { error: ScsiError };

/** The row for a CDB; unknown opcode → 20/00, unknown service action → invalid field in CDB (byte 1). */
export function lookupCommand(cdb: Buffer): Lookup {
  const slot = TABLE[cdb[0] ?? 0];
  if (!slot) return { error: new ScsiError({ key: 0x5, asc: 0x20, ascq: 0 }, {}, `unsupported opcode 0x${(cdb[0] ?? 0).toString(16)}`) };
  if (!(slot instanceof Map)) return { spec: slot };
  const sa = serviceActionOf(cdb);
  const spec = slot.get(sa);
  if (!spec) return { error: ScsiError.cdb(1, 4, `unsupported service action 0x${sa.toString(16)} of opcode 0x${cdb[0]!.toString(16)}`) };
  return { spec };
}

/** The row for a CDB, or undefined (no allocation: the transport asks this per command). */
export function commandOf(cdb: Buffer): CommandSpec | undefined {
  const slot = TABLE[cdb[0] ?? 0];
  if (slot instanceof Map) return slot.get(serviceActionOf(cdb));
  return slot;
}

/** The row for an opcode / service action, if Tabula implements it. */
export function findCommand(opcode: number, serviceAction?: number): CommandSpec | undefined {
  const slot = TABLE[opcode];
  if (!slot) return undefined;
  if (slot instanceof Map) return serviceAction === undefined ? undefined : slot.get(serviceAction);
  return serviceAction === undefined || serviceAction === 0 ? slot : undefined;
}

function hasServiceActions(opcode: number): boolean {
  return TABLE[opcode] instanceof Map;
}

/** Command timeouts descriptor (SPC-4 6.35.4): no nominal time, 30 s recommended. */
function timeoutDescriptor(): Buffer {
  const t = Buffer.alloc(12);
  t.writeUInt16BE(0x0a, 0);
  t.writeUInt32BE(30, 8);
  return t;
}

/** REPORT SUPPORTED OPERATION CODES 0xa3/0x0c: reporting options 0-3, RCTD. */
export function reportSupportedOperationCodes(ctx: CommandContext): ScsiResponse {
  const { cdb } = ctx.req;
  const rctd = (cdb[2]! & 0x80) !== 0;
  const options = cdb[2]! & 0x07;
  const opcode = cdb[3]!;
  const sa = cdb.readUInt16BE(4);
  const allocation = alloc32(cdb, 6);
  if (options === 0) {
    const parts: Buffer[] = [];
    for (const spec of COMMANDS) {
      const d = Buffer.alloc(8);
      d[0] = spec.opcode;
      d.writeUInt16BE(spec.serviceAction ?? 0, 2);
      d[5] = (rctd ? 0x02 : 0) | (spec.serviceAction !== undefined ? 0x01 : 0);
      d.writeUInt16BE(spec.cdbLength, 6);
      parts.push(d);
      if (rctd) parts.push(timeoutDescriptor());
    }
    const body = Buffer.concat(parts);
    const out = Buffer.alloc(4 + body.length);
    out.writeUInt32BE(body.length, 0);
    body.copy(out, 4);
    return good(clip(out, allocation));
  }
  let spec: CommandSpec | undefined;
  switch (options) {
    case 1:
      if (hasServiceActions(opcode)) throw ScsiError.cdb(3, undefined, `opcode 0x${opcode.toString(16)} has service actions`);
      spec = findCommand(opcode);
      break;
    case 2:
      if (!hasServiceActions(opcode)) throw ScsiError.cdb(3, undefined, `opcode 0x${opcode.toString(16)} has no service actions`);
      spec = findCommand(opcode, sa);
      break;
    case 3:
      spec = hasServiceActions(opcode) ? findCommand(opcode, sa) : sa === 0 ? findCommand(opcode) : undefined;
      break;
    default:
      throw ScsiError.cdb(2, 2, `reporting options ${options}`);
  }
  if (!spec) {
    const out = Buffer.alloc(4);
    out[1] = 0x01; // SUPPORT 001b: not supported
    return good(clip(out, allocation));
  }
  const out = Buffer.alloc(4 + spec.cdbLength + (rctd ? 12 : 0));
  out[1] = (rctd ? 0x80 : 0) | 0x03; // CTDP, SUPPORT 011b: supported as the standard says
  out.writeUInt16BE(spec.cdbLength, 2);
  Buffer.from(spec.cdbUsage).copy(out, 4);
  if (rctd) timeoutDescriptor().copy(out, 4 + spec.cdbLength);
  return good(clip(out, allocation));
}

/** REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS 0xa3/0x0d (REPD: extended format). */
export function reportSupportedTmfs(ctx: CommandContext): ScsiResponse {
  const { cdb } = ctx.req;
  const repd = (cdb[2]! & 0x80) !== 0;
  const allocation = alloc32(cdb, 6);
  const out = Buffer.alloc(repd ? 16 : 4);
  // ATS (abort task), ATSS (abort task set), CTSS (clear task set), LURS (LU reset), TRS (target reset)
  out[0] = 0x80 | 0x40 | 0x10 | 0x08 | 0x02;
  if (repd) out[3] = 0x0c;
  return good(clip(out, allocation));
}
