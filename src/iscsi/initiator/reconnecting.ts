// A ScsiTransport that outlives connections: when the session's connection
// is lost it logs in again with bounded exponential backoff, reinstating the
// session (same ISID and initiator name, TSIH 0, so the target drops the old
// session's tasks first), and runs again the commands the lost connection
// took with it. A command waits for a session at most holdMs (or until its
// own deadline, when the caller gives one), then fails as 'unreachable'; the
// caller (the agent) holds I/O no longer than that.

import { log } from '../../util/log.js';
import { connectSession, randomIsid, type ConnectOptions } from './connect.js';
import { ConnectionLostError, IscsiInitiatorSession } from './session.js';
import { TransportError, type ScsiRequest, type ScsiResult, type ScsiTransport, type TransportState } from './transport.js';

export interface ReconnectingOptions extends ConnectOptions {
  /** How long a command may wait for a session to come back (default 30 s). */
  holdMs?: number;
  /** First delay between login attempts (default 100 ms), doubling... */
  backoffInitialMs?: number;
  /** ...up to this (default 2 s). */
  backoffMaxMs?: number;
  /** How to open a session (tests inject one; default connectSession). */
  connectFn?: (opts: ConnectOptions) => Promise<IscsiInitiatorSession>;
}

export type StateListener = (state: TransportState, cause?: TransportError) => void;

interface Waiter {
  resolve: () => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class ReconnectingSession implements ScsiTransport {
  private st: TransportState = 'connecting';
  private session: IscsiInitiatorSession | undefined;
  private readonly waiters = new Set<Waiter>();
  private readonly listeners = new Set<StateListener>();
  private readonly isid: number;
  private readonly holdMs: number;
  private readonly connectFn: (opts: ConnectOptions) => Promise<IscsiInitiatorSession>;
  private reconnecting = false;
  private wake: (() => void) | undefined;
  /** Logins since the first one (for tests and diagnostics). */
  reconnects = 0;
  private lastError: TransportError | undefined;
  private everUp = false;

  /** Logs in once (throwing the TransportError if that fails), then keeps the session up. */
  static async connect(opts: ReconnectingOptions): Promise<ReconnectingSession> {
    const r = new ReconnectingSession(opts);
    await r.firstLogin();
    return r;
  }

  /**
   * Starts without waiting: the state is 'connecting' until the first login
   * succeeds, retried with the same backoff as a reconnection (for a portal
   * that may be down when the agent starts). Commands wait up to holdMs.
   */
  static start(opts: ReconnectingOptions): ReconnectingSession {
    const r = new ReconnectingSession(opts);
    void r.reconnectLoop(true);
    return r;
  }

  private constructor(private readonly opts: ReconnectingOptions) {
    this.isid = opts.isid ?? randomIsid();
    this.holdMs = opts.holdMs ?? 30_000;
    this.connectFn = opts.connectFn ?? ((o) => connectSession(o));
  }

  get state(): TransportState {
    return this.st;
  }

  /** The session in use, when up (diagnostics, and the negotiated parameters). */
  get current(): IscsiInitiatorSession | undefined {
    return this.st === 'up' ? this.session : undefined;
  }

  /** Why the last connection or login failed. */
  get lastFailure(): TransportError | undefined {
    return this.lastError;
  }

  /** Called on every change of state ('up', 'down', 'closed'); returns an unsubscribe function. */
  onStateChange(fn: StateListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  execute(req: ScsiRequest): Promise<ScsiResult> {
    // The common case, a session up: straight to it, the loop below only after a lost connection.
    const s = this.session;
    if (this.st === 'up' && s) return s.execute(req).catch((e: unknown) => this.afterLoss(s, e, req));
    return this.held(req);
  }

  /** The command failed on session `s`: lost with its connection, it runs again on the next session. */
  private afterLoss(s: IscsiInitiatorSession, e: unknown, req: ScsiRequest): Promise<ScsiResult> {
    // Anything else is the caller's.
    if (!(e instanceof ConnectionLostError)) return Promise.reject(e);
    this.lastError = e;
    if (s === this.session) this.sessionDown(s, e);
    return this.held(req);
  }

  private async held(req: ScsiRequest): Promise<ScsiResult> {
    let holdUntil: number | undefined;
    for (;;) {
      if (this.st === 'closed') throw new TransportError('closed', `${this.label}: closed`);
      const s = this.session;
      if (this.st === 'up' && s) {
        try {
          return await s.execute(req);
        } catch (e) {
          // Lost with its connection: run it again on the next session. Anything else is the caller's.
          if (!(e instanceof ConnectionLostError)) throw e;
          this.lastError = e;
          if (s === this.session) this.sessionDown(s, e);
        }
      }
      // The caller's deadline counts from when it sent the command: time already spent waiting
      // for an answer on the lost connection is not held again.
      holdUntil ??= req.deadline ?? Date.now() + this.holdMs;
      await this.waitUp(holdUntil, req.deadline !== undefined);
    }
  }

  /** Stops reconnecting, logs out (bounded), fails waiting commands as 'closed'. */
  async close(): Promise<void> {
    if (this.st === 'closed') return;
    this.setState('closed');
    this.wake?.();
    const err = new TransportError('closed', `${this.label}: closed`);
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    this.waiters.clear();
    const s = this.session;
    this.session = undefined;
    if (s) await s.close();
  }

  private get label(): string {
    return `${this.opts.targetName ?? 'discovery'} at ${this.opts.host}:${this.opts.port}`;
  }

  private async firstLogin(): Promise<void> {
    const s = await this.connectFn(this.connectOptions());
    this.install(s);
  }

  private connectOptions(): ConnectOptions {
    // TSIH 0 with the same ISID: a new login reinstates the session the target may still hold.
    return { ...this.opts, isid: this.isid, tsih: 0 };
  }

  private install(s: IscsiInitiatorSession): void {
    if (this.st === 'closed') {
      void s.close();
      return;
    }
    this.session = s;
    s.onDown((err) => this.sessionDown(s, err));
    if (s.state !== 'up') return;
    this.everUp = true;
    this.setState('up');
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.resolve();
    }
    this.waiters.clear();
  }

  private sessionDown(s: IscsiInitiatorSession, err: TransportError): void {
    if (s !== this.session || this.st === 'closed') return;
    this.session = undefined;
    this.lastError = err;
    log.warn('iSCSI session lost; reconnecting', { target: this.label, error: err.message });
    this.setState('down', err);
    void this.reconnectLoop();
  }

  private async reconnectLoop(first = false): Promise<void> {
    if (this.reconnecting) return;
    this.reconnecting = true;
    let delay = this.opts.backoffInitialMs ?? 100;
    const max = this.opts.backoffMaxMs ?? 2000;
    const waiting = (): boolean => this.st === 'down' || this.st === 'connecting';
    try {
      while (waiting()) {
        if (!first) await this.sleep(delay);
        if (!waiting()) return;
        try {
          const s = await this.connectFn(this.connectOptions());
          if (!this.everUp) {
            log.info('iSCSI session up', { target: this.label, tsih: s.tsih });
          } else {
            this.reconnects++;
            log.info('iSCSI session reinstated', { target: this.label, tsih: s.tsih });
          }
          this.install(s);
          return;
        } catch (e) {
          this.lastError = e instanceof TransportError ? e : new TransportError('unreachable', (e as Error).message);
          log.debug('iSCSI reconnect failed', { target: this.label, error: this.lastError.message, nextInMs: Math.min(delay * 2, max) });
        }
        if (first) first = false;
        else delay = Math.min(delay * 2, max);
      }
    } finally {
      this.reconnecting = false;
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.wake = undefined;
        resolve();
      }, ms);
      this.wake = () => {
        clearTimeout(t);
        this.wake = undefined;
        resolve();
      };
    });
  }

  private waitUp(until: number, callerDeadline = false): Promise<void> {
    const left = until - Date.now();
    // Past the caller's deadline it has given up (and reported the command failed): the command
    // must not run again, not even on a new session.
    if (callerDeadline && left <= 0) return Promise.reject(this.unreachable());
    // A new session may already be up (the old one's failure reached us late).
    if (this.st === 'up' && this.session) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.delete(w);
          reject(this.unreachable());
        }, left),
      };
      this.waiters.add(w);
    });
  }

  private unreachable(): TransportError {
    const why = this.lastError ? `: ${this.lastError.message}` : '';
    return new TransportError('unreachable', `${this.label}: no session within the ${this.holdMs} ms hold${why}`);
  }

  private setState(st: TransportState, cause?: TransportError): void {
    if (this.st === st) return;
    this.st = st;
    for (const fn of [...this.listeners]) {
      try {
        fn(st, cause);
      } catch (e) {
        log.error('iSCSI state listener threw', { target: this.label, error: (e as Error).message });
      }
    }
  }
}
