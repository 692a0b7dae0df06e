// An iSCSI portal: a TCP listener whose connections log in to the targets of
// a TargetRegistry. Owns the session table (TSIH allocation, session
// reinstatement by ISID) shared by all its connections.
//
// Graceful stop (drain): no new connections or logins (a login that is
// already under way is refused with 03/01, service unavailable); each
// session's commands in flight complete and are answered; once a session
// has none it gets an Async Message asking its initiator to log out
// (AsyncEvent 1, RFC 7143 11.9.1), and is closed when it has logged out,
// after the grace it was given, or at the drain deadline, whichever comes
// first. An initiator that logs out cleanly sees a planned logout rather
// than a dropped connection and fails over to another path at once; one
// that ignores the request loses nothing either, since it has no command
// outstanding when its connection closes (unless it keeps sending new ones
// until the deadline).
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { registerDrain } from '../util/graceful.js';
import { log } from '../util/log.js';
import { makeNexus } from '../scsi/port.js';
import { Connection, type SessionFactory } from './connection.js';
import type { NegotiatedParams } from './login/negotiation.js';
import type { AdmitRequest, AdmitResult, LoginEnvironment, LoginOutcome } from './login/login-machine.js';
import { Session, type SessionDirectory } from './session/session.js';
import { defaultIscsiSettings, type IscsiSettings } from './settings.js';
import type { TargetRegistry } from './target-registry.js';

export interface PortalOptions {
  host: string;
  port: number;
  /** Target portal group tag of this portal (also its relative target port id and ALUA group unless those are given). */
  tpgt?: number;
  /** Relative target port id of this portal (VPD 0x83, REPORT TARGET PORT GROUPS); default tpgt. */
  relativeTargetPortId?: number;
  /** Target port group (ALUA) this portal belongs to; default tpgt. */
  targetPortGroup?: number;
  settings?: Partial<IscsiSettings>;
}

/** How long a drain waits for commands in flight, at most (default). */
export const DEFAULT_DRAIN_TIMEOUT_MS = 10_000;
/** How long an initiator asked to log out is given (Parameter3, whole seconds). */
export const DEFAULT_LOGOUT_GRACE_MS = 2_000;

export interface DrainOptions {
  timeoutMs?: number;
  logoutGraceMs?: number;
}

export interface DrainResult {
  /** Normal sessions open when the drain started. */
  sessions: number;
  /** Of those, sessions that logged out (or went away) by themselves. */
  loggedOut: number;
  /** Commands still outstanding on sessions closed at the deadline (abandoned). */
  abandonedTasks: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class IscsiPortalServer implements SessionDirectory, SessionFactory {
  readonly settings: IscsiSettings;
  #tpgt: number;
  #relativeTargetPortId: number;
  #targetPortGroup: number;
  private server: Server | null = null;
  private readonly sessions = new Set<Session>();
  private readonly connections = new Set<Connection>();
  private readonly sockets = new Set<Socket>();
  private nextTsih = 1;
  private draining: Promise<DrainResult> | null = null;
  private unregisterDrain: (() => void) | null = null;
  /** Session-wide parameters of sessions being restarted on a new connection, by TSIH. */
  private readonly carriedOver = new Map<number, NegotiatedParams>();

  constructor(
    readonly registry: TargetRegistry,
    private readonly opts: PortalOptions,
  ) {
    this.settings = { ...defaultIscsiSettings, ...opts.settings };
    this.#tpgt = opts.tpgt ?? 1;
    this.#relativeTargetPortId = opts.relativeTargetPortId ?? this.#tpgt;
    this.#targetPortGroup = opts.targetPortGroup ?? this.#tpgt;
  }

  get tpgt(): number {
    return this.#tpgt;
  }

  /**
   * Gives the portal another target port identity (an agent learns its own
   * from the controller after it has started listening). Logins from now on
   * use it; sessions already open keep the nexus they logged in with.
   */
  setPortIdentity(id: { tpgt: number; relativeTargetPortId: number; targetPortGroup: number }): void {
    this.#tpgt = id.tpgt;
    this.#relativeTargetPortId = id.relativeTargetPortId;
    this.#targetPortGroup = id.targetPortGroup;
  }

  async listen(): Promise<AddressInfo> {
    const server = createServer((socket) => this.accept(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port, this.opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => log.error('portal error', { err: err.message }));
    const addr = server.address() as AddressInfo;
    this.registry.addPortal({ address: this.opts.host, port: addr.port, tpgt: this.tpgt });
    // SIGTERM/SIGINT drains every listening portal before the daemon stops.
    this.unregisterDrain = registerDrain(async () => {
      await this.drain();
    });
    log.info('iSCSI portal listening', { host: this.opts.host, port: addr.port, tpgt: this.tpgt });
    return addr;
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    const conn = new Connection(socket, this.settings, this.loginEnvironment(), this);
    this.connections.add(conn);
    socket.once('close', () => this.connections.delete(conn));
  }

  private loginEnvironment(): LoginEnvironment {
    const s = this.settings;
    return {
      target: (name) => this.registry.get(name)?.info,
      targets: () => this.registry.all().map((t) => t.info),
      discoveryAuth: this.registry.discoveryAuth,
      portalGroupTag: this.tpgt,
      limits: {
        maxRecvDataSegmentLength: s.maxRecvDataSegmentLength,
        maxBurstLength: s.maxBurstLength,
        firstBurstLength: s.firstBurstLength,
        maxOutstandingR2T: s.maxOutstandingR2T,
        immediateData: s.immediateData,
        initialR2T: s.initialR2T,
        defaultTime2Wait: s.defaultTime2Wait,
        defaultTime2Retain: s.defaultTime2Retain,
      },
      admit: (req) => this.admit(req),
    };
  }

  private allocTsih(): number {
    for (;;) {
      const t = this.nextTsih;
      this.nextTsih = this.nextTsih >= 0xffff ? 1 : this.nextTsih + 1;
      let used = false;
      for (const s of this.sessions) if (s.tsih === t) used = true;
      if (!used) return t;
    }
  }

  private admit(req: AdmitRequest): AdmitResult {
    // Status 03/01, service unavailable: the target is going down.
    if (this.draining !== null) return { ok: false, statusClass: 0x03, statusDetail: 0x01 };
    if (req.sessionType === 'Discovery') return { ok: true, tsih: this.allocTsih() };
    const same = [...this.sessions].find(
      (s) => s.type === 'Normal' && s.isid === req.isid && s.params.initiatorName === req.initiatorName && s.targetName === req.targetName,
    );
    if (req.tsih === 0) {
      if (same) {
        // Session reinstatement (RFC 7143 6.3.5): the old session ends; the I_T nexus
        // stays the same, so its unit attentions and reservations carry over.
        log.info('session reinstatement', { initiator: req.initiatorName, target: req.targetName, oldTsih: same.tsih });
        same.terminate('reinstated', false);
      }
      return { ok: true, tsih: this.allocTsih() };
    }
    if (same && same.tsih === req.tsih) {
      // With MaxConnections=1 and ERL 0, a login naming the session restarts it on the
      // new connection. Leading-only keys were Irrelevant in this login, so the session-wide
      // values come from the old session.
      this.carriedOver.set(req.tsih, same.params);
      same.terminate('connection reinstatement', false);
      return { ok: true, tsih: req.tsih };
    }
    return { ok: false, statusClass: 0x02, statusDetail: 0x0a };
  }

  createSession(outcome: LoginOutcome, conn: Connection, cmdSN: number): Session {
    const old = this.carriedOver.get(outcome.tsih);
    this.carriedOver.delete(outcome.tsih);
    const p = old ? withSessionParams(outcome.params, old) : outcome.params;
    const target = outcome.target ? this.registry.get(outcome.target.name) : undefined;
    if (p.sessionType === 'Normal' && !target) throw new Error(`target ${outcome.target?.name ?? '?'} vanished during login`);
    const nexus = target
      ? makeNexus(p.initiatorName, outcome.isid, target.info.name, this.#tpgt, this.#relativeTargetPortId, this.#targetPortGroup)
      : undefined;
    const session = new Session({
      tsih: outcome.tsih,
      isid: outcome.isid,
      params: p,
      target: target?.info,
      port: target?.port,
      nexus,
      settings: this.settings,
      loginEnv: this.loginEnvironment(),
      directory: this,
      cmdSN,
      onClosed: (s) => this.sessions.delete(s),
    });
    session.attach(conn);
    this.sessions.add(session);
    return session;
  }

  sessionsOfTarget(targetName: string): Session[] {
    return [...this.sessions].filter((s) => s.targetName === targetName);
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /**
   * Graceful stop of every session (see the top of this file); resolves when
   * none is left, within `timeoutMs` plus a little. The listener stops at
   * once. Calling it again returns the same drain; close() afterwards
   * releases what is left.
   */
  drain(opts: DrainOptions = {}): Promise<DrainResult> {
    this.draining ??= this.runDrain(opts.timeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS, opts.logoutGraceMs ?? DEFAULT_LOGOUT_GRACE_MS);
    return this.draining;
  }

  private async runDrain(timeoutMs: number, graceMs: number): Promise<DrainResult> {
    // No new connections; the close callback (all connections gone) is not awaited.
    this.server?.close();
    const deadline = Date.now() + timeoutMs;
    const normal = [...this.sessions].filter((s) => s.type === 'Normal');
    for (const s of this.sessions) if (s.type !== 'Normal') s.terminate('portal draining', true);
    log.info('iSCSI portal draining', { port: this.opts.port, tpgt: this.tpgt, sessions: normal.length, timeoutMs });
    const outcomes = await Promise.all(normal.map((s) => this.drainSession(s, deadline, graceMs)));
    const result: DrainResult = {
      sessions: normal.length,
      loggedOut: outcomes.filter((o) => o === 'logged out').length,
      abandonedTasks: outcomes.reduce<number>((n, o) => n + (typeof o === 'number' ? o : 0), 0),
    };
    // Connections still in login (they would be refused anyway).
    for (const sock of this.sockets) sock.destroy();
    if (result.abandonedTasks > 0) log.warn('iSCSI portal drained with commands still outstanding', { tpgt: this.tpgt, ...result });
    else log.info('iSCSI portal drained', { tpgt: this.tpgt, ...result });
    return result;
  }

  /** 'logged out', 'closed' (after the grace, nothing outstanding), or the number of commands abandoned at the deadline. */
  private async drainSession(s: Session, deadline: number, graceMs: number): Promise<'logged out' | 'closed' | number> {
    let askedAt = 0;
    // Polled: a drain happens once per process lifetime, and the session needs no hook for it.
    while (!s.isClosed && Date.now() < deadline) {
      if (s.outstandingTasks === 0) {
        if (askedAt === 0) {
          askedAt = Date.now();
          s.requestLogout(Math.min(graceMs, deadline - askedAt) / 1000);
        } else if (Date.now() - askedAt >= graceMs) {
          break;
        }
      }
      await sleep(20);
    }
    if (s.isClosed) return 'logged out';
    const left = s.outstandingTasks;
    s.terminate(left > 0 ? 'portal drain deadline' : 'portal drained', true);
    return left > 0 ? left : 'closed';
  }

  get isDraining(): boolean {
    return this.draining !== null;
  }

  async close(): Promise<void> {
    this.unregisterDrain?.();
    this.unregisterDrain = null;
    const server = this.server;
    this.server = null;
    for (const s of [...this.sessions]) s.terminate('portal shutting down', true);
    for (const sock of this.sockets) sock.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** Connection-scoped values from `conn`, session-scoped ones from `session` (RFC 7143 13: key scopes). */
function withSessionParams(conn: NegotiatedParams, session: NegotiatedParams): NegotiatedParams {
  return {
    ...session,
    headerDigest: conn.headerDigest,
    dataDigest: conn.dataDigest,
    initiatorMaxRecvDataSegmentLength: conn.initiatorMaxRecvDataSegmentLength,
    targetMaxRecvDataSegmentLength: conn.targetMaxRecvDataSegmentLength,
  };
}
