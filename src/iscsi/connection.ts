// One iSCSI TCP connection: the socket edge. Moves bytes through the pure
// codec, runs the login state machine, then hands full-feature PDUs to the
// session. Owns StatSN, digests, the login timeout and NOP-In keepalive.
import type { Socket } from 'node:net';
import { log } from '../util/log.js';
import { LoginMachine, type LoginEnvironment, type LoginOutcome } from './login/login-machine.js';
import { encodeHeader, encodePdu } from './pdu/encode.js';
import { ZERO_PADS, padLength } from './pdu/layout.js';
import { PduParser } from './pdu/parser.js';
import { Opcode, RESERVED_TAG, RejectReason, type InitiatorPdu, type TargetPdu } from './pdu/types.js';
import { snAdd } from './serial.js';
import { rejectPdu, type Session, type SessionConnection } from './session/session.js';
import type { IscsiSettings } from './settings.js';

const enum ConnState {
  Login,
  FullFeature,
  Closed,
}

/** Creates (or refuses) the session once login completes; implemented by the portal server. */
export interface SessionFactory {
  createSession(outcome: LoginOutcome, conn: Connection, cmdSN: number): Session;
}

let nextConnId = 1;

export class Connection implements SessionConnection {
  readonly id: string;
  private state = ConnState.Login;
  private readonly parser: PduParser;
  private readonly login: LoginMachine;
  private session: Session | null = null;
  private statSN = 0;
  private digests = { header: false, data: false };
  private corked = false;
  private loginTimer: NodeJS.Timeout | null;
  private nopTimer: NodeJS.Timeout | null = null;
  private lastRx = Date.now();
  private pingOutstanding = false;
  private pingTtt = 0x7fff0000;

  constructor(
    private readonly socket: Socket,
    private readonly settings: IscsiSettings,
    loginEnv: LoginEnvironment,
    private readonly factory: SessionFactory,
  ) {
    this.id = `c${nextConnId++}:${socket.remoteAddress}:${socket.remotePort}`;
    this.parser = new PduParser({ headerDigest: false, dataDigest: false, maxDataSegmentLength: settings.maxRecvDataSegmentLength });
    this.login = new LoginMachine(loginEnv);
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => log.debug('connection error', { conn: this.id, err: err.message }));
    // The session ends as soon as the initiator's FIN arrives, not when the socket
    // finally closes: a command on another connection in the same poll round must
    // already see the I_T nexus gone (e.g. its SPC-2 reservation released).
    socket.on('end', () => this.close('initiator closed the connection'));
    socket.on('close', () => this.onClosed('socket closed'));
    this.loginTimer = setTimeout(() => this.close('login timeout'), settings.loginTimeoutSec * 1000);
    this.loginTimer.unref();
  }

  private onData(chunk: Buffer): void {
    if (this.state === ConnState.Closed) return;
    this.lastRx = Date.now();
    this.pingOutstanding = false;
    this.parser.push(chunk);
    for (;;) {
      if (this.isClosed()) return;
      const r = this.parser.next();
      if (!r) return;
      if (!r.ok) {
        if (r.fatal || this.state === ConnState.Login) {
          log.warn('closing connection on malformed PDU', { conn: this.id, reason: r.message });
          this.close(r.message);
          return;
        }
        if (r.header) this.send(rejectPdu(r.reason, r.header));
        if (r.reason === RejectReason.DataDigestError) {
          // ERL 0 cannot recover the lost payload: the session is ended (the initiator reconnects).
          this.close('data digest error');
          return;
        }
        continue;
      }
      this.onPdu(r.pdu as InitiatorPdu, r.header);
    }
  }

  private isClosed(): boolean {
    return this.state === ConnState.Closed;
  }

  private onPdu(pdu: InitiatorPdu, header: Buffer): void {
    if (this.state === ConnState.Login) {
      if (pdu.opcode !== Opcode.LoginRequest) {
        log.warn('non-login PDU during login', { conn: this.id, opcode: pdu.opcode });
        this.close('protocol error during login');
        return;
      }
      let step;
      try {
        step = this.login.handle(pdu);
      } catch (e) {
        log.error('login machine failed', { conn: this.id, err: (e as Error).message });
        this.close('login error');
        return;
      }
      const resp = step.response;
      if (this.statSN === 0 && resp.statSN === 0) this.statSN = pdu.expStatSN >>> 0;
      resp.statSN = this.statSN;
      this.statSN = snAdd(this.statSN, 1);
      resp.expCmdSN = pdu.cmdSN;
      resp.maxCmdSN = snAdd(pdu.cmdSN, this.settings.queueDepth - 1);
      if (step.outcome) {
        let session: Session;
        try {
          session = this.factory.createSession(step.outcome, this, pdu.cmdSN);
        } catch (e) {
          log.error('session creation failed', { conn: this.id, err: (e as Error).message });
          this.close('session creation failed');
          return;
        }
        this.writePdu(resp);
        this.session = session;
        this.state = ConnState.FullFeature;
        if (this.loginTimer) clearTimeout(this.loginTimer);
        this.loginTimer = null;
        const p = step.outcome.params;
        this.digests = { header: p.headerDigest, data: p.dataDigest };
        this.parser.setDigests(p.headerDigest, p.dataDigest);
        this.parser.setMaxDataSegmentLength(p.targetMaxRecvDataSegmentLength);
        // Write data goes straight into its command's buffer: one copy instead of two.
        this.parser.setDataDestination((bhs, length) => this.session?.dataOutDestination(bhs, length));
        this.startKeepalive();
        log.info('login complete', {
          conn: this.id,
          initiator: p.initiatorName,
          target: p.targetName,
          type: p.sessionType,
          tsih: step.outcome.tsih,
          digests: `${p.headerDigest ? 'H' : '-'}${p.dataDigest ? 'D' : '-'}`,
        });
        return;
      }
      this.writePdu(resp);
      if (step.close) this.close('login failed');
      return;
    }
    if (this.session) this.session.receive(pdu, header);
  }

  private startKeepalive(): void {
    const interval = this.settings.nopIntervalSec * 1000;
    if (interval <= 0) return;
    this.nopTimer = setInterval(() => {
      const idle = Date.now() - this.lastRx;
      if (this.pingOutstanding && idle >= this.settings.nopTimeoutSec * 1000) {
        log.warn('initiator stopped answering NOP-In: closing connection', { conn: this.id, idleMs: idle });
        this.close('nop timeout');
        return;
      }
      if (!this.pingOutstanding && idle >= interval) {
        this.pingOutstanding = true;
        this.pingTtt = this.pingTtt >= 0x7fffffff ? 0x7fff0000 : this.pingTtt + 1;
        this.send({
          opcode: Opcode.NopIn,
          immediate: false,
          ahs: [],
          data: Buffer.alloc(0),
          lun: 0n,
          itt: RESERVED_TAG,
          ttt: this.pingTtt,
          statSN: 0,
          expCmdSN: 0,
          maxCmdSN: 0,
        });
      }
    }, Math.min(interval, 1000));
    this.nopTimer.unref();
  }

  /** Queue a full-feature PDU: fills StatSN and the CmdSN window. */
  send(pdu: TargetPdu): void {
    if (this.state === ConnState.Closed) return;
    const session = this.session;
    switch (pdu.opcode) {
      case Opcode.DataIn:
        if (pdu.hasStatus) {
          pdu.statSN = this.statSN;
          this.statSN = snAdd(this.statSN, 1);
        }
        break;
      case Opcode.R2T:
        pdu.statSN = this.statSN;
        break;
      case Opcode.NopIn:
        pdu.statSN = this.statSN;
        if (pdu.itt !== RESERVED_TAG) this.statSN = snAdd(this.statSN, 1);
        break;
      default:
        (pdu as { statSN: number }).statSN = this.statSN;
        this.statSN = snAdd(this.statSN, 1);
    }
    if (session !== null && 'expCmdSN' in pdu) session.fillWindow(pdu);
    this.writePdu(pdu);
  }

  private writePdu(pdu: TargetPdu): void {
    const s = this.socket;
    if (s.destroyed) return;
    if (!this.corked) {
      // Gather every PDU produced in this tick into one writev.
      this.corked = true;
      s.cork();
      process.nextTick(() => {
        this.corked = false;
        s.uncork();
      });
    }
    if (this.digests.header || this.digests.data) {
      for (const b of encodePdu(pdu, this.digests)) s.write(b);
      return;
    }
    // No digests: header, data, padding written as they are, without the iovec array.
    s.write(encodeHeader(pdu));
    const data = pdu.data;
    if (data.length === 0) return;
    s.write(data);
    const pad = padLength(data.length);
    if (pad !== 0) s.write(ZERO_PADS[pad]!);
  }

  close(reason: string): void {
    if (this.state === ConnState.Closed) return;
    this.state = ConnState.Closed;
    log.debug('closing connection', { conn: this.id, reason });
    // end() flushes what is queued (the last response) before FIN.
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
    this.socket.end();
    const t = setTimeout(() => this.socket.destroy(), 2000);
    t.unref();
    this.onClosed(reason);
  }

  private onClosed(reason: string): void {
    this.state = ConnState.Closed;
    if (this.loginTimer) clearTimeout(this.loginTimer);
    if (this.nopTimer) clearInterval(this.nopTimer);
    this.loginTimer = null;
    this.nopTimer = null;
    const s = this.session;
    this.session = null;
    if (s && !s.isClosed) s.connectionLost(reason);
    if (!this.socket.destroyed && reason === 'socket closed') this.socket.destroy();
  }
}
