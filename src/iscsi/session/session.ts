// Full feature phase of one iSCSI session (RFC 7143 sections 4.2, 11): the
// CmdSN window and in-order delivery, NOP, Text and Logout. SCSI tasks and
// their data transfer are task-transfer.ts, task management is
// task-management.ts. MaxConnections is 1, so a session has exactly one
// connection at a time; ErrorRecoveryLevel is 0.
import { log } from '../../util/log.js';
import type { Nexus, ScsiPort } from '../../scsi/port.js';
import type { NegotiatedParams } from '../login/negotiation.js';
import { sendTargets } from '../login/discovery.js';
import type { LoginEnvironment, TargetInfo } from '../login/login-machine.js';
import { parseText, serializeText } from '../login/text.js';
import { EMPTY } from '../pdu/layout.js';
import {
  Opcode,
  RESERVED_TAG,
  RejectReason,
  type InitiatorPdu,
  type LogoutRequest,
  type NopOut,
  type RejectPdu,
  type TargetPdu,
  type TextRequest,
} from '../pdu/types.js';
import { snAdd, snInWindow, snLt } from '../serial.js';
import type { IscsiSettings } from '../settings.js';
import { TaskManagement, type TaskManagementHost } from './task-management.js';
import { TaskTransfer, type TaskTransferHost } from './task-transfer.js';

/** What a session needs from its connection (the socket edge). */
export interface SessionConnection {
  /** Queue a PDU for sending; the connection fills StatSN (advancing it for PDUs that carry status) and the CmdSN window. */
  send(pdu: TargetPdu): void;
  /** Close the connection (after flushing what was queued). */
  close(reason: string): void;
  readonly id: string;
}

/** A session-wide view shared by the portal server: all sessions, for TMF scope across nexuses. */
export interface SessionDirectory {
  sessionsOfTarget(targetName: string): Session[];
}

export type SessionType = 'Discovery' | 'Normal';

export interface SessionInit {
  tsih: number;
  isid: number;
  params: NegotiatedParams;
  target?: TargetInfo;
  port?: ScsiPort;
  nexus?: Nexus;
  settings: IscsiSettings;
  loginEnv: LoginEnvironment;
  directory: SessionDirectory;
  /** Initial ExpCmdSN: the CmdSN of the leading login request. */
  cmdSN: number;
  onClosed: (s: Session) => void;
}

export class Session implements TaskTransferHost, TaskManagementHost {
  readonly tsih: number;
  readonly isid: number;
  readonly params: NegotiatedParams;
  readonly type: SessionType;
  readonly targetName: string | undefined;
  readonly nexus: Nexus | undefined;
  /** The SCSI tasks of this session (commands, their data, their responses). */
  readonly tasks: TaskTransfer;
  private readonly taskManagement: TaskManagement;
  private readonly settings: IscsiSettings;
  private readonly init: SessionInit;
  private conn: SessionConnection | null = null;

  private expCmdSN: number;
  private maxCmdSN: number;
  /** Non-immediate PDUs received ahead of ExpCmdSN, by CmdSN, and their headers (for a Reject). */
  private readonly pending = new Map<number, InitiatorPdu>();
  private readonly pendingHeaders = new Map<number, Buffer>();
  private nextTtt = 1;
  private closed = false;
  private textContinuation: { ttt: number; rest: Buffer } | null = null;

  constructor(init: SessionInit) {
    this.init = init;
    this.tsih = init.tsih;
    this.isid = init.isid;
    this.params = init.params;
    this.type = init.params.sessionType;
    this.targetName = init.target?.name;
    this.nexus = init.nexus;
    this.tasks = new TaskTransfer(this, init.port, init.nexus);
    this.taskManagement = new TaskManagement(this, init.port, init.nexus);
    this.settings = init.settings;
    this.expCmdSN = init.cmdSN;
    this.maxCmdSN = snAdd(init.cmdSN, init.settings.queueDepth - 1);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get window(): { expCmdSN: number; maxCmdSN: number } {
    return { expCmdSN: this.expCmdSN, maxCmdSN: this.maxCmdSN };
  }

  /** Sets a PDU's ExpCmdSN and MaxCmdSN to the window now (window without an object per PDU). */
  fillWindow(pdu: { expCmdSN: number; maxCmdSN: number }): void {
    pdu.expCmdSN = this.expCmdSN;
    pdu.maxCmdSN = this.maxCmdSN;
  }

  attach(conn: SessionConnection): void {
    this.conn = conn;
  }

  /** Commands received and not yet answered (a draining portal waits for none). */
  get outstandingTasks(): number {
    return this.tasks.size;
  }

  /** Every session of this session's target, this one included. */
  sessionsOfSameTarget(): Session[] {
    return this.init.directory.sessionsOfTarget(this.targetName ?? '');
  }

  /**
   * Async Message, AsyncEvent 1 (RFC 7143 11.9.1): the target asks the
   * initiator to log out within `seconds` (Parameter3).
   */
  requestLogout(seconds: number): void {
    this.send({
      opcode: Opcode.AsyncMessage,
      immediate: false,
      ahs: [],
      data: EMPTY,
      lun: 0n,
      statSN: 0,
      expCmdSN: 0,
      maxCmdSN: 0,
      asyncEvent: 1,
      asyncVCode: 0,
      parameter1: 0,
      parameter2: 0,
      parameter3: Math.max(0, Math.min(0xffff, Math.ceil(seconds))),
    });
  }

  /** The connection went away (ERL 0: the session ends with it). */
  connectionLost(reason: string): void {
    this.terminate(reason, true);
  }

  /** End the session: tasks are abandoned (their responses dropped). */
  terminate(reason: string, nexusLost: boolean): void {
    if (this.closed) return;
    this.closed = true;
    this.tasks.abandonAll();
    this.pending.clear();
    const c = this.conn;
    this.conn = null;
    if (c) c.close(reason);
    if (nexusLost && this.nexus && this.init.port) this.init.port.nexusLost(this.nexus);
    this.init.onClosed(this);
  }

  // ---------------------------------------------------------------- input

  /** Entry point for every full-feature-phase PDU from the initiator. */
  receive(pdu: InitiatorPdu, header: Buffer): void {
    if (this.closed) return;
    switch (pdu.opcode) {
      case Opcode.DataOut:
        this.tasks.onDataOut(pdu, header);
        return;
      case Opcode.SnackRequest:
        // ERL 0 offers no recovery: SNACK is not supported.
        this.reject(RejectReason.CommandNotSupported, header);
        return;
      case Opcode.LoginRequest:
        this.reject(RejectReason.ProtocolError, header);
        return;
      default:
        break;
    }
    if (this.type === 'Discovery' && pdu.opcode !== Opcode.TextRequest && pdu.opcode !== Opcode.LogoutRequest && pdu.opcode !== Opcode.NopOut) {
      this.reject(RejectReason.ProtocolError, header);
      return;
    }
    if (pdu.opcode === Opcode.ScsiCommand) {
      if (this.tasks.has(pdu.itt) || pdu.itt === RESERVED_TAG) {
        this.reject(RejectReason.TaskInProgress, header);
        return;
      }
    }
    // ExpStatSN acknowledgements need no action at ERL 0.
    const cmdSN = (pdu as { cmdSN: number }).cmdSN;
    if (pdu.immediate) {
      this.dispatch(pdu, header);
      return;
    }
    if (!snInWindow(cmdSN, this.expCmdSN, this.maxCmdSN)) {
      // RFC 7143 3.2.2.1: commands outside the window are silently ignored.
      log.debug('CmdSN outside window: dropped', { cmdSN, expCmdSN: this.expCmdSN, maxCmdSN: this.maxCmdSN, opcode: pdu.opcode });
      return;
    }
    if (cmdSN !== this.expCmdSN) {
      if (this.pending.has(cmdSN)) return; // duplicate: ignore
      if (pdu.opcode === Opcode.ScsiCommand) this.tasks.queue(pdu);
      this.pending.set(cmdSN, pdu);
      this.pendingHeaders.set(cmdSN, header);
      return;
    }
    this.deliverInOrder(pdu, header);
    // Fill from the queue while the next CmdSN is there.
    for (;;) {
      const next = this.pending.get(this.expCmdSN);
      if (!next) break;
      const h = this.pendingHeaders.get(this.expCmdSN)!;
      this.pending.delete(this.expCmdSN);
      this.pendingHeaders.delete(this.expCmdSN);
      this.deliverInOrder(next, h);
    }
  }

  private deliverInOrder(pdu: InitiatorPdu, header: Buffer): void {
    this.expCmdSN = snAdd(this.expCmdSN, 1);
    this.updateMaxCmdSN();
    if (this.tasks.dropIfAborted((pdu as { cmdSN: number }).cmdSN, pdu)) return;
    this.dispatch(pdu, header);
  }

  private dispatch(pdu: InitiatorPdu, header: Buffer): void {
    switch (pdu.opcode) {
      case Opcode.ScsiCommand:
        this.tasks.onCommand(pdu, header);
        break;
      case Opcode.NopOut:
        this.onNopOut(pdu);
        break;
      case Opcode.TaskMgmtRequest:
        void this.taskManagement.handle(pdu);
        break;
      case Opcode.TextRequest:
        this.onText(pdu, header);
        break;
      case Opcode.LogoutRequest:
        this.onLogout(pdu);
        break;
      default:
        this.reject(RejectReason.ProtocolError, header);
    }
  }

  private updateMaxCmdSN(): void {
    // MaxCmdSN never decreases: the window is the queue depth minus the tasks still running.
    const candidate = snAdd(this.expCmdSN, Math.max(0, this.settings.queueDepth - this.tasks.executing) - 1);
    if (snLt(this.maxCmdSN, candidate)) this.maxCmdSN = candidate;
  }

  /** A task left the SCSI layer: the window may widen. */
  taskLeft(): void {
    this.updateMaxCmdSN();
  }

  /**
   * Where the parser should assemble the data of the PDU with this BHS (a
   * Data-Out its task will accept), so the payload is copied once.
   */
  dataOutDestination(bhs: Buffer, length: number): Buffer | undefined {
    return this.closed ? undefined : this.tasks.dataOutDestination(bhs, length);
  }

  allocTtt(): number {
    const t = this.nextTtt;
    this.nextTtt = this.nextTtt >= 0x7fffffff ? 1 : this.nextTtt + 1;
    return t;
  }

  // ---------------------------------------------------------------- NOP, Text, Logout

  private onNopOut(pdu: NopOut): void {
    if (pdu.itt === RESERVED_TAG) return; // an answer to our NOP-In ping: the connection already noted the traffic
    this.send({
      opcode: Opcode.NopIn,
      immediate: false,
      ahs: [],
      data: pdu.data.length > this.params.initiatorMaxRecvDataSegmentLength ? pdu.data.subarray(0, this.params.initiatorMaxRecvDataSegmentLength) : pdu.data,
      lun: pdu.lun,
      itt: pdu.itt,
      ttt: RESERVED_TAG,
      statSN: 0,
      expCmdSN: 0,
      maxCmdSN: 0,
    });
  }

  private onText(pdu: TextRequest, header: Buffer): void {
    let body: Buffer;
    if (pdu.ttt !== RESERVED_TAG) {
      // Continuation of a long response we split earlier.
      if (!this.textContinuation || this.textContinuation.ttt !== pdu.ttt) {
        this.reject(RejectReason.InvalidPduField, header);
        return;
      }
      body = this.textContinuation.rest;
      this.textContinuation = null;
    } else {
      let pairs: [string, string][];
      try {
        pairs = parseText(pdu.data);
      } catch (e) {
        this.reject(RejectReason.ProtocolError, header);
        log.debug('malformed text request', { err: (e as Error).message });
        return;
      }
      const out: [string, string][] = [];
      const chunks: Buffer[] = [];
      for (const [k, v] of pairs) {
        if (k === 'SendTargets') {
          // In a normal session an empty value means this session's target.
          const value = this.type === 'Normal' && v === '' ? this.targetName ?? '' : v;
          chunks.push(sendTargets(value, this.init.loginEnv, this.params.initiatorName, this.type));
        } else {
          out.push([k, 'NotUnderstood']);
        }
      }
      if (out.length) chunks.push(serializeText(out));
      body = Buffer.concat(chunks);
    }
    const max = this.params.initiatorMaxRecvDataSegmentLength;
    let ttt = RESERVED_TAG;
    let data = body;
    if (body.length > max) {
      ttt = this.allocTtt();
      data = body.subarray(0, max);
      this.textContinuation = { ttt, rest: body.subarray(max) };
    }
    this.send({
      opcode: Opcode.TextResponse,
      immediate: false,
      ahs: [],
      data,
      final: ttt === RESERVED_TAG,
      cont: ttt !== RESERVED_TAG,
      lun: 0n,
      itt: pdu.itt,
      ttt,
      statSN: 0,
      expCmdSN: 0,
      maxCmdSN: 0,
    });
  }

  private onLogout(pdu: LogoutRequest): void {
    // reason 0 closes the session, 1 the connection (= the session, with one connection);
    // 2 (remove for recovery) needs ERL 2.
    const response = pdu.reason === 2 ? 2 : 0;
    this.send({
      opcode: Opcode.LogoutResponse,
      immediate: false,
      ahs: [],
      data: EMPTY,
      response,
      itt: pdu.itt,
      statSN: 0,
      expCmdSN: 0,
      maxCmdSN: 0,
      time2Wait: 0,
      time2Retain: 0,
    });
    if (response === 0) this.terminate('logout', true);
  }

  // ---------------------------------------------------------------- output

  reject(reason: RejectReason, header: Buffer): void {
    this.send(rejectPdu(reason, header));
  }

  send(pdu: TargetPdu): void {
    if (this.closed || !this.conn) return;
    this.conn.send(pdu);
  }
}

/** A Reject carrying the rejected PDU's header; the connection fills the sequence numbers. */
export function rejectPdu(reason: RejectReason, header: Buffer): RejectPdu {
  return { opcode: Opcode.Reject, immediate: false, ahs: [], data: header.subarray(0, 48), reason, statSN: 0, expCmdSN: 0, maxCmdSN: 0, dataSN: 0 };
}
