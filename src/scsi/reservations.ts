// Reservations of one logical unit: SPC-2 RESERVE/RELEASE and SPC-4
// persistent reservations (5.13, 6.15 PERSISTENT RESERVE IN, 6.16 PERSISTENT
// RESERVE OUT). The state lives behind a ReservationStore; the conflict rule
// (ReservationGate.conflicts) reads the working copy held here.
import type { CommandContext } from './command-spec.js';
import type { LogicalUnitApi, ReservationClass, ReservationGate } from './lu-api.js';
import { good } from './command-spec.js';
import { MemoryReservationStore, cloneReservationState, emptyReservationState } from './reservation-store.js';
import type { RegistrationRecord, ReservationState, ReservationStore } from './reservation-store.js';
import { ReservationConflictError, ScsiError, Sense } from './sense.js';
import type { Asc } from './sense.js';
import type { Nexus, ScsiRequest, ScsiResponse } from './port.js';

export const enum PrType {
  WriteExclusive = 1,
  ExclusiveAccess = 3,
  WriteExclusiveRegistrantsOnly = 5,
  ExclusiveAccessRegistrantsOnly = 6,
  WriteExclusiveAllRegistrants = 7,
  ExclusiveAccessAllRegistrants = 8,
}

const enum PrIn {
  ReadKeys = 0,
  ReadReservation = 1,
  ReportCapabilities = 2,
  ReadFullStatus = 3,
}

const enum PrOut {
  Register = 0,
  Reserve = 1,
  Release = 2,
  Clear = 3,
  Preempt = 4,
  PreemptAndAbort = 5,
  RegisterAndIgnore = 6,
  RegisterAndMove = 7,
}

/** LU_SCOPE: the only scope SPC-4 still defines. */
const LU_SCOPE = 0;
/** SCSI protocol identifier for iSCSI (SPC-4 7.6.1). */
const PROTOCOL_ISCSI = 5;

function validType(t: number): boolean {
  return t === 1 || t === 3 || t === 5 || t === 6 || t === 7 || t === 8;
}

function allRegistrants(t: number): boolean {
  return t === PrType.WriteExclusiveAllRegistrants || t === PrType.ExclusiveAccessAllRegistrants;
}

function registrantsOnly(t: number): boolean {
  return t === PrType.WriteExclusiveRegistrantsOnly || t === PrType.ExclusiveAccessRegistrantsOnly;
}

/** The registration covers this I_T nexus (an ALL_TG_PT registration covers every target port). */
function covers(reg: RegistrationRecord, n: Nexus): boolean {
  return reg.nexus.initiatorPort === n.initiatorPort && (reg.allTargetPorts || reg.nexus.targetPort === n.targetPort);
}

export interface PrOutParams {
  key: bigint;
  serviceActionKey: bigint;
  type: number;
  scope: number;
  aptpl: boolean;
  allTargetPorts: boolean;
}

export class Reservations implements ReservationGate {
  private state: ReservationState;
  /** SPC-2 RESERVE(6)/(10) holder; not persistent. */
  private spc2: Nexus | null = null;

  constructor(private readonly store: ReservationStore = new MemoryReservationStore()) {
    this.state = store.load() ?? emptyReservationState();
  }

  /** A copy of the persistent state (tests, diagnostics). */
  snapshot(): ReservationState {
    return cloneReservationState(this.state);
  }

  get spc2Holder(): Nexus | null {
    return this.spc2;
  }

  // ---- ReservationGate ----

  conflicts(req: ScsiRequest, spec: { readonly reservation: ReservationClass }): boolean {
    const cls = spec.reservation;
    if (cls === 'allowed') return false;
    if (this.spc2) return this.spc2.id !== req.nexus.id;
    const res = this.state.reservation;
    if (!res || this.isHolder(req.nexus)) return false;
    const registered = this.registration(req.nexus) !== undefined;
    switch (res.type) {
      case PrType.WriteExclusive:
        return cls !== 'read';
      case PrType.ExclusiveAccess:
        return true;
      case PrType.WriteExclusiveRegistrantsOnly:
      case PrType.WriteExclusiveAllRegistrants:
        return !registered && cls !== 'read';
      default: // EA-RO, EA-AR
        return !registered;
    }
  }

  onReset(): void {
    this.spc2 = null;
  }

  onNexusLost(nexus: Nexus): void {
    if (this.spc2?.id === nexus.id) this.spc2 = null;
  }

  // ---- SPC-2 RESERVE / RELEASE ----

  reserveSpc2(nexus: Nexus): void {
    // SPC-4 5.13.3: with any registration, RESERVE conflicts (CRH=1).
    if (this.state.registrations.length > 0 || this.state.reservation) {
      throw new ReservationConflictError('RESERVE while persistent reservation registrations exist');
    }
    if (this.spc2 && this.spc2.id !== nexus.id) throw new ReservationConflictError(`RESERVE: held by ${this.spc2.initiatorPort}`);
    this.spc2 = nexus;
  }

  releaseSpc2(nexus: Nexus): void {
    // A RELEASE from a non-holder, or while persistent registrations exist, completes without effect.
    if (this.state.registrations.length > 0) return;
    if (this.spc2?.id === nexus.id) this.spc2 = null;
  }

  // ---- persistent reservations: queries ----

  registration(n: Nexus): RegistrationRecord | undefined {
    return this.state.registrations.find((r) => covers(r, n));
  }

  isHolder(n: Nexus): boolean {
    const res = this.state.reservation;
    if (!res) return false;
    if (res.holder === null) return this.registration(n) !== undefined;
    return res.holder === n.id;
  }

  readKeys(): Buffer {
    const regs = this.state.registrations;
    const b = Buffer.alloc(8 + regs.length * 8);
    b.writeUInt32BE(this.state.generation, 0);
    b.writeUInt32BE(regs.length * 8, 4);
    regs.forEach((r, i) => b.writeBigUInt64BE(r.key, 8 + i * 8));
    return b;
  }

  readReservation(): Buffer {
    const res = this.state.reservation;
    const b = Buffer.alloc(res ? 24 : 8);
    b.writeUInt32BE(this.state.generation, 0);
    if (res) {
      b.writeUInt32BE(16, 4);
      // All-registrants reservations report key 0 (SPC-4 6.15.3.3).
      const holder = res.holder === null ? undefined : this.state.registrations.find((r) => r.nexus.id === res.holder);
      b.writeBigUInt64BE(holder?.key ?? 0n, 8);
      b[21] = (LU_SCOPE << 4) | res.type;
    }
    return b;
  }

  reportCapabilities(): Buffer {
    const b = Buffer.alloc(8);
    b.writeUInt16BE(8, 0);
    // CRH (RESERVE/RELEASE exceptions), ATP_C (ALL_TG_PT), PTPL_C; SIP_C = 0 (SPEC_I_PT refused).
    b[2] = 0x10 | 0x04 | 0x01;
    b[3] = 0x80 | (this.state.aptpl ? 0x01 : 0); // TMV, ALLOW COMMANDS = 0, PTPL_A
    b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
    b[5] = 0x01; // EX_AC_AR
    return b;
  }

  readFullStatus(): Buffer {
    const res = this.state.reservation;
    const descs = this.state.registrations.map((r) => {
      const tid = transportId(r.nexus.initiatorPort);
      const d = Buffer.alloc(24 + tid.length);
      d.writeBigUInt64BE(r.key, 0);
      const holder = res !== null && (res.holder === null || res.holder === r.nexus.id);
      d[12] = (r.allTargetPorts ? 0x02 : 0) | (holder ? 0x01 : 0);
      if (holder) d[13] = (LU_SCOPE << 4) | res.type;
      d.writeUInt16BE(r.allTargetPorts ? 0 : r.nexus.relativeTargetPortId & 0xffff, 18);
      d.writeUInt32BE(tid.length, 20);
      tid.copy(d, 24);
      return d;
    });
    const body = Buffer.concat(descs);
    const b = Buffer.alloc(8 + body.length);
    b.writeUInt32BE(this.state.generation, 0);
    b.writeUInt32BE(body.length, 4);
    body.copy(b, 8);
    return b;
  }

  // ---- persistent reservations: changes (SPC-4 5.13.7 - 5.13.11) ----

  /** REGISTER (ignoreKey=false) and REGISTER AND IGNORE EXISTING KEY. Returns true if the state changed. */
  register(lu: LogicalUnitApi, n: Nexus, p: PrOutParams, ignoreKey: boolean): boolean {
    const reg = this.registration(n);
    if (!reg) {
      if (!ignoreKey && p.key !== 0n) throw new ReservationConflictError('REGISTER from an unregistered I_T nexus with a non-zero RESERVATION KEY');
      if (p.serviceActionKey === 0n) return false;
      this.state.registrations.push({ key: p.serviceActionKey, nexus: { ...n }, allTargetPorts: p.allTargetPorts });
    } else {
      if (!ignoreKey && p.key !== reg.key) throw new ReservationConflictError('REGISTER: RESERVATION KEY does not match the registered key');
      if (p.serviceActionKey === 0n) this.unregister(lu, reg, n);
      else reg.key = p.serviceActionKey;
    }
    this.state.aptpl = p.aptpl;
    this.bump();
    return true;
  }

  reserve(n: Nexus, p: PrOutParams): void {
    this.checkRegistered(n, p.key);
    checkScopeType(p);
    const res = this.state.reservation;
    if (!res) {
      this.state.reservation = { type: p.type, holder: allRegistrants(p.type) ? null : n.id };
      return;
    }
    if (this.isHolder(n) && res.type === p.type) return;
    throw new ReservationConflictError('RESERVE: the logical unit is reserved by another I_T nexus or with another type');
  }

  release(lu: LogicalUnitApi, n: Nexus, p: PrOutParams): void {
    this.checkRegistered(n, p.key);
    const res = this.state.reservation;
    if (!res || !this.isHolder(n)) return;
    if (p.scope !== LU_SCOPE || p.type !== res.type) {
      throw new ScsiError(Sense.invalidReleaseOfPersistentReservation, {}, `RELEASE type ${p.type} does not match the reservation type ${res.type}`);
    }
    this.state.reservation = null;
    if (registrantsOnly(res.type) || allRegistrants(res.type)) this.notifyOthers(lu, n, Sense.reservationsReleased);
  }

  clear(lu: LogicalUnitApi, n: Nexus, p: PrOutParams): void {
    this.checkRegistered(n, p.key);
    this.notifyOthers(lu, n, Sense.reservationsPreempted);
    this.state.registrations = [];
    this.state.reservation = null;
    this.bump();
  }

  preempt(lu: LogicalUnitApi, n: Nexus, p: PrOutParams): void {
    const self = this.checkRegistered(n, p.key);
    const res = this.state.reservation;
    const sark = p.serviceActionKey;
    const others = (pred: (r: RegistrationRecord) => boolean): RegistrationRecord[] =>
      this.state.registrations.filter((r) => r !== self && pred(r));

    if (res && allRegistrants(res.type) && sark === 0n) {
      // Preempting an all-registrants reservation: everyone else goes, I_T nexus n holds the new one.
      checkScopeType(p);
      this.remove(lu, others(() => true));
      this.state.reservation = { type: p.type, holder: allRegistrants(p.type) ? null : n.id };
      this.bump();
      return;
    }
    const holderReg = res && res.holder !== null ? this.state.registrations.find((r) => r.nexus.id === res.holder) : undefined;
    if (res && holderReg && sark === holderReg.key) {
      checkScopeType(p);
      const removed = others((r) => r.key === sark);
      this.remove(lu, removed);
      const changed = res.type !== p.type;
      this.state.reservation = { type: p.type, holder: allRegistrants(p.type) ? null : n.id };
      if (changed) {
        for (const r of this.state.registrations) {
          if (r !== self) lu.raiseUnitAttention(Sense.reservationsReleased, { only: r.nexus });
        }
      }
      this.bump();
      return;
    }
    // Otherwise PREEMPT removes registrations only; the reservation stays as it is.
    if (sark === 0n) throw ScsiError.param(8, undefined, 'PREEMPT with SERVICE ACTION RESERVATION KEY 0');
    const removed = this.state.registrations.filter((r) => r.key === sark);
    if (removed.length === 0) throw new ReservationConflictError(`PREEMPT: no registration with key 0x${sark.toString(16)}`);
    this.remove(lu, removed.filter((r) => r !== self));
    this.bump();
  }

  registerAndMove(n: Nexus, key: bigint, sark: bigint, dest: Nexus, unreg: boolean, aptpl: boolean): void {
    const self = this.registration(n);
    const res = this.state.reservation;
    if (!self) throw new ReservationConflictError('REGISTER AND MOVE from an unregistered I_T nexus');
    if (self.key !== key) throw new ReservationConflictError('REGISTER AND MOVE: RESERVATION KEY does not match');
    if (!res || res.holder === null || res.holder !== n.id) {
      throw new ReservationConflictError('REGISTER AND MOVE from an I_T nexus that does not hold the reservation');
    }
    if (sark === 0n) throw ScsiError.param(8, undefined, 'REGISTER AND MOVE with SERVICE ACTION RESERVATION KEY 0');
    if (dest.id === n.id || covers(self, dest)) throw ScsiError.param(24, undefined, 'REGISTER AND MOVE to the I_T nexus that sent it');
    if (!this.registration(dest)) this.state.registrations.push({ key: sark, nexus: { ...dest }, allTargetPorts: false });
    res.holder = dest.id;
    if (unreg) this.state.registrations = this.state.registrations.filter((r) => r !== self);
    this.state.aptpl = aptpl;
    this.bump();
  }

  /** Hand the current state to the store. */
  persist(): Promise<void> {
    return this.store.save(cloneReservationState(this.state));
  }

  // ---- helpers ----

  private checkRegistered(n: Nexus, key: bigint): RegistrationRecord {
    const reg = this.registration(n);
    if (!reg) throw new ReservationConflictError('persistent reservation action from an unregistered I_T nexus');
    if (reg.key !== key) throw new ReservationConflictError('RESERVATION KEY does not match the registered key');
    return reg;
  }

  private unregister(lu: LogicalUnitApi, reg: RegistrationRecord, n: Nexus): void {
    this.state.registrations = this.state.registrations.filter((r) => r !== reg);
    const res = this.state.reservation;
    if (!res) return;
    if (res.holder === null) {
      if (this.state.registrations.length === 0) this.state.reservation = null;
    } else if (res.holder === reg.nexus.id) {
      this.state.reservation = null;
      if (registrantsOnly(res.type)) this.notifyOthers(lu, n, Sense.reservationsReleased);
    }
  }

  /** Remove registrations preempted by another I_T nexus (REGISTRATIONS PREEMPTED to each). */
  private remove(lu: LogicalUnitApi, regs: RegistrationRecord[]): void {
    if (regs.length === 0) return;
    const gone = new Set(regs);
    this.state.registrations = this.state.registrations.filter((r) => !gone.has(r));
    for (const r of regs) lu.raiseUnitAttention(Sense.registrationsPreempted, { only: r.nexus });
    const res = this.state.reservation;
    if (res && res.holder !== null && regs.some((r) => r.nexus.id === res.holder)) this.state.reservation = null;
  }

  /** A unit attention to every registered I_T nexus except `n`. */
  private notifyOthers(lu: LogicalUnitApi, n: Nexus, code: Asc): void {
    for (const r of this.state.registrations) if (!covers(r, n)) lu.raiseUnitAttention(code, { only: r.nexus });
  }

  private bump(): void {
    this.state.generation = (this.state.generation + 1) >>> 0;
  }
}

function checkScopeType(p: PrOutParams): void {
  if (p.scope !== LU_SCOPE) throw ScsiError.cdb(2, 7, `persistent reservation scope ${p.scope} is not LU_SCOPE`);
  if (!validType(p.type)) throw ScsiError.cdb(2, 3, `persistent reservation type ${p.type} is not supported`);
}

/** iSCSI TransportID, format 01b: "<name>,i,0x<ISID>", NUL-terminated, padded to a multiple of 4 (SPC-4 7.6.4.6). */
export function transportId(initiatorPort: string): Buffer {
  const name = Buffer.from(initiatorPort, 'utf8');
  const len = Math.max(20, (name.length + 1 + 3) & ~3);
  const b = Buffer.alloc(4 + len);
  b[0] = 0x40 | PROTOCOL_ISCSI;
  b.writeUInt16BE(len, 2);
  name.copy(b, 4);
  return b;
}

/** Parse an iSCSI TransportID naming an initiator port (format 01b). */
export function parseTransportId(b: Buffer, at: number): { initiatorName: string; isid: number; initiatorPort: string } {
  if (b.length < at + 4 || (b[at]! & 0x0f) !== PROTOCOL_ISCSI) throw ScsiError.param(at, undefined, 'TransportID is not an iSCSI TransportID');
  if (b[at]! >> 6 !== 1) throw ScsiError.param(at, 7, 'TransportID must name an initiator port (format 01b)');
  const len = b.readUInt16BE(at + 2);
  if (b.length < at + 4 + len) throw new ScsiError(Sense.parameterListLengthError, {}, 'TransportID longer than the parameter list');
  const raw = b.subarray(at + 4, at + 4 + len);
  const nul = raw.indexOf(0);
  const text = raw.subarray(0, nul < 0 ? raw.length : nul).toString('utf8');
  const m = /^(.+),i,0x([0-9a-f]{12})$/i.exec(text);
  if (!m) throw ScsiError.param(at + 4, undefined, `TransportID "${text}" is not "<name>,i,0x<ISID>"`);
  const isid = parseInt(m[2]!, 16);
  const initiatorName = m[1]!;
  return { initiatorName, isid, initiatorPort: `${initiatorName},i,0x${isid.toString(16).padStart(12, '0')}` };
}

function gateOf(ctx: CommandContext): Reservations {
  const r = ctx.lu.reservations;
  if (!(r instanceof Reservations)) {
    throw new ScsiError(Sense.internalTargetFailure, {}, `LU ${ctx.lu.lun}: reservation gate is not a Reservations`);
  }
  return r;
}

function clip(b: Buffer, allocation: number): Buffer {
  return b.length > allocation ? b.subarray(0, allocation) : b;
}

/** PERSISTENT RESERVE IN (0x5E). */
export function persistentReserveIn(ctx: CommandContext): ScsiResponse {
  const r = gateOf(ctx);
  const cdb = ctx.req.cdb;
  // SPC-4 5.13.3: persistent reservation commands conflict while a RESERVE(6)/(10) is in effect.
  if (r.spc2Holder) throw new ReservationConflictError('PERSISTENT RESERVE IN while a RESERVE reservation is held');
  const alloc = cdb.readUInt16BE(7);
  let data: Buffer;
  switch (cdb[1]! & 0x1f) {
    case PrIn.ReadKeys:
      data = r.readKeys();
      break;
    case PrIn.ReadReservation:
      data = r.readReservation();
      break;
    case PrIn.ReportCapabilities:
      data = r.reportCapabilities();
      break;
    case PrIn.ReadFullStatus:
      data = r.readFullStatus();
      break;
    default:
      throw ScsiError.cdb(1, 4, `PERSISTENT RESERVE IN service action ${cdb[1]! & 0x1f} is not supported`);
  }
  return good(clip(data, alloc));
}

/** PERSISTENT RESERVE OUT (0x5F). */
export async function persistentReserveOut(ctx: CommandContext): Promise<ScsiResponse> {
  const r = gateOf(ctx);
  const { cdb, nexus } = ctx.req;
  if (r.spc2Holder) throw new ReservationConflictError('PERSISTENT RESERVE OUT while a RESERVE reservation is held');
  const sa = cdb[1]! & 0x1f;
  if (sa > PrOut.RegisterAndMove) throw ScsiError.cdb(1, 4, `PERSISTENT RESERVE OUT service action ${sa} is not supported`);
  const scope = cdb[2]! >> 4;
  const type = cdb[2]! & 0x0f;
  const paramLen = cdb.readUInt32BE(5);
  const data = ctx.req.dataOut ?? Buffer.alloc(0);
  if (paramLen < 24 || data.length < paramLen) {
    throw new ScsiError(Sense.parameterListLengthError, {}, `PERSISTENT RESERVE OUT parameter list length ${paramLen} (received ${data.length})`);
  }
  const key = data.readBigUInt64BE(0);
  const sark = data.readBigUInt64BE(8);

  if (sa === PrOut.RegisterAndMove) {
    const unreg = (data[17]! & 0x02) !== 0;
    const aptpl = (data[17]! & 0x01) !== 0;
    const relPort = data.readUInt16BE(18);
    const tidLen = data.readUInt32BE(20);
    if (24 + tidLen > paramLen) throw new ScsiError(Sense.parameterListLengthError, {}, 'REGISTER AND MOVE TransportID beyond the parameter list');
    if (relPort !== nexus.relativeTargetPortId) {
      throw ScsiError.param(18, undefined, `REGISTER AND MOVE to relative target port ${relPort}: only the receiving port ${nexus.relativeTargetPortId} is known`);
    }
    const t = parseTransportId(data.subarray(0, 24 + tidLen), 24);
    const dest: Nexus = { ...nexus, initiatorName: t.initiatorName, isid: t.isid, initiatorPort: t.initiatorPort, id: `${t.initiatorPort}|${nexus.targetPort}` };
    r.registerAndMove(nexus, key, sark, dest, unreg, aptpl);
    await r.persist();
    return good();
  }

  const flags = data[20]!;
  if (flags & 0x08) throw ScsiError.param(20, 3, 'SPEC_I_PT is not supported');
  if (paramLen !== 24) throw new ScsiError(Sense.parameterListLengthError, {}, `PERSISTENT RESERVE OUT parameter list length ${paramLen} is not 24`);
  const p: PrOutParams = { key, serviceActionKey: sark, type, scope, aptpl: (flags & 0x01) !== 0, allTargetPorts: (flags & 0x04) !== 0 };

  switch (sa) {
    case PrOut.Register:
    case PrOut.RegisterAndIgnore:
      if (!r.register(ctx.lu, nexus, p, sa === PrOut.RegisterAndIgnore)) return good();
      break;
    case PrOut.Reserve:
      r.reserve(nexus, p);
      break;
    case PrOut.Release:
      r.release(ctx.lu, nexus, p);
      break;
    case PrOut.Clear:
      r.clear(ctx.lu, nexus, p);
      break;
    case PrOut.Preempt:
    case PrOut.PreemptAndAbort:
      // PREEMPT AND ABORT: the preempted nexuses' tasks are not aborted here (no hook into the task set yet).
      r.preempt(ctx.lu, nexus, p);
      break;
  }
  await r.persist();
  return good();
}

function spc2Checks(cdb: Buffer, name: string): void {
  const ten = cdb[0] === 0x56 || cdb[0] === 0x57;
  // Third-party and extent reservations are not supported.
  if (ten ? cdb[1]! & 0x12 : cdb[1]! & 0x11) throw ScsiError.cdb(1, ten ? 4 : 0, `${name}: third-party or extent reservations are not supported`);
}

/** RESERVE(6) (0x16). */
export function reserve6(ctx: CommandContext): ScsiResponse {
  spc2Checks(ctx.req.cdb, 'RESERVE(6)');
  gateOf(ctx).reserveSpc2(ctx.req.nexus);
  return good();
}

/** RESERVE(10) (0x56). */
export function reserve10(ctx: CommandContext): ScsiResponse {
  spc2Checks(ctx.req.cdb, 'RESERVE(10)');
  gateOf(ctx).reserveSpc2(ctx.req.nexus);
  return good();
}

/** RELEASE(6) (0x17). */
export function release6(ctx: CommandContext): ScsiResponse {
  spc2Checks(ctx.req.cdb, 'RELEASE(6)');
  gateOf(ctx).releaseSpc2(ctx.req.nexus);
  return good();
}

/** RELEASE(10) (0x57). */
export function release10(ctx: CommandContext): ScsiResponse {
  spc2Checks(ctx.req.cdb, 'RELEASE(10)');
  gateOf(ctx).releaseSpc2(ctx.req.nexus);
  return good();
}
