// The LU state of a vdisk (src/scsi/reservations.ts, LuReservationState) and
// what changes it, as they travel between controller and agents
// (proto/tabula.proto: LuState with its ModePageValues, LuEvent, LuRequest,
// LuReply). Both sides convert through here, so a state survives the round
// trip unchanged.
import type { LuEvent, LuOutcome, LuRequestKind as ScsiLuRequestKind } from '../scsi/lu-api.js';
import type { Nexus } from '../scsi/port.js';
import { ScsiStatus } from '../scsi/port.js';
import type { LuReservationState } from '../scsi/reservations.js';
import type { SenseKey } from '../scsi/sense.js';
import { LuEventScope, LuRequestKind, type LuEventMsg, type LuReply, type LuStateMsg, type NexusRef } from './proto-types.js';

const INITIATOR_PORT = /^(.+),i,0x([0-9a-f]{1,12})$/i;
const TARGET_PORT = /^(.+),t,0x[0-9a-f]{1,4}$/i;

export function nexusRef(n: Nexus): NexusRef {
  return { initiatorPort: n.initiatorPort, targetPort: n.targetPort, relativeTargetPortId: n.relativeTargetPortId, targetPortGroup: n.targetPortGroup };
}

/** The Nexus a NexusRef names (its id as SCSI ports name it); throws on names that are not iSCSI port names. */
export function nexusOf(ref: NexusRef | null | undefined): Nexus {
  if (ref === null || ref === undefined) throw new Error('no I_T nexus');
  const i = INITIATOR_PORT.exec(ref.initiatorPort);
  const t = TARGET_PORT.exec(ref.targetPort);
  if (i === null) throw new Error(`"${ref.initiatorPort}" is not an iSCSI initiator port name`);
  if (t === null) throw new Error(`"${ref.targetPort}" is not an iSCSI target port name`);
  return {
    id: `${ref.initiatorPort}|${ref.targetPort}`,
    initiatorName: i[1]!,
    initiatorPort: ref.initiatorPort,
    isid: parseInt(i[2]!, 16),
    targetName: t[1]!,
    targetPort: ref.targetPort,
    relativeTargetPortId: ref.relativeTargetPortId,
    targetPortGroup: ref.targetPortGroup,
  };
}

export function luStateToWire(s: LuReservationState): LuStateMsg {
  const res = s.pr.reservation;
  return {
    prGeneration: s.pr.generation,
    aptpl: s.pr.aptpl,
    registrations: s.pr.registrations.map((r) => ({ key: r.key.toString(16).padStart(16, '0'), nexus: nexusRef(r.nexus), allTgPt: r.allTargetPorts })),
    reservationType: res?.type ?? 0,
    reservationHolder: res?.holder ?? '',
    spc2Holder: s.spc2 === null ? null : nexusRef(s.spc2),
    modePages: (s.mode ?? []).map((m) => ({ page: m.page, subpage: m.subpage, values: m.values.toString('hex') })),
  };
}

export function luStateFromWire(m: LuStateMsg): LuReservationState {
  return {
    pr: {
      generation: m.prGeneration >>> 0,
      aptpl: m.aptpl,
      registrations: m.registrations.map((r) => ({ key: BigInt(`0x${r.key || '0'}`), nexus: nexusOf(r.nexus), allTargetPorts: r.allTgPt })),
      reservation: m.reservationType === 0 ? null : { type: m.reservationType, holder: m.reservationHolder === '' ? null : m.reservationHolder },
    },
    spc2: m.spc2Holder === null || m.spc2Holder === undefined ? null : nexusOf(m.spc2Holder),
    // Absent in states stored before mode pages were LU state: the defaults.
    mode: (m.modePages ?? []).map((p) => ({ page: p.page, subpage: p.subpage, values: Buffer.from(p.values, 'hex') })),
  };
}

export function luEventToWire(e: LuEvent): LuEventMsg {
  const { key, asc, ascq } = e.code;
  if (e.scope.only) return { senseKey: key, asc, ascq, scope: LuEventScope.Only, nexus: nexusRef(e.scope.only), abortTasks: e.abortTasks };
  if (e.scope.except) return { senseKey: key, asc, ascq, scope: LuEventScope.AllBut, nexus: nexusRef(e.scope.except), abortTasks: e.abortTasks };
  return { senseKey: key, asc, ascq, scope: LuEventScope.All, nexus: null, abortTasks: e.abortTasks };
}

export function luEventFromWire(m: LuEventMsg): LuEvent {
  const code = { key: m.senseKey as SenseKey, asc: m.asc, ascq: m.ascq };
  switch (m.scope) {
    case LuEventScope.Only:
      return { code, scope: { only: nexusOf(m.nexus) }, abortTasks: m.abortTasks };
    case LuEventScope.AllBut:
      return { code, scope: { except: nexusOf(m.nexus) }, abortTasks: m.abortTasks };
    default:
      return { code, scope: {}, abortTasks: m.abortTasks };
  }
}

const KINDS: readonly [ScsiLuRequestKind, LuRequestKind][] = [
  ['prout', LuRequestKind.Prout],
  ['reserve', LuRequestKind.Reserve],
  ['release', LuRequestKind.Release],
  ['lu-reset', LuRequestKind.LuReset],
  ['clear-task-set', LuRequestKind.ClearTaskSet],
  ['nexus-lost', LuRequestKind.NexusLost],
  ['mode-select', LuRequestKind.ModeSelect],
];

export function luRequestKindToWire(k: ScsiLuRequestKind): LuRequestKind {
  return KINDS.find(([s]) => s === k)![1];
}

/** undefined for a kind this build does not know. */
export function luRequestKindFromWire(k: LuRequestKind): ScsiLuRequestKind | undefined {
  return KINDS.find(([, w]) => w === k)?.[0];
}

export function luReplyOf(requestId: number, o: LuOutcome, prGeneration: number): LuReply {
  const f = o.sense?.opts.field;
  return {
    requestId,
    status: o.status,
    senseKey: o.sense?.code.key ?? 0,
    asc: o.sense?.code.asc ?? 0,
    ascq: o.sense?.code.ascq ?? 0,
    fieldValid: f !== undefined,
    fieldInCdb: f?.inCdb ?? false,
    fieldByte: f?.byte ?? 0,
    fieldBit: f?.bit ?? 8,
    prGeneration,
    reason: o.message ?? '',
  };
}

export function luOutcomeOf(r: LuReply): LuOutcome {
  const o: LuOutcome = { status: r.status as ScsiStatus };
  if (r.reason !== '') o.message = r.reason;
  if (r.status === ScsiStatus.CheckCondition) {
    const field = r.fieldValid ? { inCdb: r.fieldInCdb, byte: r.fieldByte, ...(r.fieldBit < 8 ? { bit: r.fieldBit } : {}) } : undefined;
    o.sense = { code: { key: r.senseKey as SenseKey, asc: r.asc, ascq: r.ascq }, opts: field ? { field } : {} };
  }
  return o;
}
