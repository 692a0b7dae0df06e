// One iSCSI session over one connection in full-feature phase, initiator side
// (RFC 7143 sections 3-4, 11): tasks by ITT, the CmdSN window, Data-Out as
// negotiated (immediate, unsolicited, R2T), Data-In assembly, NOP keepalive,
// task abort on timeout, logout. The byte stream is behind a Wire, so tests
// drive a session with codec-built PDUs and no socket; connect() puts a
// node:net socket there.

import { encodePdu } from '../pdu/encode.js';
import { encodeLun } from '../pdu/lun.js';
import type { PduParser } from '../pdu/parser.js';
import {
  BHS_LENGTH,
  Opcode,
  RESERVED_TAG,
  TaskAttr,
  TmfFunction,
  type AhsSegment,
  type AsyncMessagePdu,
  type DataIn,
  type DataOut,
  type DigestSettings,
  type InitiatorPdu,
  type LogoutResponse,
  type NopIn,
  type Pdu,
  type R2TPdu,
  type ScsiCommandPdu,
  type ScsiResponsePdu,
  type TaskMgmtResponsePdu,
  type TextResponse,
} from '../pdu/types.js';
import { snAdd, snLt, snLte } from '../../iscsi/serial.js';
import { parseText, serializeText, TextAccumulator, type TextPair } from '../login/text.js';
import { log } from '../../util/log.js';
import type { LoginResult } from './login.js';
import { TransportError, type ScsiRequest, type ScsiResult, type ScsiTransport, type TransportErrorKind, type TransportState } from './transport.js';

/** Moves bytes; nothing else. */
export interface Wire {
  write(chunks: Buffer[]): void;
  /** Closes the connection at once; the session has already failed its tasks. */
  destroy(): void;
}

export interface SessionOptions {
  /** Most commands in flight (default 32); the target's CmdSN window may allow fewer. */
  queueDepth?: number;
  /** Default per-command timeout, queueing included (default 30 s). */
  commandTimeoutMs?: number;
  /** NOP-Out ping period when the session is idle or busy (default 5 s; 0 disables). */
  nopIntervalMs?: number;
  /** No NOP-In answer within this: the connection is dead (default 5 s). */
  nopTimeoutMs?: number;
  /** No answer to ABORT TASK within this: the connection is dropped (default 5 s). */
  abortTimeoutMs?: number;
  /** Bound on waiting for the Logout Response in close() (default 2 s). */
  logoutTimeoutMs?: number;
  /** Names the session in logs and errors (e.g. target name and portal). */
  label?: string;
}

/**
 * A command failed because the connection went away (or was dropped for a
 * protocol error): its outcome is unknown, and a new session may run it again.
 */
export class ConnectionLostError extends TransportError {
  constructor(kind: TransportErrorKind, message: string) {
    super(kind, message);
    this.name = 'ConnectionLostError';
  }
}

export const enum SessionState {
  FullFeature,
  /** The target asked for a logout: no new commands go out. */
  Draining,
  LoggingOut,
  /** The connection is gone (failed or closed). */
  Down,
}

interface Task {
  itt: number;
  req: ScsiRequest;
  lunField: bigint;
  resolve: (r: ScsiResult) => void;
  reject: (e: Error) => void;
  sent: boolean;
  cmdSN: number;
  timer: NodeJS.Timeout | undefined;
  /** The command timed out; it settles as 'timeout' once the abort is over. */
  aborting: boolean;
  readBuf: Buffer | undefined;
  /** Highest byte offset of Data-In received. */
  readEnd: number;
}

interface PendingTmf {
  task: Task;
  timer: NodeJS.Timeout;
}

interface PendingText {
  acc: TextAccumulator;
  resolve: (pairs: TextPair[]) => void;
  reject: (e: Error) => void;
}

/**
 * The least an abort is waited for, however close the command's deadline: a
 * live target answers in milliseconds, and a retry sent just before its
 * deadline should not tear down a healthy connection (the bound stays within
 * "the hold plus about a second").
 */
export const ABORT_FLOOR_MS = 500;

const DEFAULTS = {
  queueDepth: 32,
  commandTimeoutMs: 30_000,
  nopIntervalMs: 5_000,
  nopTimeoutMs: 5_000,
  abortTimeoutMs: 5_000,
  logoutTimeoutMs: 2_000,
};

/** Shared by the PDUs without data or AHS (the encoder only reads them): nothing allocated per command for them. */
const NO_DATA = Buffer.alloc(0);
const NO_AHS: AhsSegment[] = [];

/** LUN fields by LUN number: encoding one makes a BigInt, once per LUN instead of once per command. */
const lunFields = new Map<number, bigint>();
function lunField(lun: number): bigint {
  let f = lunFields.get(lun);
  if (f === undefined) {
    f = encodeLun(lun);
    lunFields.set(lun, f);
  }
  return f;
}

/** The largest Data-In a command may ask for: bounds what one command makes us allocate. */
export const MAX_DATA_IN_LENGTH = 64 << 20;

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

export class IscsiInitiatorSession implements ScsiTransport {
  readonly params: LoginResult['params'];
  readonly tsih: number;
  readonly isid: number;
  private st = SessionState.FullFeature;
  private readonly opts: Required<Omit<SessionOptions, 'label'>> & { label: string };
  private readonly digests: DigestSettings;
  private cmdSN: number;
  private expCmdSN: number;
  private maxCmdSN: number;
  private expStatSN: number;
  private nextItt = 1;
  private readonly tasks = new Map<number, Task>();
  private readonly queue: Task[] = [];
  private inFlight = 0;
  private readonly tmfs = new Map<number, PendingTmf>();
  private readonly texts = new Map<number, PendingText>();
  private nopTimer: NodeJS.Timeout | undefined;
  private pingItt: number | undefined;
  private pingDeadline: NodeJS.Timeout | undefined;
  private drainTimer: NodeJS.Timeout | undefined;
  private logoutWaiter: { itt: number; done: () => void } | undefined;
  private readonly downListeners: ((err: TransportError) => void)[] = [];
  private downError: TransportError | undefined;

  /** TCP connect, login, and a session in full-feature phase. */

  constructor(
    private readonly wire: Wire,
    private readonly parser: PduParser,
    login: LoginResult,
    opts: SessionOptions = {},
  ) {
    this.params = login.params;
    this.tsih = login.tsih;
    this.isid = login.isid;
    this.cmdSN = login.cmdSN;
    this.expCmdSN = login.expCmdSN;
    this.maxCmdSN = login.maxCmdSN;
    this.expStatSN = login.expStatSN;
    this.digests = { header: login.params.headerDigest, data: login.params.dataDigest };
    this.opts = {
      queueDepth: Math.max(1, opts.queueDepth ?? DEFAULTS.queueDepth),
      commandTimeoutMs: opts.commandTimeoutMs ?? DEFAULTS.commandTimeoutMs,
      nopIntervalMs: opts.nopIntervalMs ?? DEFAULTS.nopIntervalMs,
      nopTimeoutMs: opts.nopTimeoutMs ?? DEFAULTS.nopTimeoutMs,
      abortTimeoutMs: opts.abortTimeoutMs ?? DEFAULTS.abortTimeoutMs,
      logoutTimeoutMs: opts.logoutTimeoutMs ?? DEFAULTS.logoutTimeoutMs,
      label: opts.label ?? 'iSCSI session',
    };
    parser.setDigests(this.digests.header, this.digests.data);
    parser.setMaxDataSegmentLength(login.params.maxRecvDataSegmentLength);
    // Data-In lands straight in its command's buffer: one copy from the socket.
    parser.setDataDestination((bhs, length) => this.dataDestination(bhs, length));
    if (this.opts.nopIntervalMs > 0) {
      this.nopTimer = setInterval(() => this.ping(), this.opts.nopIntervalMs);
      this.nopTimer.unref();
    }
    // Bytes the target sent right after the login response are already buffered.
    queueMicrotask(() => this.pump());
  }

  get state(): TransportState {
    return this.st === SessionState.Down ? (this.downError?.kind === 'closed' ? 'closed' : 'down') : 'up';
  }

  /** Commands sent and not yet answered, and commands waiting for the window. */
  get pending(): { inFlight: number; queued: number } {
    return { inFlight: this.inFlight, queued: this.queue.length };
  }

  /** The window as the target last stated it (for tests and diagnostics). */
  get window(): { cmdSN: number; expCmdSN: number; maxCmdSN: number; expStatSN: number } {
    return { cmdSN: this.cmdSN, expCmdSN: this.expCmdSN, maxCmdSN: this.maxCmdSN, expStatSN: this.expStatSN };
  }

  /** Called once when the connection goes down, with the error its tasks got. */
  onDown(fn: (err: TransportError) => void): void {
    if (this.downError) fn(this.downError);
    else this.downListeners.push(fn);
  }

  execute(req: ScsiRequest): Promise<ScsiResult> {
    if (this.st !== SessionState.FullFeature) {
      const err = this.downError ?? new ConnectionLostError('unreachable', `${this.opts.label}: logging out`);
      return Promise.reject(err.kind === 'closed' ? err : new ConnectionLostError(err.kind, err.message));
    }
    const bad = validate(req);
    if (bad) return Promise.reject(new TypeError(bad));
    return new Promise<ScsiResult>((resolve, reject) => {
      const task: Task = {
        itt: this.allocItt(),
        req,
        lunField: lunField(req.lun),
        resolve,
        reject,
        sent: false,
        cmdSN: 0,
        timer: undefined,
        aborting: false,
        readBuf: undefined,
        readEnd: 0,
      };
      let timeout = req.timeoutMs ?? this.opts.commandTimeoutMs;
      // Not past the caller's deadline: a silent target costs the hold, not the command timeout on top of it.
      if (req.deadline !== undefined) timeout = Math.max(1, Math.min(timeout > 0 ? timeout : Infinity, req.deadline - Date.now()));
      if (timeout > 0) {
        task.timer = setTimeout(() => this.onCommandTimeout(task), timeout);
      }
      this.tasks.set(task.itt, task);
      this.queue.push(task);
      this.pump();
    });
  }

  /** A text exchange in full-feature phase (SendTargets): continues C-bit answers until the final one. */
  text(pairs: TextPair[], timeoutMs = 10_000): Promise<TextPair[]> {
    if (this.st !== SessionState.FullFeature) return Promise.reject(this.downError ?? new TransportError('closed', 'session not up'));
    return new Promise<TextPair[]>((resolve, reject) => {
      const itt = this.allocItt();
      const timer = setTimeout(() => {
        this.texts.delete(itt);
        reject(new TransportError('timeout', `${this.opts.label}: no Text Response within ${timeoutMs} ms`));
      }, timeoutMs);
      this.texts.set(itt, {
        acc: new TextAccumulator(1 << 20),
        resolve: (p) => {
          clearTimeout(timer);
          resolve(p);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.sendText(itt, RESERVED_TAG, serializeText(pairs));
    });
  }

  /** Logout (bounded), then the connection closes; commands still pending fail as 'closed'. */
  async close(): Promise<void> {
    if (this.st === SessionState.Down) return;
    await this.logout();
    this.goDown(new TransportError('closed', `${this.opts.label}: closed`));
  }

  /** Feeds bytes from the connection. */
  receive(chunk: Buffer): void {
    if (this.st === SessionState.Down) return;
    this.parser.push(chunk);
    this.pump();
  }

  /** The connection ended (EOF or socket error). */
  connectionClosed(reason: string): void {
    if (this.st === SessionState.Down) return;
    this.goDown(new ConnectionLostError('unreachable', `${this.opts.label}: connection lost: ${reason}`));
  }

  // ---- receiving ----

  private pump(): void {
    for (;;) {
      if (this.st === SessionState.Down) return;
      let r;
      try {
        r = this.parser.next();
      } catch (e) {
        this.protocolError(`parser failure: ${(e as Error).message}`);
        return;
      }
      if (r === null) break;
      if (!r.ok) {
        this.protocolError(r.message);
        return;
      }
      try {
        this.handle(r.pdu);
      } catch (e) {
        if (e instanceof ConnectionDrop) this.goDown(new ConnectionLostError('unreachable', `${this.opts.label}: ${e.message}`));
        else if (e instanceof ProtocolViolation) this.protocolError(e.message);
        // Whatever the target sent, it must not take the process down: a PDU we failed on ends the connection.
        else this.protocolError(`cannot handle a PDU (opcode ${hex(r.pdu.opcode)}): ${(e as Error).message}`);
        return;
      }
    }
    this.sendQueued();
  }

  private handle(pdu: Pdu): void {
    switch (pdu.opcode) {
      case Opcode.DataIn:
        return this.onDataIn(pdu);
      case Opcode.ScsiResponse:
        return this.onScsiResponse(pdu);
      case Opcode.R2T:
        return this.onR2T(pdu);
      case Opcode.NopIn:
        return this.onNopIn(pdu);
      case Opcode.TaskMgmtResponse:
        return this.onTmfResponse(pdu);
      case Opcode.TextResponse:
        return this.onTextResponse(pdu);
      case Opcode.LogoutResponse:
        return this.onLogoutResponse(pdu);
      case Opcode.AsyncMessage:
        return this.onAsync(pdu);
      case Opcode.Reject: {
        this.advanceStat(pdu.statSN);
        const itt = pdu.data.length >= BHS_LENGTH ? pdu.data.readUInt32BE(16) : RESERVED_TAG;
        throw new ProtocolViolation(`target rejected a PDU (reason ${hex(pdu.reason)}, itt ${hex(itt)})`);
      }
      default:
        throw new ProtocolViolation(`unexpected PDU opcode ${hex(pdu.opcode)} from the target`);
    }
  }

  /** StatSN acknowledgement for a PDU that carries status. */
  private advanceStat(statSN: number): void {
    if (snLte(this.expStatSN, statSN)) this.expStatSN = snAdd(statSN, 1);
  }

  private updateWindow(expCmdSN: number, maxCmdSN: number): void {
    // RFC 7143 4.2.2.1: a MaxCmdSN below ExpCmdSN-1 is ignored, and so are stale values.
    if (snLt(maxCmdSN, snAdd(expCmdSN, -1 >>> 0))) return;
    if (snLt(this.expCmdSN, expCmdSN)) this.expCmdSN = expCmdSN;
    if (snLt(this.maxCmdSN, maxCmdSN)) this.maxCmdSN = maxCmdSN;
  }

  private taskFor(itt: number, what: string): Task {
    const t = this.tasks.get(itt);
    if (!t || !t.sent) throw new ProtocolViolation(`${what} for unknown ITT ${hex(itt)}`);
    return t;
  }

  private dataDestination(bhs: Buffer, length: number): Buffer | undefined {
    if ((bhs[0]! & 0x3f) !== Opcode.DataIn) return undefined;
    const t = this.tasks.get(bhs.readUInt32BE(16));
    if (!t || !t.readBuf) return undefined;
    const off = bhs.readUInt32BE(40);
    if (off + length > t.readBuf.length) return undefined; // onDataIn reports the overrun
    return t.readBuf.subarray(off, off + length);
  }

  private onDataIn(pdu: DataIn): void {
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
    const t = this.taskFor(pdu.itt, 'Data-In');
    if (t.aborting && !t.readBuf) {
      // Late data for a command already reported as timed out: dropped.
      if (pdu.hasStatus) this.advanceStat(pdu.statSN);
      return;
    }
    if (!t.readBuf) throw new ProtocolViolation(`Data-In for ITT ${hex(pdu.itt)}, a command that reads nothing`);
    const end = pdu.bufferOffset + pdu.data.length;
    if (end > t.readBuf.length) {
      throw new ProtocolViolation(`Data-In for ITT ${hex(pdu.itt)} at ${pdu.bufferOffset}+${pdu.data.length} overruns the ${t.readBuf.length}-byte buffer`);
    }
    const dest = t.readBuf.subarray(pdu.bufferOffset, end);
    if (pdu.data.length > 0 && !(pdu.data.buffer === dest.buffer && pdu.data.byteOffset === dest.byteOffset)) pdu.data.copy(dest);
    if (end > t.readEnd) t.readEnd = end;
    if (pdu.hasStatus) {
      if (!pdu.final) throw new ProtocolViolation(`Data-In for ITT ${hex(pdu.itt)} has S without F`);
      this.advanceStat(pdu.statSN);
      this.complete(t, { status: pdu.status, residual: residualOf(pdu.underflow, pdu.overflow, pdu.residualCount) });
    }
  }

  private onScsiResponse(pdu: ScsiResponsePdu): void {
    this.advanceStat(pdu.statSN);
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
    const t = this.taskFor(pdu.itt, 'SCSI Response');
    if (pdu.response !== 0) {
      // iSCSI "target failure": the command did not complete; its outcome is the target's problem.
      this.settle(t, undefined, new TransportError('protocol', `${this.opts.label}: target failure (iSCSI response ${hex(pdu.response)}) for ${describeCdb(t.req.cdb)}`));
      return;
    }
    let sense: Buffer | undefined;
    if (pdu.data.length >= 2) {
      const n = pdu.data.readUInt16BE(0);
      if (n + 2 > pdu.data.length) throw new ProtocolViolation(`SCSI Response for ITT ${hex(pdu.itt)}: SenseLength ${n} exceeds the ${pdu.data.length - 2} bytes sent`);
      if (n > 0) sense = Buffer.from(pdu.data.subarray(2, 2 + n));
    } else if (pdu.data.length === 1) {
      throw new ProtocolViolation(`SCSI Response for ITT ${hex(pdu.itt)}: 1-byte data segment`);
    }
    this.complete(t, { status: pdu.status, sense, residual: residualOf(pdu.underflow, pdu.overflow, pdu.residualCount) });
  }

  private complete(t: Task, r: { status: number; sense?: Buffer; residual?: number }): void {
    const result: ScsiResult = { status: r.status };
    if (r.sense) result.sense = r.sense;
    if (r.residual !== undefined && r.residual !== 0) result.residual = r.residual;
    if (t.readBuf) result.data = t.readBuf.subarray(0, t.readEnd);
    this.settle(t, result, undefined);
  }

  /** The task leaves the session; an aborting task settles when its abort does. */
  private settle(t: Task, result: ScsiResult | undefined, err: Error | undefined): void {
    if (t.aborting) {
      // Keep the ITT reserved until the TMF answer: the abort refers to it.
      t.readBuf = undefined;
      return;
    }
    this.retire(t);
    if (err) t.reject(err);
    else t.resolve(result as ScsiResult);
  }

  private retire(t: Task): void {
    if (t.timer) clearTimeout(t.timer);
    t.timer = undefined;
    if (this.tasks.get(t.itt) === t) this.tasks.delete(t.itt);
    if (t.sent) this.inFlight--;
    t.sent = false;
  }

  private onR2T(pdu: R2TPdu): void {
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
    const t = this.taskFor(pdu.itt, 'R2T');
    const data = t.req.dataOut;
    if (!data) throw new ProtocolViolation(`R2T for ITT ${hex(pdu.itt)}, a command that writes nothing`);
    const len = pdu.desiredDataTransferLength;
    if (len === 0 || pdu.bufferOffset + len > data.length) {
      throw new ProtocolViolation(`R2T for ITT ${hex(pdu.itt)} asks for ${pdu.bufferOffset}+${len} of a ${data.length}-byte write`);
    }
    if (pdu.ttt === RESERVED_TAG) throw new ProtocolViolation(`R2T for ITT ${hex(pdu.itt)} with the reserved TTT`);
    this.sendDataOut(t, data, pdu.bufferOffset, pdu.bufferOffset + len, pdu.ttt);
  }

  private onNopIn(pdu: NopIn): void {
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
    if (pdu.itt !== RESERVED_TAG) {
      // The answer to our ping; it carries status (StatSN advances).
      this.advanceStat(pdu.statSN);
      if (pdu.itt === this.pingItt) {
        this.pingItt = undefined;
        if (this.pingDeadline) clearTimeout(this.pingDeadline);
        this.pingDeadline = undefined;
      }
      return;
    }
    if (pdu.ttt !== RESERVED_TAG) {
      // The target pings us: answer with its TTT, same LUN, ping data echoed.
      this.send({
        opcode: Opcode.NopOut,
        immediate: true,
        ahs: [],
        data: pdu.data.length > 0 ? Buffer.from(pdu.data) : pdu.data,
        lun: pdu.lun,
        itt: RESERVED_TAG,
        ttt: pdu.ttt,
        cmdSN: this.cmdSN,
        expStatSN: this.expStatSN,
      });
    }
  }

  private onTmfResponse(pdu: TaskMgmtResponsePdu): void {
    this.advanceStat(pdu.statSN);
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
    const tmf = this.tmfs.get(pdu.itt);
    if (!tmf) throw new ProtocolViolation(`Task Management Response for unknown ITT ${hex(pdu.itt)}`);
    this.tmfs.delete(pdu.itt);
    clearTimeout(tmf.timer);
    this.finishAbort(tmf.task, `abort answered with TMF response ${pdu.response}`);
  }

  private finishAbort(t: Task, how: string): void {
    if (!this.tasks.has(t.itt)) return;
    t.aborting = false;
    t.readBuf = undefined;
    const timeout = t.req.timeoutMs ?? this.opts.commandTimeoutMs;
    this.settle(t, undefined, new TransportError('timeout', `${this.opts.label}: ${describeCdb(t.req.cdb)} on LUN ${t.req.lun} got no answer within ${timeout} ms (${how})`));
  }

  private onTextResponse(pdu: TextResponse): void {
    this.advanceStat(pdu.statSN);
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
    const p = this.texts.get(pdu.itt);
    if (!p) throw new ProtocolViolation(`Text Response for unknown ITT ${hex(pdu.itt)}`);
    const acc = p.acc.push(Buffer.from(pdu.data), pdu.cont);
    if (acc.kind === 'overflow') throw new ProtocolViolation(`Text Response of more than ${acc.size} bytes`);
    if (acc.kind === 'partial' || !pdu.final) {
      if (pdu.final) throw new ProtocolViolation('Text Response with both F and C');
      // Ask for the rest: an empty Text Request with the target's TTT.
      this.sendText(pdu.itt, pdu.ttt, Buffer.alloc(0));
      return;
    }
    this.texts.delete(pdu.itt);
    try {
      p.resolve(parseText(acc.data));
    } catch (e) {
      p.reject(new TransportError('protocol', `${this.opts.label}: malformed text response: ${(e as Error).message}`));
    }
  }

  private onLogoutResponse(pdu: LogoutResponse): void {
    this.advanceStat(pdu.statSN);
    const w = this.logoutWaiter;
    if (!w || w.itt !== pdu.itt) throw new ProtocolViolation(`Logout Response for ITT ${hex(pdu.itt)} we did not send`);
    this.logoutWaiter = undefined;
    w.done();
  }

  private onAsync(pdu: AsyncMessagePdu): void {
    this.advanceStat(pdu.statSN);
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
    switch (pdu.asyncEvent) {
      case 1: {
        // The target asks us to log out within Parameter3 seconds: let the
        // commands in flight finish, send nothing new, then log out.
        log.info('iSCSI target requested logout', { session: this.opts.label, withinSeconds: pdu.parameter3 });
        if (this.st !== SessionState.FullFeature) return;
        this.st = SessionState.Draining;
        const limit = Math.max(0, Math.min(pdu.parameter3 * 1000, this.opts.commandTimeoutMs));
        this.drainTimer = setTimeout(() => void this.logoutAfterDrain(), limit);
        this.maybeFinishDrain();
        return;
      }
      case 2:
      case 3:
        // The target is dropping the connection (or all of them).
        throw new ConnectionDrop(`target announced it drops the connection (async event ${pdu.asyncEvent})`);
      default:
        // SCSI async events and parameter renegotiation requests: nothing we need to act on.
        log.debug('iSCSI async message ignored', { session: this.opts.label, event: pdu.asyncEvent, vcode: pdu.asyncVCode });
    }
  }

  private maybeFinishDrain(): void {
    if (this.st === SessionState.Draining && this.inFlight === 0) void this.logoutAfterDrain();
  }

  private async logoutAfterDrain(): Promise<void> {
    if (this.st !== SessionState.Draining) return;
    await this.logout();
    this.goDown(new ConnectionLostError('unreachable', `${this.opts.label}: logged out at the target's request`));
  }

  // ---- sending ----

  private send(pdu: InitiatorPdu): void {
    if (this.st === SessionState.Down) return;
    this.wire.write(encodePdu(pdu, this.digests));
  }

  private allocItt(): number {
    for (;;) {
      const itt = this.nextItt;
      this.nextItt = (this.nextItt + 1) >>> 0;
      if (this.nextItt === RESERVED_TAG) this.nextItt = 1;
      if (itt !== RESERVED_TAG && !this.tasks.has(itt) && !this.tmfs.has(itt) && !this.texts.has(itt)) return itt;
    }
  }

  private windowOpen(): boolean {
    return snLte(this.cmdSN, this.maxCmdSN);
  }

  private sendQueued(): void {
    while (this.st === SessionState.FullFeature && this.queue.length > 0 && this.inFlight < this.opts.queueDepth && this.windowOpen()) {
      const t = this.queue.shift() as Task;
      this.sendCommand(t);
    }
    this.maybeFinishDrain();
  }

  private sendCommand(t: Task): void {
    const p = this.params;
    const out = t.req.dataOut;
    const inLen = t.req.dataInLength ?? 0;
    t.sent = true;
    t.cmdSN = this.cmdSN;
    this.cmdSN = snAdd(this.cmdSN, 1);
    this.inFlight++;
    if (inLen > 0) t.readBuf = t.req.dataInBuffer ? t.req.dataInBuffer.subarray(0, inLen) : Buffer.allocUnsafe(inLen);
    let immediate = 0;
    let unsolicitedEnd = 0;
    if (out && out.length > 0) {
      const first = Math.min(out.length, p.firstBurstLength);
      if (p.immediateData) immediate = Math.min(first, p.targetMaxRecvDataSegmentLength);
      unsolicitedEnd = p.initialR2T ? immediate : first;
    }
    const cmd: ScsiCommandPdu = {
      opcode: Opcode.ScsiCommand,
      immediate: false,
      ahs: NO_AHS,
      data: out && immediate > 0 ? out.subarray(0, immediate) : NO_DATA,
      final: unsolicitedEnd <= immediate,
      read: inLen > 0,
      write: out !== undefined && out.length > 0,
      attr: TaskAttr.Simple,
      lun: t.lunField,
      itt: t.itt,
      expectedDataTransferLength: out ? out.length : inLen,
      cmdSN: t.cmdSN,
      expStatSN: this.expStatSN,
      cdb: t.req.cdb,
    };
    this.send(cmd);
    if (out && unsolicitedEnd > immediate) this.sendDataOut(t, out, immediate, unsolicitedEnd, RESERVED_TAG);
  }

  /** One Data-Out sequence: [from, to) of the write in PDUs of the target's MaxRecvDataSegmentLength. */
  private sendDataOut(t: Task, data: Buffer, from: number, to: number, ttt: number): void {
    const max = this.params.targetMaxRecvDataSegmentLength;
    let dataSN = 0;
    for (let off = from; off < to; off += max) {
      const end = Math.min(to, off + max);
      const pdu: DataOut = {
        opcode: Opcode.DataOut,
        immediate: false,
        ahs: NO_AHS,
        data: data.subarray(off, end),
        final: end === to,
        lun: t.lunField,
        itt: t.itt,
        ttt,
        expStatSN: this.expStatSN,
        dataSN: dataSN++,
        bufferOffset: off,
      };
      this.send(pdu);
    }
  }

  private sendText(itt: number, ttt: number, data: Buffer): void {
    // Text Requests take a CmdSN like commands; the window is not checked: one exchange at a time.
    const cmdSN = this.cmdSN;
    this.cmdSN = snAdd(this.cmdSN, 1);
    this.send({ opcode: Opcode.TextRequest, immediate: false, ahs: [], data, final: true, cont: false, lun: 0n, itt, ttt, cmdSN, expStatSN: this.expStatSN });
  }

  private ping(): void {
    if (this.st !== SessionState.FullFeature || this.pingItt !== undefined) return;
    const itt = this.allocItt();
    this.pingItt = itt;
    this.send({ opcode: Opcode.NopOut, immediate: true, ahs: [], data: Buffer.alloc(0), lun: 0n, itt, ttt: RESERVED_TAG, cmdSN: this.cmdSN, expStatSN: this.expStatSN });
    this.pingDeadline = setTimeout(() => {
      if (this.pingItt !== itt) return;
      this.goDown(new ConnectionLostError('unreachable', `${this.opts.label}: no NOP-In within ${this.opts.nopTimeoutMs} ms: connection dead`));
    }, this.opts.nopTimeoutMs);
  }

  private onCommandTimeout(t: Task): void {
    t.timer = undefined;
    if (!this.tasks.has(t.itt)) return;
    const timeout = t.req.timeoutMs ?? this.opts.commandTimeoutMs;
    if (!t.sent) {
      const i = this.queue.indexOf(t);
      if (i >= 0) this.queue.splice(i, 1);
      this.tasks.delete(t.itt);
      t.reject(new TransportError('timeout', `${this.opts.label}: ${describeCdb(t.req.cdb)} on LUN ${t.req.lun} waited ${timeout} ms for the command window`));
      return;
    }
    t.aborting = true;
    log.warn('iSCSI command timed out; aborting it', { session: this.opts.label, itt: t.itt, cdb: describeCdb(t.req.cdb), timeoutMs: timeout });
    const itt = this.allocItt();
    // The abort waits no longer than what is left of the caller's deadline (at least ABORT_FLOOR_MS):
    // a target that is gone (a cut link, no reset) is then declared so within the hold, and the
    // reinstatement that follows is what makes the target drop the task.
    const abortMs =
      t.req.deadline === undefined ? this.opts.abortTimeoutMs : Math.min(this.opts.abortTimeoutMs, Math.max(ABORT_FLOOR_MS, t.req.deadline - Date.now()));
    const timer = setTimeout(() => {
      this.tmfs.delete(itt);
      // No answer to the abort either: the connection is of no use. The
      // aborted task reports its timeout; the others that the connection lost.
      this.finishAbort(t, `no answer to ABORT TASK within ${abortMs} ms`);
      this.goDown(new ConnectionLostError('unreachable', `${this.opts.label}: no answer to ABORT TASK within ${abortMs} ms`));
    }, abortMs);
    this.tmfs.set(itt, { task: t, timer });
    this.send({
      opcode: Opcode.TaskMgmtRequest,
      immediate: true,
      ahs: [],
      data: Buffer.alloc(0),
      fn: TmfFunction.AbortTask,
      lun: t.lunField,
      itt,
      referencedTaskTag: t.itt,
      cmdSN: this.cmdSN,
      expStatSN: this.expStatSN,
      refCmdSN: t.cmdSN,
      expDataSN: 0,
    });
  }

  private async logout(): Promise<void> {
    if (this.st === SessionState.Down || this.st === SessionState.LoggingOut) return;
    this.st = SessionState.LoggingOut;
    const itt = this.allocItt();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.logoutWaiter = undefined;
        resolve();
      }, this.opts.logoutTimeoutMs);
      this.logoutWaiter = {
        itt,
        done: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      // Logout is immediate: it must get through even with the command window closed.
      this.wire.write(
        encodePdu({ opcode: Opcode.LogoutRequest, immediate: true, ahs: [], data: Buffer.alloc(0), reason: 0, itt, cid: 0, cmdSN: this.cmdSN, expStatSN: this.expStatSN }, this.digests),
      );
    });
  }

  // ---- failure ----

  private protocolError(message: string): void {
    log.warn('iSCSI target broke the protocol; dropping the connection', { session: this.opts.label, error: message });
    this.goDown(new ConnectionLostError('protocol', `${this.opts.label}: ${message}`));
  }

  /** The connection is over: every task, TMF, text and ping settles, and the socket closes. */
  private goDown(err: TransportError): void {
    if (this.st === SessionState.Down) return;
    this.st = SessionState.Down;
    this.downError = err;
    if (this.nopTimer) clearInterval(this.nopTimer);
    if (this.pingDeadline) clearTimeout(this.pingDeadline);
    if (this.drainTimer) clearTimeout(this.drainTimer);
    for (const tmf of this.tmfs.values()) clearTimeout(tmf.timer);
    const aborting = new Set([...this.tmfs.values()].map((m) => m.task));
    this.tmfs.clear();
    this.queue.length = 0;
    const tasks = [...this.tasks.values()];
    this.tasks.clear();
    this.inFlight = 0;
    for (const t of tasks) {
      if (t.timer) clearTimeout(t.timer);
      if (t.aborting || aborting.has(t)) {
        t.reject(new TransportError('timeout', `${this.opts.label}: ${describeCdb(t.req.cdb)} timed out and the connection dropped before the abort was answered`));
      } else {
        t.reject(err);
      }
    }
    for (const p of this.texts.values()) p.reject(err);
    this.texts.clear();
    this.logoutWaiter?.done();
    this.logoutWaiter = undefined;
    this.parser.setDataDestination(null);
    try {
      this.wire.destroy();
    } catch {
      // already gone
    }
    for (const fn of this.downListeners.splice(0)) fn(err);
  }
}

class ProtocolViolation extends Error {}

/** The target said it drops the connection: not a violation, but handled the same way. */
class ConnectionDrop extends ProtocolViolation {}

function residualOf(underflow: boolean, overflow: boolean, count: number): number | undefined {
  if (underflow) return count;
  if (overflow) return -count;
  return undefined;
}

const CDB_NAMES: Record<number, string> = {
  0x00: 'TEST UNIT READY',
  0x12: 'INQUIRY',
  0x25: 'READ CAPACITY(10)',
  0x28: 'READ(10)',
  0x2a: 'WRITE(10)',
  0x35: 'SYNCHRONIZE CACHE(10)',
  0x42: 'UNMAP',
  0x88: 'READ(16)',
  0x8a: 'WRITE(16)',
  0x91: 'SYNCHRONIZE CACHE(16)',
  0x93: 'WRITE SAME(16)',
  0x9e: 'SERVICE ACTION IN(16)',
  0xa0: 'REPORT LUNS',
};

/** "READ(16) lba=... blocks=..." for messages: what tells a reader which command failed. */
export function describeCdb(cdb: Buffer): string {
  const op = cdb[0] ?? 0;
  const name = CDB_NAMES[op] ?? `opcode ${hex(op)}`;
  if ((op === 0x88 || op === 0x8a || op === 0x93) && cdb.length >= 16) {
    return `${name} lba=${cdb.readBigUInt64BE(2)} blocks=${cdb.readUInt32BE(10)}`;
  }
  return name;
}

function validate(req: ScsiRequest): string | undefined {
  if (req.cdb.length < 6 || req.cdb.length > 16) return `CDB of ${req.cdb.length} bytes (6..16)`;
  if (req.dataOut && req.dataOut.length > 0 && (req.dataInLength ?? 0) > 0) return 'bidirectional commands are not supported';
  const n = req.dataInLength ?? 0;
  if (!Number.isInteger(n) || n < 0 || n > MAX_DATA_IN_LENGTH) return `dataInLength ${n} (0..${MAX_DATA_IN_LENGTH})`;
  if (!Number.isInteger(req.lun) || req.lun < 0 || req.lun > 0x3fff) return `LUN ${req.lun}`;
  if (req.dataInBuffer && req.dataInBuffer.length < n) return `dataInBuffer of ${req.dataInBuffer.length} bytes for dataInLength ${n}`;
  return undefined;
}
