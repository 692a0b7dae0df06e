// The one table of iSCSI text keys (RFC 7143 section 13, plus the CHAP keys of
// section 12.1.3). Negotiation, text parsing and the login machine all read
// their rules from here; adding a key is adding one row.

/**
 * How a key's value is settled:
 * - min / max: numerical, the result is the lower / higher of the two values;
 * - and / or: Boolean result function;
 * - list: the responder picks the first value it supports from the offer;
 * - declarative: each side states its own value, no answer;
 * - single: one value exchanged as part of a protocol step (SendTargets, CHAP).
 */
export type KeyKind = 'min' | 'max' | 'and' | 'or' | 'list' | 'declarative' | 'single';

/** SW (session-wide) or CO (connection-only). */
export type KeyScope = 'session' | 'connection';

/**
 * Where a key may appear:
 * - leading: LO, login of the leading connection only (operational stage);
 * - login: IO, during login only (operational stage unless anyStage);
 * - all: login and full feature phase (text requests);
 * - ffp: full feature phase only (SendTargets);
 * - security: security negotiation stage only (AuthMethod, CHAP).
 */
export type KeyUse = 'leading' | 'login' | 'all' | 'ffp' | 'security';

export type KeySender = 'initiator' | 'target' | 'both';

export interface KeyDef {
  name: string;
  kind: KeyKind;
  scope: KeyScope;
  use: KeyUse;
  senders: KeySender;
  /** May also appear in the SecurityNegotiation stage (RFC 7143 "Any-Stage"). */
  anyStage: boolean;
  /** Answered Irrelevant in a Discovery session. */
  irrelevantInDiscovery: boolean;
  /** Numerical range (inclusive). */
  range?: { min: number; max: number };
  /** Allowed values for list, Boolean and enumerated declarative keys. */
  values?: readonly string[];
  /** The RFC default, as the text value. */
  defaultValue?: string;
  /** Longest accepted value in bytes. */
  maxLength: number;
  /**
   * RFC 7143 (obsoleted keys): keys obsoleted from RFC 3720 get a fixed answer
   * (never NotUnderstood): markers "No" (allowed instead of Reject, and what
   * RFC 3720 peers expect), marker intervals "Reject".
   */
  obsoleteAnswer?: 'No' | 'Reject';
}

export const MAX_KEY_LENGTH = 63;
/** RFC 7143 6.1: a simple value is at most 255 bytes unless a key says otherwise. */
export const MAX_VALUE_LENGTH = 255;
/** Large binary values (CHAP challenges/responses) and unknown keys. */
export const MAX_LARGE_VALUE_LENGTH = 8192;
/** RFC 7143 4.2.7.1: iSCSI names are at most 223 bytes. */
export const MAX_ISCSI_NAME_LENGTH = 223;
/** 2^24 - 1: upper bound of the data-length keys. */
export const MAX_DATA_LENGTH = 16777215;

const BOOL = ['Yes', 'No'] as const;

interface Row extends Partial<Omit<KeyDef, 'name' | 'kind'>> {
  kind: KeyKind;
}

function row(name: string, r: Row): KeyDef {
  return {
    name,
    kind: r.kind,
    scope: r.scope ?? 'session',
    use: r.use ?? 'leading',
    senders: r.senders ?? 'both',
    anyStage: r.anyStage ?? false,
    irrelevantInDiscovery: r.irrelevantInDiscovery ?? false,
    range: r.range,
    values: r.values,
    defaultValue: r.defaultValue,
    maxLength: r.maxLength ?? MAX_VALUE_LENGTH,
    obsoleteAnswer: r.obsoleteAnswer,
  };
}

const DATA_LEN = { min: 512, max: MAX_DATA_LENGTH };

const DEFS: KeyDef[] = [
  // Security stage (RFC 7143 section 12)
  row('AuthMethod', { kind: 'list', scope: 'connection', use: 'security', values: ['CHAP', 'None', 'KRB5', 'SRP'], defaultValue: 'None' }),
  row('CHAP_A', { kind: 'single', scope: 'connection', use: 'security' }),
  row('CHAP_I', { kind: 'single', scope: 'connection', use: 'security' }),
  row('CHAP_C', { kind: 'single', scope: 'connection', use: 'security', maxLength: MAX_LARGE_VALUE_LENGTH }),
  row('CHAP_N', { kind: 'single', scope: 'connection', use: 'security' }),
  row('CHAP_R', { kind: 'single', scope: 'connection', use: 'security', maxLength: MAX_LARGE_VALUE_LENGTH }),

  // Operational keys (RFC 7143 section 13)
  row('HeaderDigest', { kind: 'list', scope: 'connection', use: 'login', values: ['CRC32C', 'None'], defaultValue: 'None' }),
  row('DataDigest', { kind: 'list', scope: 'connection', use: 'login', values: ['CRC32C', 'None'], defaultValue: 'None' }),
  row('MaxConnections', { kind: 'min', range: { min: 1, max: 65535 }, defaultValue: '1', irrelevantInDiscovery: true }),
  row('SendTargets', { kind: 'single', use: 'ffp', senders: 'initiator' }),
  row('TargetName', { kind: 'declarative', use: 'login', anyStage: true, maxLength: MAX_ISCSI_NAME_LENGTH }),
  row('InitiatorName', { kind: 'declarative', use: 'login', senders: 'initiator', anyStage: true, maxLength: MAX_ISCSI_NAME_LENGTH }),
  row('TargetAlias', { kind: 'declarative', use: 'all', senders: 'target', anyStage: true }),
  row('InitiatorAlias', { kind: 'declarative', use: 'all', senders: 'initiator', anyStage: true }),
  row('TargetAddress', { kind: 'declarative', use: 'all', senders: 'target', anyStage: true }),
  row('TargetPortalGroupTag', { kind: 'declarative', use: 'login', senders: 'target', anyStage: true, range: { min: 0, max: 65535 } }),
  row('InitialR2T', { kind: 'or', values: BOOL, defaultValue: 'Yes', irrelevantInDiscovery: true }),
  row('ImmediateData', { kind: 'and', values: BOOL, defaultValue: 'Yes', irrelevantInDiscovery: true }),
  row('MaxRecvDataSegmentLength', { kind: 'declarative', scope: 'connection', use: 'all', range: DATA_LEN, defaultValue: '8192' }),
  row('MaxBurstLength', { kind: 'min', range: DATA_LEN, defaultValue: '262144', irrelevantInDiscovery: true }),
  // Also irrelevant when InitialR2T=Yes and ImmediateData=No (negotiation.ts).
  row('FirstBurstLength', { kind: 'min', range: DATA_LEN, defaultValue: '65536', irrelevantInDiscovery: true }),
  row('DefaultTime2Wait', { kind: 'max', range: { min: 0, max: 3600 }, defaultValue: '2' }),
  row('DefaultTime2Retain', { kind: 'min', range: { min: 0, max: 3600 }, defaultValue: '20' }),
  row('MaxOutstandingR2T', { kind: 'min', range: { min: 1, max: 65535 }, defaultValue: '1', irrelevantInDiscovery: true }),
  row('DataPDUInOrder', { kind: 'or', values: BOOL, defaultValue: 'Yes', irrelevantInDiscovery: true }),
  row('DataSequenceInOrder', { kind: 'or', values: BOOL, defaultValue: 'Yes', irrelevantInDiscovery: true }),
  row('ErrorRecoveryLevel', { kind: 'min', range: { min: 0, max: 2 }, defaultValue: '0' }),
  row('SessionType', { kind: 'declarative', senders: 'initiator', anyStage: true, values: ['Discovery', 'Normal'], defaultValue: 'Normal' }),
  row('TaskReporting', { kind: 'list', values: ['RFC3720', 'ResponseFence', 'FastAbort'], defaultValue: 'RFC3720', irrelevantInDiscovery: true }),
  row('iSCSIProtocolLevel', { kind: 'min', range: { min: 0, max: 31 }, defaultValue: '1', irrelevantInDiscovery: true }),

  // Obsoleted RFC 3720 keys (RFC 7143 section 13)
  row('IFMarker', { kind: 'and', scope: 'connection', use: 'login', values: BOOL, defaultValue: 'No', obsoleteAnswer: 'No' }),
  row('OFMarker', { kind: 'and', scope: 'connection', use: 'login', values: BOOL, defaultValue: 'No', obsoleteAnswer: 'No' }),
  row('IFMarkInt', { kind: 'single', scope: 'connection', use: 'login', obsoleteAnswer: 'Reject' }),
  row('OFMarkInt', { kind: 'single', scope: 'connection', use: 'login', obsoleteAnswer: 'Reject' }),
];

export const KEYS: ReadonlyMap<string, KeyDef> = new Map(DEFS.map((d) => [d.name, d]));

/** The row for a key, or undefined for unknown keys (including X- and X# extension keys). */
export function keyDef(name: string): KeyDef | undefined {
  return KEYS.get(name);
}

/** X-<vendor>... private and X#<name> public extension keys. */
export function isExtensionKey(name: string): boolean {
  return name.startsWith('X-') || name.startsWith('X#');
}

/** Longest value accepted for a key (unknown keys get the large bound: they are only answered NotUnderstood). */
export function maxValueLength(name: string): number {
  return KEYS.get(name)?.maxLength ?? MAX_LARGE_VALUE_LENGTH;
}

/** RFC 7143 6.1 decimal-constant or hex-constant; undefined when malformed or ≥ 2^53. */
export function parseNumber(value: string): number | undefined {
  let n: number;
  if (/^(0|[1-9][0-9]{0,15})$/.test(value)) n = Number(value);
  else if (/^0[xX][0-9a-fA-F]{1,13}$/.test(value)) n = Number.parseInt(value.slice(2), 16);
  else return undefined;
  return Number.isSafeInteger(n) ? n : undefined;
}
