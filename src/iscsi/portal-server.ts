// An iSCSI portal: a TCP listener whose connections log in to the targets of
// a TargetRegistry. Owns the session table (TSIH allocation, session
// reinstatement by ISID) shared by all its connections.
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { log } from '../util/log.js';
import { makeNexus } from '../scsi/types.js';
import { Connection, type SessionFactory } from './connection.js';
import type { NegotiatedParams } from './login/negotiation.js';
import type { AdmitRequest, AdmitResult, LoginEnvironment, LoginOutcome } from './login/login-machine.js';
import { Session, type SessionDirectory } from './session.js';
import { defaultIscsiSettings, type IscsiSettings } from './settings.js';
import type { TargetRegistry } from './target-registry.js';

export interface PortalOptions {
  host: string;
  port: number;
  /** Target portal group tag of this portal (also its relative target port id and ALUA group). */
  tpgt?: number;
  settings?: Partial<IscsiSettings>;
}

export class IscsiPortalServer implements SessionDirectory, SessionFactory {
  readonly settings: IscsiSettings;
  readonly tpgt: number;
  private server: Server | null = null;
  private readonly sessions = new Set<Session>();
  private readonly connections = new Set<Connection>();
  private readonly sockets = new Set<Socket>();
  private nextTsih = 1;
  /** Session-wide parameters of sessions being restarted on a new connection, by TSIH. */
  private readonly carriedOver = new Map<number, NegotiatedParams>();

  constructor(
    readonly registry: TargetRegistry,
    private readonly opts: PortalOptions,
  ) {
    this.settings = { ...defaultIscsiSettings, ...opts.settings };
    this.tpgt = opts.tpgt ?? 1;
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
    const nexus = target ? makeNexus(p.initiatorName, outcome.isid, target.info.name, this.tpgt) : undefined;
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

  async close(): Promise<void> {
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
