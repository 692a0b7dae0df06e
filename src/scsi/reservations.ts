// Reservations of one logical unit: SPC-2 RESERVE/RELEASE and SPC-4
// persistent reservations (5.13, 6.15 PERSISTENT RESERVE IN, 6.16 PERSISTENT
// RESERVE OUT). The conflict rule (ReservationGate.conflicts) and PERSISTENT
// RESERVE IN read the copy of the state held here. Every change is one pure
// step, applyLuRequest: (state, issuing nexus, request) -> (new state,
// outcome, unit attention events). Who takes that step is the LU's
// ReservationAuthority: none = this process (tabula target, unit tests; the
// state then lives behind a ReservationStore), or the controller, which owns
// a vdisk's LU state for every agent exporting it and installs the result
// here (install) before the command completes.
import type { CommandContext } from './command-spec.js';
import type { LuEvent, LuOutcome, LuStateRequest, ReservationAuthority, ReservationClass, ReservationGate, UnitAttentionScope } from './lu-api.js';
import { good } from './command-spec.js';
import { MemoryReservationStore, cloneReservationState, emptyReservationState } from './reservation-store.js';
import type { RegistrationRecord, ReservationState, ReservationStore } from './reservation-store.js';
import { ModeState, modeSelectList, type ModePageValues } from './mode-pages.js';
import { ReservationConflictError, ScsiError, Sense } from './sense.js';
import type { Asc } from './sense.js';
import { ScsiStatus } from './port.js';
import type { Nexus, ScsiRequest, ScsiResponse } from './port.js';
import { log } from '../util/log.js';

/** Where unit attentions go: a logical unit, or the event list of a pure step. */
export interface UnitAttentionSink {
  raiseUnitAttention(code: Asc, scope?: UnitAttentionScope): void;
}

/** The whole shared state of an LU: persistent reservations, the SPC-2 RESERVE holder, the mode pages' current values. */
export interface LuReservationState {
  pr: ReservationState;
  /** SPC-2 RESERVE(6)/(10) holder; not persistent (SPC-2: released by resets and by the loss of the nexus). */
  spc2: Nexus | null;
  /** Mode pages whose current values differ from the defaults (ModeState.values); absent = all defaults. */
  mode?: ModePageValues[];
}

export function cloneLuReservationState(s: LuReservationState): LuReservationState {
  const c: LuReservationState = { pr: cloneReservationState(s.pr), spc2: s.spc2 ? { ...s.spc2 } : null };
  if (s.mode !== undefined) c.mode = s.mode.map((m) => ({ page: m.page, subpage: m.subpage, values: Buffer.from(m.values) }));
  return c;
}

export function emptyLuReservationState(): LuReservationState {
  return { pr: emptyReservationState(), spc2: null };
}

/** The result of one step: the state after it (the same state when nothing changed), its outcome and the unit attentions it raises. */
export interface LuTransition {
  state: LuReservationState;
  outcome: LuOutcome;
  events: LuEvent[];
  /** The persistent part changed (to be stored). */
  prChanged: boolean;
  /** Anything changed, state or events: a new version to push. */
  changed: boolean;
}

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
  /** Who decides changes; null = this LU (applyLuRequest here, state kept in the store). */
  authority: ReservationAuthority | null = null;
  /** The LU's mode pages (the LU reads them as LogicalUnit.mode): LU state, changed by MODE SELECT steps and install. */
  readonly mode = new ModeState();

  constructor(private readonly store: ReservationStore = new MemoryReservationStore()) {
    this.state = store.load() ?? emptyReservationState();
  }

  /** A copy of the persistent state (tests, diagnostics). */
  snapshot(): ReservationState {
    return cloneReservationState(this.state);
  }

  /** A copy of the whole state. */
  current(): LuReservationState {
    return { pr: cloneReservationState(this.state), spc2: this.spc2 ? { ...this.spc2 } : null, mode: this.mode.values() };
  }

  /** Replaces the state (a decided step; on an agent, the state the controller pushed). */
  install(s: LuReservationState): void {
    const c = cloneLuReservationState(s);
    this.state = c.pr;
    this.spc2 = c.spc2;
    this.mode.setValues(c.mode ?? []);
  }

  /**
   * Decides a change: through the authority when there is one, else here,
   * raising the step's unit attentions on `ua` (the LU) and storing the
   * persistent state before the command completes.
   */
  async request(ua: UnitAttentionSink, nexus: Nexus, req: LuStateRequest): Promise<LuOutcome> {
    if (this.authority !== null) return this.authority.decide(nexus, req);
    const t = applyLuRequest(this.current(), nexus, req);
    if (t.changed) this.install(t.state);
    for (const e of t.events) ua.raiseUnitAttention(e.code, e.scope);
    if (t.prChanged) await this.persist();
    return t.outcome;
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

  // A target reset or the loss of the holding nexus drops the SPC-2 reservation here at once, as SPC-2 says,
  // so that the next command on this path already finds it gone (an initiator logging in right after another
  // one's logout must be able to RESERVE); the authority, told alongside, drops it on every other path.

  onReset(): void {
    const holder = this.spc2;
    this.spc2 = null;
    if (this.authority !== null && holder !== null) this.#forward(holder, 'target reset');
  }

  onNexusLost(nexus: Nexus): void {
    if (this.spc2?.id !== nexus.id) return;
    this.spc2 = null;
    // Only the holder's loss changes anything: no traffic to the authority otherwise.
    if (this.authority !== null) this.#forward(nexus, 'nexus lost');
  }

  /** Tells the authority that `holder`'s SPC-2 reservation is gone; nobody waits for the answer. */
  #forward(holder: Nexus, why: string): void {
    const authority = this.authority as ReservationAuthority;
    authority.decide(holder, { kind: 'nexus-lost', cdb: Buffer.alloc(0), data: null }).then(
      (o) => {
        if (o.status !== ScsiStatus.Good) log.warn(`releasing the SPC-2 reservation of ${holder.initiatorPort} (${why}): ${o.message ?? `status ${o.status}`}`);
      },
      (err: Error) => log.warn(`releasing the SPC-2 reservation of ${holder.initiatorPort} (${why}): ${err.message}`),
    );
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

  /** Drops the SPC-2 reservation (held by `holder`, when given). */
  dropSpc2(holder?: Nexus): void {
    if (holder === undefined || this.spc2?.id === holder.id) this.spc2 = null;
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
  register(ua: UnitAttentionSink, n: Nexus, p: PrOutParams, ignoreKey: boolean): boolean {
    const reg = this.registration(n);
    if (!reg) {
      if (!ignoreKey && p.key !== 0n) throw new ReservationConflictError('REGISTER from an unregistered I_T nexus with a non-zero RESERVATION KEY');
      if (p.serviceActionKey === 0n) return false;
      this.state.registrations.push({ key: p.serviceActionKey, nexus: { ...n }, allTargetPorts: p.allTargetPorts });
    } else {
      if (!ignoreKey && p.key !== reg.key) throw new ReservationConflictError('REGISTER: RESERVATION KEY does not match the registered key');
      if (p.serviceActionKey === 0n) this.unregister(ua, reg, n);
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

  release(ua: UnitAttentionSink, n: Nexus, p: PrOutParams): void {
    this.checkRegistered(n, p.key);
    const res = this.state.reservation;
    if (!res || !this.isHolder(n)) return;
    if (p.scope !== LU_SCOPE || p.type !== res.type) {
      throw new ScsiError(Sense.invalidReleaseOfPersistentReservation, {}, `RELEASE type ${p.type} does not match the reservation type ${res.type}`);
    }
    this.state.reservation = null;
    if (registrantsOnly(res.type) || allRegistrants(res.type)) this.notifyOthers(ua, n, Sense.reservationsReleased);
  }

  clear(ua: UnitAttentionSink, n: Nexus, p: PrOutParams): void {
    this.checkRegistered(n, p.key);
    this.notifyOthers(ua, n, Sense.reservationsPreempted);
    this.state.registrations = [];
    this.state.reservation = null;
    this.bump();
  }

  preempt(ua: UnitAttentionSink, n: Nexus, p: PrOutParams): void {
    const self = this.checkRegistered(n, p.key);
    const res = this.state.reservation;
    const sark = p.serviceActionKey;
    const others = (pred: (r: RegistrationRecord) => boolean): RegistrationRecord[] =>
      this.state.registrations.filter((r) => r !== self && pred(r));

    if (res && allRegistrants(res.type) && sark === 0n) {
      // Preempting an all-registrants reservation: everyone else goes, I_T nexus n holds the new one.
      checkScopeType(p);
      this.remove(ua, others(() => true));
      this.state.reservation = { type: p.type, holder: allRegistrants(p.type) ? null : n.id };
      this.bump();
      return;
    }
    const holderReg = res && res.holder !== null ? this.state.registrations.find((r) => r.nexus.id === res.holder) : undefined;
    if (res && holderReg && sark === holderReg.key) {
      checkScopeType(p);
      const removed = others((r) => r.key === sark);
      this.remove(ua, removed);
      const changed = res.type !== p.type;
      this.state.reservation = { type: p.type, holder: allRegistrants(p.type) ? null : n.id };
      if (changed) {
        for (const r of this.state.registrations) {
          if (r !== self) ua.raiseUnitAttention(Sense.reservationsReleased, { only: r.nexus });
        }
      }
      this.bump();
      return;
    }
    // Otherwise PREEMPT removes registrations only; the reservation stays as it is.
    if (sark === 0n) throw ScsiError.param(8, undefined, 'PREEMPT with SERVICE ACTION RESERVATION KEY 0');
    const removed = this.state.registrations.filter((r) => r.key === sark);
    if (removed.length === 0) throw new ReservationConflictError(`PREEMPT: no registration with key 0x${sark.toString(16)}`);
    this.remove(ua, removed.filter((r) => r !== self));
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

  private unregister(ua: UnitAttentionSink, reg: RegistrationRecord, n: Nexus): void {
    this.state.registrations = this.state.registrations.filter((r) => r !== reg);
    const res = this.state.reservation;
    if (!res) return;
    if (res.holder === null) {
      if (this.state.registrations.length === 0) this.state.reservation = null;
    } else if (res.holder === reg.nexus.id) {
      this.state.reservation = null;
      if (registrantsOnly(res.type)) this.notifyOthers(ua, n, Sense.reservationsReleased);
    }
  }

  /** Remove registrations preempted by another I_T nexus (REGISTRATIONS PREEMPTED to each). */
  private remove(ua: UnitAttentionSink, regs: RegistrationRecord[]): void {
    if (regs.length === 0) return;
    const gone = new Set(regs);
    this.state.registrations = this.state.registrations.filter((r) => !gone.has(r));
    for (const r of regs) ua.raiseUnitAttention(Sense.registrationsPreempted, { only: r.nexus });
    const res = this.state.reservation;
    if (res && res.holder !== null && regs.some((r) => r.nexus.id === res.holder)) this.state.reservation = null;
  }

  /** A unit attention to every registered I_T nexus except `n`. */
  private notifyOthers(ua: UnitAttentionSink, n: Nexus, code: Asc): void {
    for (const r of this.state.registrations) if (!covers(r, n)) ua.raiseUnitAttention(code, { only: r.nexus });
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

/**
 * One step of the LU's reservation state, pure: the state after `req` from
 * `nexus`, how the request ends, and the unit attentions it raises (with
 * their scope; the caller raises them on the nexuses it serves). A request
 * that fails changes nothing. The same function serves the in-process LU
 * (Reservations.request) and the controller (src/controller/lu-state.ts).
 */
export function applyLuRequest(state: LuReservationState, nexus: Nexus, req: LuStateRequest): LuTransition {
  const before = cloneLuReservationState(state);
  const engine = new Reservations();
  engine.install(before);
  const events: LuEvent[] = [];
  let abortTasks = false;
  let preemptAndAbort = false;
  const sink: UnitAttentionSink = {
    // Under PREEMPT AND ABORT only the preempted nexuses' tasks go, not those of registrants told of a new type.
    raiseUnitAttention: (code, scope) => events.push({ code, scope: scope ?? {}, abortTasks: abortTasks && (!preemptAndAbort || code === Sense.registrationsPreempted) }),
  };
  let outcome: LuOutcome = { status: ScsiStatus.Good };
  try {
    switch (req.kind) {
      case 'prout':
        // PREEMPT AND ABORT: the preempted nexuses' tasks are aborted too (SPC-4 5.13.11.2.6), wherever they run.
        preemptAndAbort = (req.cdb[1]! & 0x1f) === PrOut.PreemptAndAbort;
        abortTasks = preemptAndAbort;
        proutStep(engine, sink, nexus, req.cdb, req.data ?? Buffer.alloc(0));
        break;
      case 'reserve':
        spc2Checks(req.cdb, 'RESERVE');
        engine.reserveSpc2(nexus);
        break;
      case 'release':
        spc2Checks(req.cdb, 'RELEASE');
        engine.releaseSpc2(nexus);
        break;
      case 'lu-reset':
        // SAM-5 6.3.3: the SPC-2 reservation goes (persistent ones stay), every task of the LU is aborted, and
        // every I_T nexus, the issuing one included, sees the reset: multipath initiators look for it on every path.
        abortTasks = true;
        engine.dropSpc2();
        sink.raiseUnitAttention(Sense.deviceResetOccurred);
        break;
      case 'clear-task-set':
        // TAS = 0: the other initiators learn that their tasks were cleared from this UA (SAM-5 7.5).
        abortTasks = true;
        sink.raiseUnitAttention(Sense.commandsClearedByAnotherInitiator, { except: nexus });
        break;
      case 'nexus-lost':
        engine.dropSpc2(nexus);
        break;
      case 'mode-select': {
        // SPC-4 5.12 / 6.13: the other I_T nexuses (on every path) learn of the change; the issuer does not.
        const { pages, base } = modeSelectList(req.cdb, req.data ?? Buffer.alloc(0));
        if (engine.mode.applySelect(pages, base)) sink.raiseUnitAttention(Sense.modeParametersChanged, { except: nexus });
        break;
      }
    }
  } catch (e) {
    if (e instanceof ReservationConflictError) outcome = { status: ScsiStatus.ReservationConflict, message: e.message };
    else if (e instanceof ScsiError) outcome = { status: ScsiStatus.CheckCondition, sense: { code: e.code, opts: e.opts }, message: e.message };
    else throw e;
    return { state: before, outcome, events: [], prChanged: false, changed: false };
  }
  const after = engine.current();
  const prChanged = !samePr(before.pr, after.pr);
  const changed = prChanged || (before.spc2?.id ?? null) !== (after.spc2?.id ?? null) || events.length > 0;
  return { state: after, outcome, events, prChanged, changed };
}

function samePr(a: ReservationState, b: ReservationState): boolean {
  const key = (s: ReservationState): string =>
    JSON.stringify([s.generation, s.aptpl, s.reservation, s.registrations.map((r) => [r.key.toString(16), r.nexus.id, r.allTargetPorts])]);
  return key(a) === key(b);
}

/** PERSISTENT RESERVE OUT as a step on `r` (throws ScsiError / ReservationConflictError). */
function proutStep(r: Reservations, ua: UnitAttentionSink, nexus: Nexus, cdb: Buffer, data: Buffer): void {
  // SPC-4 5.13.3: persistent reservation commands conflict while a RESERVE(6)/(10) is in effect.
  if (r.spc2Holder) throw new ReservationConflictError('PERSISTENT RESERVE OUT while a RESERVE reservation is held');
  const sa = cdb[1]! & 0x1f;
  if (sa > PrOut.RegisterAndMove) throw ScsiError.cdb(1, 4, `PERSISTENT RESERVE OUT service action ${sa} is not supported`);
  const scope = cdb[2]! >> 4;
  const type = cdb[2]! & 0x0f;
  const paramLen = cdb.readUInt32BE(5);
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
    return;
  }

  const flags = data[20]!;
  if (flags & 0x08) throw ScsiError.param(20, 3, 'SPEC_I_PT is not supported');
  if (paramLen !== 24) throw new ScsiError(Sense.parameterListLengthError, {}, `PERSISTENT RESERVE OUT parameter list length ${paramLen} is not 24`);
  const p: PrOutParams = { key, serviceActionKey: sark, type, scope, aptpl: (flags & 0x01) !== 0, allTargetPorts: (flags & 0x04) !== 0 };

  switch (sa) {
    case PrOut.Register:
    case PrOut.RegisterAndIgnore:
      r.register(ua, nexus, p, sa === PrOut.RegisterAndIgnore);
      break;
    case PrOut.Reserve:
      r.reserve(nexus, p);
      break;
    case PrOut.Release:
      r.release(ua, nexus, p);
      break;
    case PrOut.Clear:
      r.clear(ua, nexus, p);
      break;
    case PrOut.Preempt:
    case PrOut.PreemptAndAbort:
      // PREEMPT AND ABORT: the events of the preempted nexuses carry abortTasks (applyLuRequest); an agent aborts
      // their tasks, the in-process LU does not (no hook into the task set there).
      r.preempt(ua, nexus, p);
      break;
  }
}

/** Runs a request through the LU's gate and turns its outcome into the command's. */
function decided(ctx: CommandContext, kind: LuStateRequest['kind']): Promise<ScsiResponse> {
  return decideLuRequest(ctx, { kind, cdb: ctx.req.cdb, data: ctx.req.dataOut });
}

/** Runs `req` through the LU's gate (this LU, or the controller for every path) and turns its outcome into the command's. */
export async function decideLuRequest(ctx: CommandContext, req: LuStateRequest): Promise<ScsiResponse> {
  const o = await gateOf(ctx).request(ctx.lu, ctx.req.nexus, req);
  if (o.status === ScsiStatus.Good) return good();
  if (o.sense) throw new ScsiError(o.sense.code, o.sense.opts, o.message);
  if (o.status === ScsiStatus.ReservationConflict) throw new ReservationConflictError(o.message);
  return { status: o.status };
}

/** PERSISTENT RESERVE OUT (0x5F). */
export function persistentReserveOut(ctx: CommandContext): Promise<ScsiResponse> {
  return decided(ctx, 'prout');
}

function spc2Checks(cdb: Buffer, name: string): void {
  const ten = cdb[0] === 0x56 || cdb[0] === 0x57;
  // Third-party and extent reservations are not supported.
  if (ten ? cdb[1]! & 0x12 : cdb[1]! & 0x11) throw ScsiError.cdb(1, ten ? 4 : 0, `${name}: third-party or extent reservations are not supported`);
}

/** RESERVE(6) (0x16). */
export function reserve6(ctx: CommandContext): Promise<ScsiResponse> {
  return decided(ctx, 'reserve');
}

/** RESERVE(10) (0x56). */
export function reserve10(ctx: CommandContext): Promise<ScsiResponse> {
  return decided(ctx, 'reserve');
}

/** RELEASE(6) (0x17). */
export function release6(ctx: CommandContext): Promise<ScsiResponse> {
  return decided(ctx, 'release');
}

/** RELEASE(10) (0x57). */
export function release10(ctx: CommandContext): Promise<ScsiResponse> {
  return decided(ctx, 'release');
}
