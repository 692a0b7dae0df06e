// The login phase seen from the initiator (RFC 7143 6.3, 11.12, 11.13): an
// explicit state machine that yields the next Login Request and is fed each
// Login Response. Pure: no socket, no clock; randomness (the mutual CHAP
// challenge) is injected. The connection layer fills nothing in: the requests
// carry their CmdSN/ExpStatSN from the machine itself.

import { randomBytes, timingSafeEqual } from 'node:crypto';
import { Opcode, Stage, type LoginRequest, type LoginResponse } from '../pdu/types.js';
import { CHAP_CHALLENGE_BYTES, CHAP_MD5, CHAP_MD5_RESPONSE_BYTES, chapResponse, decodeBinary, encodeHex } from '../login/chap.js';
import { parseNumber } from '../login/keys.js';
import { LoginStatus, type LoginStatusCode } from '../login/login-machine.js';
import { parseText, serializeText, TextAccumulator, TextError, type TextPair } from '../login/text.js';
import { TransportError, type TransportErrorKind } from './transport.js';

export interface ChapSecret {
  user: string;
  secret: string;
}

export type DigestChoice = 'None' | 'CRC32C' | 'prefer';

/** What the initiator asks for; every field but the names has the RFC default or ours. */
export interface LoginOptions {
  initiatorName: string;
  initiatorAlias?: string;
  /** Absent for a discovery session. */
  targetName?: string;
  sessionType?: 'Normal' | 'Discovery';
  /** 48-bit ISID; keep it across reconnections so that a new login reinstates the session. */
  isid: number;
  /** 0 for a new session (or a reinstatement). */
  tsih?: number;
  cid?: number;
  chap?: ChapSecret;
  /** The target must prove itself with these (needs chap). */
  mutualChap?: ChapSecret;
  headerDigest?: DigestChoice;
  dataDigest?: DigestChoice;
  /** What we accept per PDU (default 262144). */
  maxRecvDataSegmentLength?: number;
  maxBurstLength?: number;
  firstBurstLength?: number;
  /** Default true (the RFC default); false lets us send unsolicited data. */
  initialR2T?: boolean;
  /** Default true. */
  immediateData?: boolean;
}

/** The session parameters in force after login, from the initiator's point of view. */
export interface InitiatorParams {
  headerDigest: boolean;
  dataDigest: boolean;
  /** What the target may send us per PDU (our declaration). */
  maxRecvDataSegmentLength: number;
  /** What we may send the target per PDU (its declaration). */
  targetMaxRecvDataSegmentLength: number;
  maxBurstLength: number;
  firstBurstLength: number;
  initialR2T: boolean;
  immediateData: boolean;
  maxOutstandingR2T: number;
  defaultTime2Wait: number;
  defaultTime2Retain: number;
  errorRecoveryLevel: number;
  targetPortalGroupTag?: number;
  targetAlias?: string;
}

export interface LoginResult {
  params: InitiatorParams;
  tsih: number;
  isid: number;
  /** The StatSN the target expects us to acknowledge next. */
  expStatSN: number;
  /** CmdSN of the first full-feature command. */
  cmdSN: number;
  expCmdSN: number;
  maxCmdSN: number;
}

/** The target redirected the login (status class 1) to another portal. */
export class LoginRedirect extends TransportError {
  constructor(
    readonly to: { host: string; port: number },
    message: string,
  ) {
    super('login', message);
    this.name = 'LoginRedirect';
  }
}

/** "host[:port][,tpgt]" (IPv6 in brackets) as in TargetAddress; port 3260 when absent. */
export function parseTargetAddress(v: string): { host: string; port: number } | undefined {
  const addr = v.split(',')[0]!.trim();
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(addr) ?? /^([^:[\]]+)(?::(\d+))?$/.exec(addr);
  if (!m) return undefined;
  const port = m[2] === undefined ? 3260 : Number(m[2]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  return { host: m[1]!, port };
}

export type LoginStepResult = { kind: 'send'; pdu: LoginRequest } | { kind: 'done'; result: LoginResult };

export enum InitiatorLoginState {
  Start,
  /** AuthMethod offered; waiting for the target's choice. */
  AuthMethod,
  /** CHAP_A sent; waiting for CHAP_A/CHAP_I/CHAP_C. */
  ChapChallenge,
  /** CHAP_N/CHAP_R sent; waiting for success (and the target's CHAP_N/CHAP_R for mutual CHAP). */
  ChapResponse,
  /** Security done; asked to move to the operational stage. */
  LeaveSecurity,
  /** Operational keys offered. */
  Operational,
  FullFeature,
  Failed,
}

const VERSION = 0;
const DEFAULT_MRDSL = 8192;
export const DEFAULT_INITIATOR_MRDSL = 262144;
/** A target that keeps the login going this many rounds is not converging. */
const MAX_ROUNDS = 16;

const STATUS_NAMES = new Map<number, string>(
  Object.entries(LoginStatus).map(([name, s]) => [(s.statusClass << 8) | s.statusDetail, name]),
);

/** "AuthenticationFailure (0x0201)" for a login status class/detail. */
export function loginStatusName(s: LoginStatusCode): string {
  const code = (s.statusClass << 8) | s.statusDetail;
  const name = STATUS_NAMES.get(code) ?? (s.statusClass === 2 ? 'InitiatorError' : s.statusClass === 3 ? 'TargetError' : 'Unknown');
  return `${name} (0x${code.toString(16).padStart(4, '0')})`;
}

/** Which TransportError a login reject becomes: authentication, a refusal, or a target that may come back. */
export function loginRejectKind(s: LoginStatusCode): TransportErrorKind {
  if (s.statusClass === 2 && (s.statusDetail === 1 || s.statusDetail === 2)) return 'auth';
  if (s.statusClass === 3) return 'unreachable';
  return 'login';
}

function yesNo(b: boolean): string {
  return b ? 'Yes' : 'No';
}

function digestOffer(c: DigestChoice | undefined): string {
  return c === 'CRC32C' ? 'CRC32C' : c === 'prefer' ? 'CRC32C,None' : 'None';
}

export class InitiatorLogin {
  private st = InitiatorLoginState.Start;
  private readonly text = new TextAccumulator();
  private cmdSN = 0;
  private expStatSN = 0;
  private statSNSeen = false;
  private tsih: number;
  private readonly itt: number;
  private rounds = 0;
  private mutualId = 0;
  private mutualChallenge: Buffer = Buffer.alloc(0);
  /** Operational keys we offered, and what the target answered or offered. */
  private readonly offered = new Map<string, string>();
  private readonly answers = new Map<string, string>();
  /** Target-offered keys we still have to answer. */
  private pendingAnswers: TextPair[] = [];
  private targetAlias?: string;
  private tpgt?: number;

  constructor(
    private readonly opts: LoginOptions,
    private readonly random: (n: number) => Buffer = randomBytes,
    itt = 0,
  ) {
    if (opts.mutualChap && !opts.chap) throw new TypeError('mutual CHAP needs CHAP credentials as well');
    if ((opts.sessionType ?? 'Normal') === 'Normal' && !opts.targetName) throw new TypeError('a normal session needs a target name');
    this.tsih = opts.tsih ?? 0;
    this.itt = itt >>> 0;
  }

  get state(): InitiatorLoginState {
    return this.st;
  }

  private get discovery(): boolean {
    return this.opts.sessionType === 'Discovery';
  }

  /** The first Login Request. */
  start(): LoginRequest {
    if (this.st !== InitiatorLoginState.Start) throw new Error('login already started');
    const pairs: TextPair[] = [['InitiatorName', this.opts.initiatorName]];
    if (this.opts.initiatorAlias) pairs.push(['InitiatorAlias', this.opts.initiatorAlias]);
    pairs.push(['SessionType', this.discovery ? 'Discovery' : 'Normal']);
    if (!this.discovery) pairs.push(['TargetName', this.opts.targetName as string]);
    pairs.push(['AuthMethod', this.opts.chap ? 'CHAP' : 'None']);
    this.st = InitiatorLoginState.AuthMethod;
    // Without CHAP we ask to leave the security stage at once.
    return this.request(Stage.Security, Stage.Operational, !this.opts.chap, pairs);
  }

  /** Feeds one Login Response; returns the next request or the outcome. Throws TransportError on failure. */
  receive(resp: LoginResponse): LoginStepResult {
    try {
      return this.transition(resp);
    } catch (e) {
      this.st = InitiatorLoginState.Failed;
      if (e instanceof TransportError) throw e;
      if (e instanceof TextError) throw new TransportError('protocol', `login: malformed text from the target: ${e.message}`);
      throw e;
    }
  }

  private transition(resp: LoginResponse): LoginStepResult {
    if (this.st === InitiatorLoginState.Start || this.st === InitiatorLoginState.FullFeature || this.st === InitiatorLoginState.Failed) {
      throw new TransportError('protocol', `login: unexpected Login Response in state ${InitiatorLoginState[this.st]}`);
    }
    if (resp.opcode !== Opcode.LoginResponse) throw new TransportError('protocol', 'login: expected a Login Response');
    if (resp.statusClass === 1) {
      // Redirection: the target names the portal to log in at instead.
      let address: string | undefined;
      try {
        address = new Map(parseText(resp.data)).get('TargetAddress');
      } catch {
        address = undefined;
      }
      const to = address === undefined ? undefined : parseTargetAddress(address);
      if (to) throw new LoginRedirect(to, `login to ${this.opts.targetName ?? 'discovery'} redirected to ${address}: ${loginStatusName(resp)}`);
    }
    if (resp.statusClass !== 0) {
      const what = loginStatusName(resp);
      const kind = loginRejectKind(resp);
      throw new TransportError(kind, `login to ${this.opts.targetName ?? 'discovery'} rejected: ${what}`);
    }
    if (++this.rounds > MAX_ROUNDS) throw new TransportError('protocol', `login: no agreement after ${MAX_ROUNDS} rounds`);
    if (resp.itt !== this.itt) throw new TransportError('protocol', `login: response ITT 0x${resp.itt.toString(16)} is not ours`);
    if (resp.versionActive !== VERSION) throw new TransportError('protocol', `login: target speaks iSCSI version ${resp.versionActive}`);
    this.expStatSN = (resp.statSN + 1) >>> 0;
    this.statSNSeen = true;

    const acc = this.text.push(resp.data, resp.cont);
    if (acc.kind === 'overflow') throw new TransportError('protocol', `login: target text of ${acc.size} bytes is too long`);
    if (acc.kind === 'partial') {
      if (resp.transit) throw new TransportError('protocol', 'login: T and C bits both set');
      // Ask for the rest with an empty request in the same stage.
      return { kind: 'send', pdu: this.request(resp.csg, resp.nsg, false, []) };
    }
    const keys = new Map<string, string>(parseText(acc.data));
    this.readDeclarations(keys);

    switch (this.st) {
      case InitiatorLoginState.AuthMethod:
        return this.onAuthMethod(resp, keys);
      case InitiatorLoginState.ChapChallenge:
        return this.onChapChallenge(resp, keys);
      case InitiatorLoginState.ChapResponse:
        return this.onChapResult(resp, keys);
      case InitiatorLoginState.LeaveSecurity:
        return this.onLeaveSecurity(resp);
      case InitiatorLoginState.Operational:
        return this.onOperational(resp, keys);
      default:
        throw new TransportError('protocol', `login: unexpected Login Response in state ${InitiatorLoginState[this.st]}`);
    }
  }

  private readDeclarations(keys: Map<string, string>): void {
    const alias = keys.get('TargetAlias');
    if (alias !== undefined) this.targetAlias = alias;
    const tpgt = keys.get('TargetPortalGroupTag');
    if (tpgt !== undefined) this.tpgt = parseNumber(tpgt);
  }

  private onAuthMethod(resp: LoginResponse, keys: Map<string, string>): LoginStepResult {
    const method = keys.get('AuthMethod');
    if (this.opts.chap) {
      if (method !== 'CHAP') {
        throw new TransportError('auth', `login: target answered AuthMethod=${method ?? '(nothing)'} to our CHAP offer`);
      }
      this.st = InitiatorLoginState.ChapChallenge;
      return { kind: 'send', pdu: this.request(Stage.Security, Stage.Operational, false, [['CHAP_A', String(CHAP_MD5)]]) };
    }
    if (method !== undefined && method !== 'None') {
      throw new TransportError('auth', `login: target requires authentication (AuthMethod=${method}) and we have no CHAP credentials`);
    }
    return this.afterSecurity(resp);
  }

  private onChapChallenge(resp: LoginResponse, keys: Map<string, string>): LoginStepResult {
    const chap = this.opts.chap as ChapSecret;
    const alg = keys.get('CHAP_A');
    const id = keys.get('CHAP_I');
    const challenge = keys.get('CHAP_C');
    if (alg === undefined || parseNumber(alg) !== CHAP_MD5) throw new TransportError('auth', `login: target chose CHAP_A=${alg ?? '(nothing)'}, we only do MD5 (5)`);
    const n = id === undefined ? undefined : parseNumber(id);
    if (n === undefined || n > 255) throw new TransportError('protocol', `login: bad CHAP_I ${JSON.stringify(id)}`);
    const c = challenge === undefined ? undefined : decodeBinary(challenge);
    if (!c) throw new TransportError('protocol', 'login: CHAP_C missing or not a hex/base64 value');
    if (resp.transit) throw new TransportError('protocol', 'login: target left the security stage before CHAP completed');
    const pairs: TextPair[] = [
      ['CHAP_N', chap.user],
      ['CHAP_R', encodeHex(chapResponse(n, chap.secret, c))],
    ];
    if (this.opts.mutualChap) {
      const rnd = this.random(CHAP_CHALLENGE_BYTES + 1);
      this.mutualId = rnd[0] as number;
      this.mutualChallenge = Buffer.from(rnd.subarray(1));
      // RFC 7143 12.1.3: a target must not be able to answer with our own challenge reflected.
      if (this.mutualChallenge.equals(c)) this.mutualChallenge[0] = (this.mutualChallenge[0] as number) ^ 0xff;
      pairs.push(['CHAP_I', String(this.mutualId)], ['CHAP_C', encodeHex(this.mutualChallenge)]);
    }
    this.st = InitiatorLoginState.ChapResponse;
    return { kind: 'send', pdu: this.request(Stage.Security, Stage.Operational, true, pairs) };
  }

  private onChapResult(resp: LoginResponse, keys: Map<string, string>): LoginStepResult {
    const mutual = this.opts.mutualChap;
    if (mutual) {
      const name = keys.get('CHAP_N');
      const r = keys.get('CHAP_R');
      if (name === undefined || r === undefined) throw new TransportError('auth', 'login: target did not answer our mutual CHAP challenge');
      if (name !== mutual.user) throw new TransportError('auth', `login: target authenticated as ${JSON.stringify(name)}, expected ${JSON.stringify(mutual.user)}`);
      const got = decodeBinary(r);
      const want = chapResponse(this.mutualId, mutual.secret, this.mutualChallenge);
      if (!got || got.length !== CHAP_MD5_RESPONSE_BYTES || !timingSafeEqual(got, want)) {
        throw new TransportError('auth', 'login: wrong mutual CHAP response from the target');
      }
    }
    return this.afterSecurity(resp);
  }

  /** Security done: either the target already moved to the operational stage, or we ask it to. */
  private afterSecurity(resp: LoginResponse): LoginStepResult {
    if (resp.transit) {
      if (resp.nsg === Stage.FullFeature) throw new TransportError('protocol', 'login: target skipped the operational stage');
      return this.offerOperational();
    }
    this.st = InitiatorLoginState.LeaveSecurity;
    return { kind: 'send', pdu: this.request(Stage.Security, Stage.Operational, true, []) };
  }

  private onLeaveSecurity(resp: LoginResponse): LoginStepResult {
    if (!resp.transit) {
      return { kind: 'send', pdu: this.request(Stage.Security, Stage.Operational, true, []) };
    }
    return this.offerOperational();
  }

  private offerOperational(): LoginStepResult {
    const o = this.opts;
    const pairs: TextPair[] = [
      ['HeaderDigest', digestOffer(o.headerDigest)],
      ['DataDigest', digestOffer(o.dataDigest)],
      ['MaxRecvDataSegmentLength', String(o.maxRecvDataSegmentLength ?? DEFAULT_INITIATOR_MRDSL)],
      ['DefaultTime2Wait', '0'],
      ['DefaultTime2Retain', '0'],
      ['ErrorRecoveryLevel', '0'],
    ];
    if (!this.discovery) {
      pairs.push(
        ['InitialR2T', yesNo(o.initialR2T ?? true)],
        ['ImmediateData', yesNo(o.immediateData ?? true)],
        ['MaxBurstLength', String(o.maxBurstLength ?? 1 << 20)],
        ['FirstBurstLength', String(o.firstBurstLength ?? 262144)],
        ['MaxOutstandingR2T', '1'],
        ['MaxConnections', '1'],
        ['DataPDUInOrder', 'Yes'],
        ['DataSequenceInOrder', 'Yes'],
      );
    }
    for (const [k, v] of pairs) if (k !== 'MaxRecvDataSegmentLength') this.offered.set(k, v);
    this.st = InitiatorLoginState.Operational;
    return { kind: 'send', pdu: this.request(Stage.Operational, Stage.FullFeature, true, pairs) };
  }

  private onOperational(resp: LoginResponse, keys: Map<string, string>): LoginStepResult {
    for (const [k, v] of keys) {
      if (k === 'TargetAlias' || k === 'TargetPortalGroupTag' || k === 'TargetAddress') continue;
      if (k === 'MaxRecvDataSegmentLength') {
        this.answers.set(k, v);
        continue;
      }
      if (this.offered.has(k)) {
        this.answers.set(k, v);
        continue;
      }
      // The target offered a key we did not: answer it in the next request.
      const ours = answerTargetOffer(k, v);
      this.answers.set(k, ours === 'NotUnderstood' || ours === 'Reject' ? v : ours);
      this.pendingAnswers.push([k, ours]);
    }
    if (resp.transit && resp.nsg === Stage.FullFeature && this.pendingAnswers.length === 0) {
      this.st = InitiatorLoginState.FullFeature;
      return { kind: 'done', result: this.outcome(resp) };
    }
    const pairs = this.pendingAnswers;
    this.pendingAnswers = [];
    return { kind: 'send', pdu: this.request(Stage.Operational, Stage.FullFeature, true, pairs) };
  }

  private outcome(resp: LoginResponse): LoginResult {
    const a = this.answers;
    const num = (k: string, def: number): number => {
      const v = a.get(k);
      const n = v === undefined ? undefined : parseNumber(v);
      return n ?? def;
    };
    const bool = (k: string, def: boolean): boolean => {
      const v = a.get(k);
      return v === 'Yes' ? true : v === 'No' ? false : def;
    };
    const digest = (k: string): boolean => {
      const v = a.get(k);
      if (v === 'CRC32C') return true;
      if (v === undefined || v === 'None' || v === 'Irrelevant' || v === 'Reject') {
        if (this.offered.get(k) === 'CRC32C') throw new TransportError('login', `login: target refused ${k}=CRC32C (answered ${v ?? 'nothing'})`);
        return false;
      }
      throw new TransportError('protocol', `login: target answered ${k}=${v}`);
    };
    const erl = num('ErrorRecoveryLevel', 0);
    if (erl !== 0) throw new TransportError('protocol', `login: target chose ErrorRecoveryLevel=${erl}, we offered 0`);
    const tmrdsl = num('MaxRecvDataSegmentLength', DEFAULT_MRDSL);
    if (tmrdsl < 512) throw new TransportError('protocol', `login: target MaxRecvDataSegmentLength ${tmrdsl} is below 512`);
    const mbl = num('MaxBurstLength', 262144);
    const params: InitiatorParams = {
      headerDigest: digest('HeaderDigest'),
      dataDigest: digest('DataDigest'),
      maxRecvDataSegmentLength: this.opts.maxRecvDataSegmentLength ?? DEFAULT_INITIATOR_MRDSL,
      targetMaxRecvDataSegmentLength: tmrdsl,
      maxBurstLength: mbl,
      firstBurstLength: Math.min(num('FirstBurstLength', 65536), mbl),
      initialR2T: bool('InitialR2T', true),
      immediateData: bool('ImmediateData', true),
      maxOutstandingR2T: num('MaxOutstandingR2T', 1),
      defaultTime2Wait: num('DefaultTime2Wait', 2),
      defaultTime2Retain: num('DefaultTime2Retain', 20),
      errorRecoveryLevel: erl,
    };
    if (this.tpgt !== undefined) params.targetPortalGroupTag = this.tpgt;
    if (this.targetAlias !== undefined) params.targetAlias = this.targetAlias;
    if (!this.discovery && resp.tsih === 0) throw new TransportError('protocol', 'login: final response carries TSIH 0');
    this.tsih = resp.tsih;
    return {
      params,
      tsih: resp.tsih,
      isid: this.opts.isid,
      expStatSN: this.expStatSN,
      cmdSN: this.cmdSN,
      expCmdSN: resp.expCmdSN,
      maxCmdSN: resp.maxCmdSN,
    };
  }

  private request(csg: Stage, nsg: Stage, transit: boolean, pairs: TextPair[]): LoginRequest {
    return {
      opcode: Opcode.LoginRequest,
      immediate: true,
      ahs: [],
      data: pairs.length === 0 ? Buffer.alloc(0) : serializeText(pairs),
      transit,
      cont: false,
      csg,
      nsg: transit ? nsg : (0 as Stage),
      versionMax: VERSION,
      versionMin: VERSION,
      isid: this.opts.isid,
      tsih: this.tsih,
      itt: this.itt,
      cid: this.opts.cid ?? 0,
      cmdSN: this.cmdSN,
      expStatSN: this.statSNSeen ? this.expStatSN : 0,
    };
  }
}

/** Our answer to a key the target offered without our offering it first. */
function answerTargetOffer(key: string, value: string): string {
  switch (key) {
    case 'HeaderDigest':
    case 'DataDigest':
      return value.split(',').includes('None') ? 'None' : 'Reject';
    case 'ErrorRecoveryLevel':
      return '0';
    case 'MaxConnections':
      return '1';
    case 'MaxOutstandingR2T':
      return '1';
    case 'InitialR2T':
      return value === 'Yes' ? 'Yes' : 'No';
    case 'ImmediateData':
    case 'DataPDUInOrder':
    case 'DataSequenceInOrder':
      return value === 'Yes' || value === 'No' ? value : 'Reject';
    case 'MaxBurstLength':
    case 'FirstBurstLength':
    case 'DefaultTime2Retain': {
      const n = parseNumber(value);
      return n === undefined ? 'Reject' : String(n);
    }
    case 'DefaultTime2Wait':
      return value;
    case 'IFMarker':
    case 'OFMarker':
      return 'No';
    default:
      return 'NotUnderstood';
  }
}
