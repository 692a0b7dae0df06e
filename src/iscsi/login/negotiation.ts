// Target side of operational parameter negotiation (RFC 7143 6.2, 13).
// Rules come from the key table in keys.ts; the target's own values from
// TargetLimits. The initiator offers, we answer; we declare our
// MaxRecvDataSegmentLength, and offer the few keys whose RFC default we cannot
// live with when the initiator did not offer them.

import type { TargetLimits } from './environment.js';
import { keyDef, MAX_DATA_LENGTH, parseNumber, type KeyDef } from './keys.js';
import type { TextPair } from './text.js';

export type SessionType = 'Discovery' | 'Normal';

export interface NegotiatedParams {
  headerDigest: boolean;
  dataDigest: boolean;
  /** What the target may send per PDU (the initiator's declaration). */
  initiatorMaxRecvDataSegmentLength: number;
  /** What the initiator may send per PDU (our declaration). */
  targetMaxRecvDataSegmentLength: number;
  maxBurstLength: number;
  firstBurstLength: number;
  initialR2T: boolean;
  immediateData: boolean;
  maxOutstandingR2T: number;
  dataPDUInOrder: boolean;
  dataSequenceInOrder: boolean;
  defaultTime2Wait: number;
  defaultTime2Retain: number;
  errorRecoveryLevel: number;
  maxConnections: number;
  sessionType: SessionType;
  initiatorName: string;
  initiatorAlias?: string;
  targetName?: string;
}

export interface SessionIdentity {
  sessionType: SessionType;
  initiatorName: string;
  initiatorAlias?: string;
  targetName?: string;
}

export type NegotiationStep = { ok: true; responses: TextPair[] } | { ok: false; reason: string };

/** Declarative identity keys: the login machine reads them, negotiation ignores them. */
export const IDENTITY_KEYS: ReadonlySet<string> = new Set(['InitiatorName', 'InitiatorAlias', 'TargetName', 'SessionType']);

const DEFAULT_MRDSL = 8192;
const SUPPORTED_LISTS: Record<string, readonly string[]> = {
  HeaderDigest: ['CRC32C', 'None'],
  DataDigest: ['CRC32C', 'None'],
  TaskReporting: ['RFC3720'],
};
/** RFC 7143 is iSCSIProtocolLevel 1. */
const PROTOCOL_LEVEL = 1;
const ANSWER_CONSTANTS = new Set(['Reject', 'Irrelevant', 'NotUnderstood']);

function clamp(n: number, def: KeyDef): number {
  const r = def.range;
  return r ? Math.min(Math.max(n, r.min), r.max) : n;
}

export class OperationalNegotiator {
  /** Settled values by key (the text form), for keys negotiated either way. */
  private readonly settled = new Map<string, string>();
  /** Keys we offered and are waiting for the initiator to answer, with our value. */
  private readonly offered = new Map<string, string>();
  private initiatorMrdsl = DEFAULT_MRDSL;
  private declaredByInitiator = false;
  private declared = false;

  constructor(
    private readonly limits: TargetLimits,
    private readonly sessionType: SessionType,
    /** False for a connection added to an existing session: leading-only keys are Irrelevant. */
    private readonly leading = true,
  ) {}

  /** Answers one complete text of initiator keys (identity keys are skipped). */
  negotiate(pairs: readonly TextPair[]): NegotiationStep {
    const answers: (TextPair | null)[] = [];
    let deferredFirstBurst = -1;
    for (const [key, value] of pairs) {
      if (IDENTITY_KEYS.has(key)) {
        answers.push(null);
        continue;
      }
      const def = keyDef(key);
      if (!def) {
        answers.push([key, 'NotUnderstood']);
        continue;
      }
      if (def.use === 'security') return { ok: false, reason: `${key} is a security key, not allowed in the operational stage` };
      if (def.use === 'ffp') return { ok: false, reason: `${key} is only allowed in the full feature phase` };
      if (def.senders === 'target') return { ok: false, reason: `${key} may only be sent by the target` };
      const ourOffer = this.offered.get(key);
      if (ourOffer !== undefined) {
        const err = this.acceptAnswer(def, ourOffer, value);
        if (err) return { ok: false, reason: err };
        answers.push(null);
        continue;
      }
      if (this.settled.has(key) || (key === 'MaxRecvDataSegmentLength' && this.declaredByInitiator)) {
        return { ok: false, reason: `${key} negotiated twice` };
      }
      if (key === 'FirstBurstLength') {
        // Its relevance depends on InitialR2T/ImmediateData, maybe later in this text.
        deferredFirstBurst = answers.length;
        answers.push(null);
        continue;
      }
      const r = this.answer(def, value);
      if (r !== null && typeof r === 'object') return { ok: false, reason: r.error };
      answers.push(typeof r === 'string' ? [key, r] : null);
    }
    if (deferredFirstBurst >= 0) {
      const value = pairs[deferredFirstBurst][1];
      const def = keyDef('FirstBurstLength') as KeyDef;
      const r = this.answer(def, value);
      if (r !== null && typeof r === 'object') return { ok: false, reason: r.error };
      answers[deferredFirstBurst] = typeof r === 'string' ? ['FirstBurstLength', r] : null;
    }
    return { ok: true, responses: answers.filter((a): a is TextPair => a !== null) };
  }

  /**
   * The answer text for an initiator offer (and records the result), null for
   * declarations, or an error for a protocol violation.
   */
  private answer(def: KeyDef, value: string): string | null | { error: string } {
    const key = def.name;
    if (def.kind === 'declarative') {
      // Only MaxRecvDataSegmentLength reaches here (identity keys are skipped).
      const n = parseNumber(value);
      if (n === undefined || !def.range || n < def.range.min || n > def.range.max) {
        return { error: `${key}=${value} is not a valid declaration` };
      }
      this.initiatorMrdsl = n;
      this.declaredByInitiator = true;
      return null;
    }
    if (def.obsoleteAnswer) {
      this.settled.set(key, def.obsoleteAnswer);
      return def.obsoleteAnswer;
    }
    if ((this.sessionType === 'Discovery' && def.irrelevantInDiscovery) || (!this.leading && def.use === 'leading') || this.firstBurstIrrelevant(key)) {
      this.settled.set(key, 'Irrelevant');
      return 'Irrelevant';
    }
    // An offer of "Reject"/"Irrelevant"/"NotUnderstood" is not a value.
    const result = ANSWER_CONSTANTS.has(value) ? undefined : this.select(def, value);
    if (result === undefined) {
      this.settled.set(key, 'Reject');
      return 'Reject';
    }
    this.settled.set(key, result);
    return result;
  }

  /** The negotiation result for a syntactically and range-valid offer, undefined to Reject. */
  private select(def: KeyDef, value: string): string | undefined {
    switch (def.kind) {
      case 'min':
      case 'max': {
        const n = parseNumber(value);
        if (n === undefined || (def.range && (n < def.range.min || n > def.range.max))) return undefined;
        const ours = this.targetNumber(def);
        return String(def.kind === 'min' ? Math.min(n, ours) : Math.max(n, ours));
      }
      case 'and':
      case 'or': {
        if (value !== 'Yes' && value !== 'No') return undefined;
        const theirs = value === 'Yes';
        const ours = this.targetBoolean(def.name);
        const r = def.kind === 'and' ? theirs && ours : theirs || ours;
        return r ? 'Yes' : 'No';
      }
      case 'list': {
        const supported = SUPPORTED_LISTS[def.name] ?? [];
        return value.split(',').find((v) => supported.includes(v));
      }
      default:
        return undefined;
    }
  }

  private targetNumber(def: KeyDef): number {
    const l = this.limits;
    switch (def.name) {
      case 'MaxConnections':
        return 1;
      case 'ErrorRecoveryLevel':
        return 0;
      case 'iSCSIProtocolLevel':
        return PROTOCOL_LEVEL;
      case 'MaxBurstLength':
        return clamp(l.maxBurstLength, def);
      case 'FirstBurstLength':
        return Math.min(clamp(l.firstBurstLength, def), this.maxBurstLength());
      case 'MaxOutstandingR2T':
        return clamp(l.maxOutstandingR2T, def);
      case 'DefaultTime2Wait':
        return clamp(l.defaultTime2Wait, def);
      case 'DefaultTime2Retain':
        return clamp(l.defaultTime2Retain, def);
      default:
        throw new Error(`no target value for numerical key ${def.name}`);
    }
  }

  private targetBoolean(key: string): boolean {
    switch (key) {
      case 'InitialR2T':
        return this.limits.initialR2T;
      case 'ImmediateData':
        return this.limits.immediateData;
      // Data and sequences in order keep the Data-Out path simple.
      case 'DataPDUInOrder':
      case 'DataSequenceInOrder':
        return true;
      default:
        throw new Error(`no target value for Boolean key ${key}`);
    }
  }

  /** RFC 7143 13.14: FirstBurstLength is Irrelevant when InitialR2T=Yes and ImmediateData=No. */
  private firstBurstIrrelevant(key: string): boolean {
    return key === 'FirstBurstLength' && this.bool('InitialR2T') && !this.bool('ImmediateData');
  }

  /** Checks the initiator's answer to one of our offers against the key's result function. */
  private acceptAnswer(def: KeyDef, ours: string, value: string): string | undefined {
    this.offered.delete(def.name);
    if (value === 'Reject' || value === 'Irrelevant') {
      // The key keeps its default; nothing more we can do about it.
      this.settled.set(def.name, value);
      return undefined;
    }
    let ok: boolean;
    switch (def.kind) {
      case 'min': {
        const n = parseNumber(value);
        ok = n !== undefined && !!def.range && n >= def.range.min && n <= Number(ours);
        break;
      }
      case 'max': {
        const n = parseNumber(value);
        ok = n !== undefined && !!def.range && n <= def.range.max && n >= Number(ours);
        break;
      }
      case 'and':
        ok = value === 'No' || (value === 'Yes' && ours === 'Yes');
        break;
      case 'or':
        ok = value === 'Yes' || (value === 'No' && ours === 'No');
        break;
      default:
        ok = false;
    }
    if (!ok) return `answer ${def.name}=${value} to our offer ${def.name}=${ours} breaks the result function`;
    this.settled.set(def.name, value);
    return undefined;
  }

  /** Our MaxRecvDataSegmentLength declaration, once per connection (first operational response). */
  declarations(): TextPair[] {
    if (this.declared) return [];
    this.declared = true;
    return [['MaxRecvDataSegmentLength', String(this.targetMrdsl())]];
  }

  /** True once our MaxRecvDataSegmentLength went out, or when we can take the 8192 default. */
  get declarationsDone(): boolean {
    return this.declared || this.targetMrdsl() >= DEFAULT_MRDSL;
  }

  /**
   * Keys the target must offer itself before the login can complete: those
   * the initiator left at an RFC default we cannot accept. Each is offered
   * once (recorded here); the initiator answers in its next request.
   */
  targetOffers(): TextPair[] {
    const out = this.neededOffers();
    for (const [k, v] of out) this.offered.set(k, v);
    return out;
  }

  /** Whether targetOffers() would offer anything (no side effect). */
  get needsOffers(): boolean {
    return this.neededOffers().length > 0;
  }

  private neededOffers(): TextPair[] {
    if (this.sessionType !== 'Normal' || !this.leading) return [];
    const out: TextPair[] = [];
    const open = (key: string) => !this.settled.has(key) && !this.offered.has(key);
    const mbl = clamp(this.limits.maxBurstLength, keyDef('MaxBurstLength') as KeyDef);
    const offerMbl = open('MaxBurstLength') && mbl < 262144;
    if (offerMbl) out.push(['MaxBurstLength', String(mbl)]);
    const offerImmediate = open('ImmediateData') && !this.limits.immediateData;
    if (offerImmediate) out.push(['ImmediateData', 'No']);
    // Values as they will be once these offers are answered (AND with No is No).
    const immediate = offerImmediate || this.offered.has('ImmediateData') ? false : this.bool('ImmediateData');
    const burst = offerMbl ? mbl : this.maxBurstLength();
    const fbl = Math.min(clamp(this.limits.firstBurstLength, keyDef('FirstBurstLength') as KeyDef), burst);
    const relevant = !(this.bool('InitialR2T') && !immediate);
    if (open('FirstBurstLength') && relevant && fbl < 65536) out.push(['FirstBurstLength', String(fbl)]);
    return out;
  }

  /** Offers we made that the initiator has not answered yet. */
  get unansweredOffers(): string[] {
    return [...this.offered.keys()];
  }

  private targetMrdsl(): number {
    return Math.min(Math.max(this.limits.maxRecvDataSegmentLength, 512), MAX_DATA_LENGTH);
  }

  /** Settled value of a key, or its RFC default when never negotiated / Rejected / Irrelevant. */
  private text(key: string): string {
    const v = this.settled.get(key);
    if (v !== undefined && !ANSWER_CONSTANTS.has(v)) return v;
    return (keyDef(key) as KeyDef).defaultValue as string;
  }

  private bool(key: string): boolean {
    return this.text(key) === 'Yes';
  }

  private num(key: string): number {
    return Number(this.text(key));
  }

  private maxBurstLength(): number {
    return this.num('MaxBurstLength');
  }

  result(identity: SessionIdentity): NegotiatedParams {
    const maxBurstLength = this.maxBurstLength();
    return {
      headerDigest: this.text('HeaderDigest') === 'CRC32C',
      dataDigest: this.text('DataDigest') === 'CRC32C',
      initiatorMaxRecvDataSegmentLength: this.initiatorMrdsl,
      targetMaxRecvDataSegmentLength: this.declared ? this.targetMrdsl() : DEFAULT_MRDSL,
      maxBurstLength,
      // RFC 7143 13.14: FirstBurstLength never exceeds MaxBurstLength.
      firstBurstLength: Math.min(this.num('FirstBurstLength'), maxBurstLength),
      initialR2T: this.bool('InitialR2T'),
      immediateData: this.bool('ImmediateData'),
      maxOutstandingR2T: this.num('MaxOutstandingR2T'),
      dataPDUInOrder: this.bool('DataPDUInOrder'),
      dataSequenceInOrder: this.bool('DataSequenceInOrder'),
      defaultTime2Wait: this.num('DefaultTime2Wait'),
      defaultTime2Retain: this.num('DefaultTime2Retain'),
      errorRecoveryLevel: this.num('ErrorRecoveryLevel'),
      maxConnections: this.num('MaxConnections'),
      sessionType: identity.sessionType,
      initiatorName: identity.initiatorName,
      ...(identity.initiatorAlias !== undefined ? { initiatorAlias: identity.initiatorAlias } : {}),
      ...(identity.targetName !== undefined ? { targetName: identity.targetName } : {}),
    };
  }
}
