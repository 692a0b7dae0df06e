// The login phase of one connection (RFC 7143 6.3, 11.12, 11.13), target side:
// an explicit state machine fed one Login Request at a time, returning the
// Login Response to send. Pure: the environment (targets, limits, session
// table) is injected and the connection layer moves the bytes and fills in
// StatSN/ExpCmdSN/MaxCmdSN.

import { log } from '../../util/log.js';
import { Opcode, Stage, type LoginRequest, type LoginResponse } from '../pdu/types.js';
import { ChapAuthenticator } from './chap.js';
import type { LoginEnvironment, TargetAuth, TargetInfo } from './environment.js';
import { initiatorAllowed } from './environment.js';
import { keyDef } from './keys.js';
import { IDENTITY_KEYS, OperationalNegotiator, type NegotiatedParams, type SessionType } from './negotiation.js';
import { parseText, serializeText, TextAccumulator, TextError, type TextPair } from './text.js';

export type {
  AdmitRequest,
  AdmitResult,
  LoginEnvironment,
  PortalInfo,
  TargetAuth,
  TargetInfo,
  TargetLimits,
} from './environment.js';
export type { NegotiatedParams } from './negotiation.js';

/** Login status class/detail pairs (RFC 7143 11.13.5). */
export const LoginStatus = {
  Success: { statusClass: 0x00, statusDetail: 0x00 },
  TargetMovedTemporarily: { statusClass: 0x01, statusDetail: 0x01 },
  TargetMovedPermanently: { statusClass: 0x01, statusDetail: 0x02 },
  InitiatorError: { statusClass: 0x02, statusDetail: 0x00 },
  AuthenticationFailure: { statusClass: 0x02, statusDetail: 0x01 },
  AuthorizationFailure: { statusClass: 0x02, statusDetail: 0x02 },
  NotFound: { statusClass: 0x02, statusDetail: 0x03 },
  TargetRemoved: { statusClass: 0x02, statusDetail: 0x04 },
  UnsupportedVersion: { statusClass: 0x02, statusDetail: 0x05 },
  TooManyConnections: { statusClass: 0x02, statusDetail: 0x06 },
  MissingParameter: { statusClass: 0x02, statusDetail: 0x07 },
  CantIncludeInSession: { statusClass: 0x02, statusDetail: 0x08 },
  SessionTypeNotSupported: { statusClass: 0x02, statusDetail: 0x09 },
  SessionDoesNotExist: { statusClass: 0x02, statusDetail: 0x0a },
  InvalidDuringLogin: { statusClass: 0x02, statusDetail: 0x0b },
  TargetError: { statusClass: 0x03, statusDetail: 0x00 },
  ServiceUnavailable: { statusClass: 0x03, statusDetail: 0x01 },
  OutOfResources: { statusClass: 0x03, statusDetail: 0x02 },
} as const;

export interface LoginStatusCode {
  statusClass: number;
  statusDetail: number;
}

export interface LoginOutcome {
  params: NegotiatedParams;
  tsih: number;
  isid: number;
  cid: number;
  target?: TargetInfo;
}

export interface LoginStep {
  /** statSN/expCmdSN/maxCmdSN left 0: the connection layer fills them. */
  response: LoginResponse;
  /** Set when this response completes the login (transit to FullFeature). */
  outcome?: LoginOutcome;
  /** Login failed: send the response, then close the connection. */
  close?: boolean;
}

export enum LoginState {
  /** No request seen yet. */
  Start,
  /** Security stage, no authentication method agreed yet. */
  SecurityNegotiation,
  /** AuthMethod=CHAP agreed; waiting for CHAP_A. */
  ChapAlgorithm,
  /** Challenge sent; waiting for CHAP_N/CHAP_R. */
  ChapResponse,
  /** Authenticated (CHAP or None); waiting for the initiator to leave the security stage. */
  SecurityDone,
  OperationalNegotiation,
  FullFeature,
  Failed,
}

/** iSCSI version we speak (RFC 7143: 0x00). */
const VERSION = 0;

const SECURITY_KEYS = new Set(['AuthMethod', 'CHAP_A', 'CHAP_I', 'CHAP_C', 'CHAP_N', 'CHAP_R']);

class LoginFailure extends Error {
  constructor(
    readonly status: LoginStatusCode,
    message: string,
  ) {
    super(message);
  }
}

interface Identity {
  sessionType: SessionType;
  initiatorName: string;
  initiatorAlias?: string;
  targetName?: string;
  target?: TargetInfo;
}

interface Reply {
  pairs: TextPair[];
  transit: boolean;
  nsg: Stage;
}

export class LoginMachine {
  private st = LoginState.Start;
  private readonly text = new TextAccumulator();
  private first?: { isid: number; tsih: number; cid: number; versionMax: number; versionMin: number; csg: Stage };
  private identity?: Identity;
  private chap?: ChapAuthenticator;
  private negotiator?: OperationalNegotiator;
  /** TargetPortalGroupTag/TargetAlias go in the first response that carries text. */
  private targetInfoSent = false;

  constructor(private readonly env: LoginEnvironment) {}

  get state(): LoginState {
    return this.st;
  }

  handle(req: LoginRequest): LoginStep {
    try {
      return this.transition(req);
    } catch (e) {
      if (!(e instanceof LoginFailure)) throw e;
      this.st = LoginState.Failed;
      this.text.reset();
      log.info('iSCSI login rejected', {
        initiator: this.identity?.initiatorName,
        target: this.identity?.targetName,
        isid: req.isid.toString(16),
        status: `${hex2(e.status.statusClass)}${hex2(e.status.statusDetail)}`,
        reason: e.message,
      });
      return { response: this.response(req, e.status, { pairs: [], transit: false, nsg: Stage.Security }), close: true };
    }
  }

  /** The one transition function: checks the header, gathers the text, then acts on the state. */
  private transition(req: LoginRequest): LoginStep {
    if (this.st === LoginState.FullFeature || this.st === LoginState.Failed) {
      throw new LoginFailure(LoginStatus.InvalidDuringLogin, `login request in state ${LoginState[this.st]}`);
    }
    this.checkHeader(req);

    const acc = this.text.push(req.cont ? Buffer.from(req.data) : req.data, req.cont);
    if (acc.kind === 'overflow') throw new LoginFailure(LoginStatus.InitiatorError, `login text of ${acc.size} bytes exceeds the limit`);
    if (acc.kind === 'partial') {
      // RFC 7143 6.2: each piece of a continued text gets an empty response.
      return { response: this.response(req, LoginStatus.Success, { pairs: [], transit: false, nsg: Stage.Security }) };
    }
    let pairs: TextPair[];
    try {
      pairs = parseText(acc.data);
    } catch (e) {
      if (e instanceof TextError) throw new LoginFailure(LoginStatus.InitiatorError, e.message);
      throw e;
    }

    if (this.st === LoginState.Start) this.startSession(req, pairs);
    else this.checkRedeclaration(pairs);

    let reply: Reply;
    let complete = false;
    switch (this.st) {
      case LoginState.SecurityNegotiation:
      case LoginState.ChapAlgorithm:
      case LoginState.ChapResponse:
      case LoginState.SecurityDone:
        reply = this.security(req, pairs);
        break;
      case LoginState.OperationalNegotiation:
        reply = this.operational(req, pairs);
        break;
      default:
        throw new LoginFailure(LoginStatus.TargetError, `no transition from state ${LoginState[this.st]}`);
    }
    if (reply.transit && reply.nsg === Stage.FullFeature) complete = true;
    else if (reply.transit) this.st = LoginState.OperationalNegotiation;

    if (!this.targetInfoSent && this.identity?.target) {
      this.targetInfoSent = true;
      const info: TextPair[] = [];
      if (this.identity.target.alias) info.push(['TargetAlias', this.identity.target.alias]);
      info.push(['TargetPortalGroupTag', String(this.env.portalGroupTag)]);
      reply.pairs.unshift(...info);
    }
    if (!complete) return { response: this.response(req, LoginStatus.Success, reply) };
    return this.complete(req, reply);
  }

  private checkHeader(req: LoginRequest): void {
    const opcode = req.opcode as number;
    if (opcode !== Opcode.LoginRequest) throw new LoginFailure(LoginStatus.InvalidDuringLogin, `opcode 0x${opcode.toString(16)} during login`);
    if (!this.first) {
      if (req.versionMin > VERSION || req.versionMax < req.versionMin) {
        throw new LoginFailure(LoginStatus.UnsupportedVersion, `versions ${req.versionMin}..${req.versionMax}, we support ${VERSION}`);
      }
      this.first = { isid: req.isid, tsih: req.tsih, cid: req.cid, versionMax: req.versionMax, versionMin: req.versionMin, csg: req.csg };
    } else {
      const f = this.first;
      if (req.isid !== f.isid || req.tsih !== f.tsih || req.cid !== f.cid) {
        throw new LoginFailure(
          LoginStatus.InitiatorError,
          `ISID/TSIH/CID changed during login: ${f.isid.toString(16)}/${f.tsih}/${f.cid} -> ${req.isid.toString(16)}/${req.tsih}/${req.cid}`,
        );
      }
      if (req.versionMax !== f.versionMax || req.versionMin !== f.versionMin) {
        throw new LoginFailure(LoginStatus.InitiatorError, 'VersionMax/VersionMin changed during login');
      }
    }
    if (req.transit && req.cont) throw new LoginFailure(LoginStatus.InitiatorError, 'T and C bits both set');
    const csg = req.csg as number;
    if (csg !== Stage.Security && csg !== Stage.Operational) throw new LoginFailure(LoginStatus.InitiatorError, `CSG ${csg} is not a login stage`);
    const expected = this.expectedStage();
    if (expected !== undefined && csg !== expected) {
      throw new LoginFailure(LoginStatus.InitiatorError, `CSG ${csg} but the login is in stage ${expected}`);
    }
    if (req.transit) {
      const nsg = req.nsg as number;
      if ((nsg !== Stage.Operational && nsg !== Stage.FullFeature) || nsg <= csg) {
        throw new LoginFailure(LoginStatus.InitiatorError, `transit from stage ${csg} to ${nsg}`);
      }
    }
  }

  private expectedStage(): Stage | undefined {
    switch (this.st) {
      case LoginState.Start:
        // Pieces of a continued first request stay in its stage.
        return this.first?.csg;
      case LoginState.OperationalNegotiation:
        return Stage.Operational;
      default:
        return Stage.Security;
    }
  }

  /** First complete text: who is logging in to what, and whether they may. */
  private startSession(req: LoginRequest, pairs: readonly TextPair[]): void {
    const keys = new Map(pairs);
    const initiatorName = keys.get('InitiatorName');
    if (!initiatorName) throw new LoginFailure(LoginStatus.MissingParameter, 'InitiatorName missing from the first login request');
    const sessionType = keys.get('SessionType') ?? 'Normal';
    if (sessionType !== 'Normal' && sessionType !== 'Discovery') {
      throw new LoginFailure(LoginStatus.SessionTypeNotSupported, `SessionType=${sessionType}`);
    }
    const identity: Identity = { sessionType, initiatorName };
    const alias = keys.get('InitiatorAlias');
    if (alias !== undefined) identity.initiatorAlias = alias;
    if (sessionType === 'Normal') {
      const targetName = keys.get('TargetName');
      if (!targetName) throw new LoginFailure(LoginStatus.MissingParameter, 'TargetName missing from a normal session login');
      const target = this.env.target(targetName);
      if (!target) throw new LoginFailure(LoginStatus.NotFound, `no target ${targetName}`);
      identity.targetName = targetName;
      identity.target = target;
      this.identity = identity;
      if (!initiatorAllowed(target, initiatorName)) {
        throw new LoginFailure(LoginStatus.AuthorizationFailure, `initiator ${initiatorName} not allowed on ${targetName}`);
      }
    } else {
      this.identity = identity;
    }
    this.negotiator = new OperationalNegotiator(this.env.limits, sessionType, req.tsih === 0);
    if (req.csg === Stage.Security) {
      this.st = LoginState.SecurityNegotiation;
    } else {
      // Skipping the security stage is only possible when no authentication is required.
      if (this.requiredAuth()) throw new LoginFailure(LoginStatus.AuthenticationFailure, 'CHAP required but the initiator skipped the security stage');
      this.st = LoginState.OperationalNegotiation;
    }
  }

  /** Identity keys may be repeated (libiscsi does), but never changed. */
  private checkRedeclaration(pairs: readonly TextPair[]): void {
    const id = this.identity as Identity;
    const current: Record<string, string | undefined> = {
      InitiatorName: id.initiatorName,
      InitiatorAlias: id.initiatorAlias,
      TargetName: id.sessionType === 'Normal' ? id.targetName : undefined,
      SessionType: id.sessionType,
    };
    for (const [k, v] of pairs) {
      if (!IDENTITY_KEYS.has(k)) continue;
      const was = current[k];
      if (was === undefined && k === 'TargetName' && id.sessionType === 'Discovery') continue;
      if (was !== v) throw new LoginFailure(LoginStatus.InitiatorError, `${k} redeclared as ${JSON.stringify(v)} (was ${JSON.stringify(was)})`);
    }
  }

  private requiredAuth(): TargetAuth | undefined {
    const id = this.identity as Identity;
    return id.sessionType === 'Normal' ? id.target?.chap : this.env.discoveryAuth?.chap;
  }

  private mutualAuth(): TargetAuth | undefined {
    const id = this.identity as Identity;
    return id.sessionType === 'Normal' ? id.target?.mutualChap : this.env.discoveryAuth?.mutualChap;
  }

  private security(req: LoginRequest, pairs: readonly TextPair[]): Reply {
    const out: TextPair[] = [];
    const sec = new Map<string, string>();
    for (const [k, v] of pairs) {
      if (IDENTITY_KEYS.has(k)) continue;
      if (SECURITY_KEYS.has(k)) {
        sec.set(k, v);
        continue;
      }
      if (keyDef(k)) throw new LoginFailure(LoginStatus.InitiatorError, `${k} not allowed in the security stage`);
      out.push([k, 'NotUnderstood']);
    }

    switch (this.st) {
      case LoginState.SecurityNegotiation: {
        const offer = sec.get('AuthMethod');
        if (offer === undefined) {
          if (sec.size) throw new LoginFailure(LoginStatus.AuthenticationFailure, 'CHAP keys before AuthMethod was agreed');
          break;
        }
        out.push(['AuthMethod', this.chooseAuthMethod(offer)]);
        if (sec.size > 1) throw new LoginFailure(LoginStatus.AuthenticationFailure, 'CHAP keys sent with the AuthMethod offer');
        break;
      }
      case LoginState.ChapAlgorithm: {
        if (sec.has('AuthMethod')) throw new LoginFailure(LoginStatus.InitiatorError, 'AuthMethod negotiated twice');
        if (sec.size !== 1 || !sec.has('CHAP_A')) throw new LoginFailure(LoginStatus.AuthenticationFailure, 'expected CHAP_A alone');
        const step = (this.chap as ChapAuthenticator).challenge(sec.get('CHAP_A'));
        if (!step.ok) throw new LoginFailure(LoginStatus.AuthenticationFailure, step.reason);
        out.push(...step.pairs);
        this.st = LoginState.ChapResponse;
        break;
      }
      case LoginState.ChapResponse: {
        if (sec.has('AuthMethod') || sec.has('CHAP_A')) throw new LoginFailure(LoginStatus.AuthenticationFailure, 'AuthMethod/CHAP_A repeated during CHAP');
        const step = (this.chap as ChapAuthenticator).verify(sec);
        if (!step.ok) throw new LoginFailure(LoginStatus.AuthenticationFailure, step.reason);
        out.push(...step.pairs);
        this.st = LoginState.SecurityDone;
        break;
      }
      case LoginState.SecurityDone:
        if (sec.size) throw new LoginFailure(LoginStatus.InitiatorError, `security keys after authentication: ${[...sec.keys()].join(',')}`);
        break;
      default:
        break;
    }

    if (!req.transit) return { pairs: out, transit: false, nsg: Stage.Security };
    if (this.st === LoginState.SecurityNegotiation) {
      // Leaving without ever offering AuthMethod means AuthMethod=None.
      if (this.requiredAuth()) throw new LoginFailure(LoginStatus.AuthenticationFailure, 'CHAP required but no AuthMethod offered');
      this.st = LoginState.SecurityDone;
    }
    // Mid-CHAP the target stays in the security stage (T=0) until authentication ends.
    if (this.st !== LoginState.SecurityDone) return { pairs: out, transit: false, nsg: Stage.Security };
    let nsg = req.nsg;
    if (nsg === Stage.FullFeature && !this.canSkipOperational()) nsg = Stage.Operational;
    return { pairs: out, transit: true, nsg };
  }

  /** Target's pick from the initiator's AuthMethod list (the RFC 7143 list rule, bounded by our configuration). */
  private chooseAuthMethod(offer: string): string {
    const methods = offer.split(',');
    const required = this.requiredAuth();
    if (required) {
      if (!methods.includes('CHAP')) throw new LoginFailure(LoginStatus.AuthenticationFailure, `CHAP required, initiator offered AuthMethod=${offer}`);
      this.chap = new ChapAuthenticator(required, this.mutualAuth());
      this.st = LoginState.ChapAlgorithm;
      return 'CHAP';
    }
    if (!methods.includes('None')) {
      throw new LoginFailure(LoginStatus.AuthenticationFailure, `no CHAP credentials configured, initiator offered AuthMethod=${offer}`);
    }
    this.st = LoginState.SecurityDone;
    return 'None';
  }

  /**
   * Going straight from security to full feature skips our declarations and
   * offers; allow it only when the RFC defaults are fine for us.
   */
  private canSkipOperational(): boolean {
    const n = this.negotiator as OperationalNegotiator;
    return n.declarationsDone && !n.needsOffers;
  }

  private operational(req: LoginRequest, pairs: readonly TextPair[]): Reply {
    const n = this.negotiator as OperationalNegotiator;
    for (const [k] of pairs) {
      if (SECURITY_KEYS.has(k)) throw new LoginFailure(LoginStatus.InitiatorError, `${k} not allowed in the operational stage`);
    }
    const step = n.negotiate(pairs);
    if (!step.ok) throw new LoginFailure(LoginStatus.InitiatorError, step.reason);
    const out = step.responses;
    out.push(...n.declarations());
    if (!req.transit) return { pairs: out, transit: false, nsg: Stage.Security };
    const unanswered = n.unansweredOffers;
    if (unanswered.length) throw new LoginFailure(LoginStatus.InitiatorError, `initiator left our offers unanswered: ${unanswered.join(',')}`);
    const offers = n.targetOffers();
    if (offers.length) {
      // The initiator must answer before we can leave the stage.
      out.push(...offers);
      return { pairs: out, transit: false, nsg: Stage.Security };
    }
    return { pairs: out, transit: true, nsg: Stage.FullFeature };
  }

  private complete(req: LoginRequest, reply: Reply): LoginStep {
    const id = this.identity as Identity;
    const first = this.first as { isid: number; tsih: number; cid: number };
    const admitted = this.env.admit({
      sessionType: id.sessionType,
      initiatorName: id.initiatorName,
      ...(id.targetName !== undefined ? { targetName: id.targetName } : {}),
      isid: first.isid,
      tsih: first.tsih,
      cid: first.cid,
    });
    if (!admitted.ok) {
      throw new LoginFailure(
        { statusClass: admitted.statusClass, statusDetail: admitted.statusDetail },
        `session refused for ${id.initiatorName} isid ${first.isid.toString(16)} tsih ${first.tsih}`,
      );
    }
    this.st = LoginState.FullFeature;
    const params = (this.negotiator as OperationalNegotiator).result(id);
    const outcome: LoginOutcome = { params, tsih: admitted.tsih, isid: first.isid, cid: first.cid };
    if (id.target) outcome.target = id.target;
    const response = this.response(req, LoginStatus.Success, reply);
    response.tsih = admitted.tsih;
    return { response, outcome };
  }

  private response(req: LoginRequest, status: LoginStatusCode, reply: Reply): LoginResponse {
    return {
      opcode: Opcode.LoginResponse,
      immediate: false,
      ahs: [],
      data: reply.pairs.length ? serializeText(reply.pairs) : Buffer.alloc(0),
      transit: reply.transit,
      cont: false,
      csg: req.csg,
      // NSG is reserved (0) unless T is set.
      nsg: reply.transit ? reply.nsg : Stage.Security,
      versionMax: VERSION,
      versionActive: VERSION,
      isid: req.isid,
      tsih: req.tsih,
      itt: req.itt,
      statSN: 0,
      expCmdSN: 0,
      maxCmdSN: 0,
      statusClass: status.statusClass,
      statusDetail: status.statusDetail,
    };
  }
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}
