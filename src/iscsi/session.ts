// Full feature phase of one iSCSI session (RFC 7143 sections 4.2, 11): the
// CmdSN window and in-order delivery, SCSI task data transfer (immediate,
// unsolicited, R2T-solicited Data-Out; Data-In sequencing and residuals),
// NOP, Text, Task Management and Logout. MaxConnections is 1, so a session
// has exactly one connection at a time; ErrorRecoveryLevel is 0.
import { log } from '../util/log.js';
import type { Nexus, ScsiPort, ScsiRequest, ScsiResponse } from '../scsi/port.js';
import { ScsiStatus, TmfCode } from '../scsi/port.js';
import { buildSense, Sense } from '../scsi/sense.js';
import type { NegotiatedParams } from './login/negotiation.js';
import { sendTargets } from './login/discovery.js';
import type { LoginEnvironment, TargetInfo } from './login/login-machine.js';
import { parseText, serializeText } from './login/text.js';
import { decodeLun } from './pdu/lun.js';
import { senseSegment } from './pdu/encode.js';
import {
  Opcode,
  RESERVED_TAG,
  RejectReason,
  TmfFunction,
  TmfResponse,
  type DataOut,
  type InitiatorPdu,
  type LogoutRequest,
  type NopOut,
  type RejectPdu,
  type ScsiCommandPdu,
  type TargetPdu,
  type TaskMgmtRequest,
  type TextRequest,
} from './pdu/types.js';
import { snAdd, snInWindow, snLt } from './serial.js';
import type { IscsiSettings } from './settings.js';

/** What a session needs from its connection (the socket edge). */
export interface SessionConnection {
  /** Queue a PDU for sending; the connection fills StatSN where `advanceStatSN` says so. */
  send(pdu: TargetPdu): void;
  /** Close the connection (after flushing what was queued). */
  close(reason: string): void;
  readonly id: string;
}

const enum TaskState {
  /** Arrived out of CmdSN order; waits for the gap to fill. */
  Queued,
  /** In order; waiting for Data-Out. */
  Receiving,
  /** Handed to the SCSI layer. */
  Executing,
  Done,
}

interface R2TState {
  offset: number;
  length: number;
  received: number;
  /** DataSN the next Data-Out of this sequence must carry (each sequence starts at 0). */
  nextDataSN: number;
}

interface Task {
  itt: number;
  cmdSN: number;
  immediate: boolean;
  pdu: ScsiCommandPdu;
  lun: number;
  state: TaskState;
  edtl: number;
  /** Write data gathered so far (null for commands without Data-Out). */
  buffer: Buffer | null;
  /** buffer came from writeBuffers and goes back there once the SCSI layer is done. */
  pooled: boolean;
  received: number;
  /** Bytes the initiator may send without R2T (immediate + unsolicited Data-Out). */
  unsolicitedLimit: number;
  unsolicitedReceived: number;
  unsolicitedDataSN: number;
  nextSolicit: number;
  r2ts: Map<number, R2TState>;
  r2tSN: number;
  aborted: boolean;
  request?: ScsiRequest;
  /**
   * Called when the SCSI layer is done with the task. Only task management
   * waits for that, so the list is made when it asks (see whenFinished), not
   * per command.
   */
  onFinished?: (() => void)[];
}

/** Resolves when the SCSI layer is done with an executing task. */
function whenFinished(t: Task): Promise<void> {
  return new Promise<void>((resolve) => (t.onFinished ??= []).push(resolve));
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

export class Session {
  readonly tsih: number;
  readonly isid: number;
  readonly params: NegotiatedParams;
  readonly type: SessionType;
  readonly targetName: string | undefined;
  readonly nexus: Nexus | undefined;
  private readonly port: ScsiPort | undefined;
  private readonly settings: IscsiSettings;
  private readonly init: SessionInit;
  private conn: SessionConnection | null = null;

  private expCmdSN: number;
  private maxCmdSN: number;
  private readonly tasks = new Map<number, Task>();
  /** Non-immediate PDUs received ahead of ExpCmdSN, by CmdSN. */
  private readonly pending = new Map<number, InitiatorPdu>();
  /** ITTs of tasks aborted recently: their late Data-Out PDUs are dropped silently. */
  private readonly abortedItts = new Set<number>();
  /** CmdSNs an ABORT TASK named before the command arrived: never execute them. */
  private readonly abortedCmdSNs = new Set<number>();
  private nextTtt = 1;
  /** Tasks handed to SCSI and not yet done (limits the window). */
  private active = 0;
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
    this.port = init.port;
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

  attach(conn: SessionConnection): void {
    this.conn = conn;
  }

  /** Commands received and not yet answered (a draining portal waits for none). */
  get outstandingTasks(): number {
    return this.tasks.size;
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
    for (const t of this.tasks.values()) t.aborted = true;
    if (this.tasks.size > 0) log.debug('session closing with outstanding tasks', { tsih: this.tsih, tasks: this.tasks.size });
    this.tasks.clear();
    this.pending.clear();
    const c = this.conn;
    this.conn = null;
    if (c) c.close(reason);
    if (nexusLost && this.nexus && this.port) this.port.nexusLost(this.nexus);
    this.init.onClosed(this);
  }

  // ---------------------------------------------------------------- input

  /** Entry point for every full-feature-phase PDU from the initiator. */
  receive(pdu: InitiatorPdu, header: Buffer): void {
    if (this.closed) return;
    switch (pdu.opcode) {
      case Opcode.DataOut:
        this.onDataOut(pdu, header);
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
      if (pdu.opcode === Opcode.ScsiCommand) this.registerTask(pdu, TaskState.Queued);
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

  private readonly pendingHeaders = new Map<number, Buffer>();

  private deliverInOrder(pdu: InitiatorPdu, header: Buffer): void {
    this.expCmdSN = snAdd(this.expCmdSN, 1);
    this.updateMaxCmdSN();
    const cmdSN = (pdu as { cmdSN: number }).cmdSN;
    if (this.abortedCmdSNs.delete(cmdSN)) {
      if (pdu.opcode === Opcode.ScsiCommand) {
        this.tasks.delete(pdu.itt);
        this.abortedItts.add(pdu.itt);
      }
      return;
    }
    this.dispatch(pdu, header);
  }

  private dispatch(pdu: InitiatorPdu, header: Buffer): void {
    switch (pdu.opcode) {
      case Opcode.ScsiCommand:
        this.onCommand(pdu, header);
        break;
      case Opcode.NopOut:
        this.onNopOut(pdu);
        break;
      case Opcode.TaskMgmtRequest:
        void this.onTaskManagement(pdu);
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
    const candidate = snAdd(this.expCmdSN, Math.max(0, this.settings.queueDepth - this.active) - 1);
    if (snLt(this.maxCmdSN, candidate)) this.maxCmdSN = candidate;
  }

  // ---------------------------------------------------------------- SCSI commands

  private registerTask(pdu: ScsiCommandPdu, state: TaskState): Task {
    const edtl = pdu.expectedDataTransferLength >>> 0;
    const p = this.params;
    const immediateLen = pdu.data.length;
    const unsolicitedLimit = pdu.write ? Math.min(edtl, pdu.final ? immediateLen : Math.max(immediateLen, p.firstBurstLength)) : 0;
    const task: Task = {
      itt: pdu.itt,
      cmdSN: pdu.cmdSN,
      immediate: pdu.immediate,
      pdu,
      lun: decodeLun(pdu.lun),
      state,
      edtl,
      buffer: null,
      pooled: false,
      received: 0,
      unsolicitedLimit,
      unsolicitedReceived: 0,
      unsolicitedDataSN: 0,
      nextSolicit: unsolicitedLimit,
      r2ts: new Map(),
      r2tSN: 0,
      aborted: false,
    };
    if (pdu.write && edtl > 0) {
      if (immediateLen === edtl) {
        task.buffer = pdu.data; // all data arrived with the command: no copy
      } else {
        task.pooled = writeBuffers.fits(edtl, pdu.cdb);
        task.buffer = task.pooled ? writeBuffers.take(edtl) : Buffer.allocUnsafe(edtl);
        if (immediateLen > 0) pdu.data.copy(task.buffer, 0);
      }
      task.received = immediateLen;
      task.unsolicitedReceived = immediateLen;
    }
    this.tasks.set(pdu.itt, task);
    return task;
  }

  private onCommand(pdu: ScsiCommandPdu, header: Buffer): void {
    const p = this.params;
    const dataLen = pdu.data.length;
    if (dataLen > 0 && (!pdu.write || !p.immediateData || dataLen > pdu.expectedDataTransferLength || dataLen > p.firstBurstLength)) {
      this.tasks.delete(pdu.itt);
      this.reject(RejectReason.ProtocolError, header);
      return;
    }
    if (pdu.read && pdu.write) {
      // Bidirectional commands are not offered by any command we implement.
      this.tasks.delete(pdu.itt);
      this.sendResponse(pdu.itt, { status: ScsiStatus.CheckCondition, sense: invalidFieldSense() }, 0, 0, pdu.expectedDataTransferLength, false);
      return;
    }
    let task = this.tasks.get(pdu.itt);
    if (!task) task = this.registerTask(pdu, TaskState.Receiving);
    else task.state = TaskState.Receiving;
    if (task.aborted) {
      this.tasks.delete(task.itt);
      return;
    }
    this.advanceTask(task);
  }

  /** Solicit more data, or execute once all of it is here. */
  private advanceTask(task: Task): void {
    if (task.state !== TaskState.Receiving) return;
    if (task.buffer && task.received < task.edtl) {
      this.solicit(task);
      return;
    }
    void this.execute(task);
  }

  private solicit(task: Task): void {
    const p = this.params;
    while (task.nextSolicit < task.edtl && task.r2ts.size < p.maxOutstandingR2T) {
      const length = Math.min(p.maxBurstLength, task.edtl - task.nextSolicit);
      const ttt = this.allocTtt();
      task.r2ts.set(ttt, { offset: task.nextSolicit, length, received: 0, nextDataSN: 0 });
      this.send({
        opcode: Opcode.R2T,
        immediate: false,
        ahs: [],
        data: EMPTY,
        lun: task.pdu.lun,
        itt: task.itt,
        ttt,
        statSN: 0,
        expCmdSN: 0,
        maxCmdSN: 0,
        r2tSN: task.r2tSN++,
        bufferOffset: task.nextSolicit,
        desiredDataTransferLength: length,
      });
      task.nextSolicit += length;
    }
  }

  private allocTtt(): number {
    const t = this.nextTtt;
    this.nextTtt = this.nextTtt >= 0x7fffffff ? 1 : this.nextTtt + 1;
    return t;
  }

  private onDataOut(pdu: DataOut, header: Buffer): void {
    const task = this.tasks.get(pdu.itt);
    if (!task) {
      if (this.abortedItts.has(pdu.itt)) return; // late data for an aborted task
      this.reject(RejectReason.InvalidPduField, header);
      return;
    }
    if (!task.buffer) {
      this.reject(RejectReason.ProtocolError, header);
      return;
    }
    const len = pdu.data.length;
    const end = pdu.bufferOffset + len;
    if (end > task.edtl) {
      this.reject(RejectReason.ProtocolError, header);
      return;
    }
    let r2t: R2TState | undefined;
    if (pdu.ttt === RESERVED_TAG) {
      if (task.unsolicitedReceived + len > task.unsolicitedLimit || end > task.unsolicitedLimit) {
        this.reject(RejectReason.ProtocolError, header);
        return;
      }
      if (pdu.dataSN !== task.unsolicitedDataSN) return this.dataSequenceError(task, header, pdu.dataSN, task.unsolicitedDataSN);
      task.unsolicitedDataSN++;
      task.unsolicitedReceived += len;
    } else {
      r2t = task.r2ts.get(pdu.ttt);
      if (!r2t || pdu.bufferOffset < r2t.offset || end > r2t.offset + r2t.length) {
        this.reject(RejectReason.InvalidPduField, header);
        return;
      }
      if (pdu.dataSN !== r2t.nextDataSN) return this.dataSequenceError(task, header, pdu.dataSN, r2t.nextDataSN);
      r2t.nextDataSN++;
      r2t.received += len;
    }
    if (len > 0) {
      // Already in place when dataOutDestination() had the parser assemble it there.
      if (pdu.data.buffer !== task.buffer.buffer || pdu.data.byteOffset !== task.buffer.byteOffset + pdu.bufferOffset) pdu.data.copy(task.buffer, pdu.bufferOffset);
      task.received += len;
    }
    if (r2t && (pdu.final || r2t.received >= r2t.length)) task.r2ts.delete(pdu.ttt);
    if (task.state === TaskState.Receiving && (task.received >= task.edtl || (r2t && !task.r2ts.has(pdu.ttt)))) this.advanceTask(task);
  }

  /**
   * Where the parser should assemble the data of the PDU with this BHS: for a
   * Data-Out that onDataOut() will accept (the same checks, without effects),
   * the range of its task's buffer, so the payload is copied once; otherwise
   * undefined (the parser's default).
   */
  dataOutDestination(bhs: Buffer, length: number): Buffer | undefined {
    if ((bhs[0]! & 0x3f) !== Opcode.DataOut || this.closed) return undefined;
    const task = this.tasks.get(bhs.readUInt32BE(16));
    // Only while the data phase is open: a pooled buffer is recycled once the command has run.
    if (!task || !task.buffer || task.aborted || (task.state !== TaskState.Receiving && task.state !== TaskState.Queued)) return undefined;
    const ttt = bhs.readUInt32BE(20);
    const dataSN = bhs.readUInt32BE(36);
    const offset = bhs.readUInt32BE(40);
    const end = offset + length;
    if (end > task.edtl) return undefined;
    if (ttt === RESERVED_TAG) {
      if (task.unsolicitedReceived + length > task.unsolicitedLimit || end > task.unsolicitedLimit || dataSN !== task.unsolicitedDataSN) return undefined;
    } else {
      const r2t = task.r2ts.get(ttt);
      if (!r2t || offset < r2t.offset || end > r2t.offset + r2t.length || dataSN !== r2t.nextDataSN) return undefined;
    }
    return task.buffer.subarray(offset, end);
  }

  /**
   * A Data-Out out of DataSN order. ERL 0 cannot ask for the missing PDU again, so the
   * PDU is rejected and the command ends with ABORTED COMMAND / DATA PHASE ERROR.
   */
  private dataSequenceError(task: Task, header: Buffer, got: number, want: number): void {
    log.warn('Data-Out DataSN out of order: failing the command', { session: this.tsih, itt: task.itt, got, want });
    this.reject(RejectReason.ProtocolError, header);
    this.tasks.delete(task.itt);
    this.abortedItts.add(task.itt);
    if (task.state === TaskState.Queued) this.abortedCmdSNs.add(task.cmdSN);
    task.aborted = true;
    this.sendResponse(task.itt, { status: ScsiStatus.CheckCondition, sense: buildSense(Sense.dataPhaseError, false) }, task.r2tSN, 0, task.edtl, false);
  }

  private async execute(task: Task): Promise<void> {
    const port = this.port;
    const nexus = this.nexus;
    if (!port || !nexus) return;
    task.state = TaskState.Executing;
    this.active++;
    const req: ScsiRequest = {
      nexus,
      lun: task.lun,
      cdb: task.pdu.cdb,
      attr: task.pdu.attr as number,
      tag: task.itt,
      dataOut: task.buffer,
      expectedLength: task.edtl,
    };
    task.request = req;
    let resp: ScsiResponse;
    try {
      resp = await port.execute(req);
    } catch (e) {
      log.error('SCSI layer threw', { err: (e as Error).message, cdb: task.pdu.cdb.toString('hex'), session: this.tsih });
      resp = { status: ScsiStatus.CheckCondition, sense: internalFailureSense() };
    }
    this.active--;
    task.state = TaskState.Done;
    if (task.pooled) {
      writeBuffers.give(task.buffer!);
      task.pooled = false;
      task.buffer = null;
      req.dataOut = null;
    }
    if (task.onFinished) for (const f of task.onFinished) f();
    if (this.closed) return;
    if (task.aborted || req.aborted) {
      this.abortedItts.add(task.itt);
      this.tasks.delete(task.itt);
      this.updateMaxCmdSN();
      return;
    }
    this.tasks.delete(task.itt);
    this.updateMaxCmdSN();
    this.complete(task, resp);
  }

  private complete(task: Task, resp: ScsiResponse): void {
    const edtl = task.edtl;
    const p = this.params;
    let dataSN = 0;
    let overflow = false;
    let underflow = false;
    let residual = 0;
    const data = resp.dataIn;
    if (task.pdu.read && data) {
      const n = Math.min(data.length, edtl);
      if (data.length > edtl) {
        overflow = true;
        residual = data.length - edtl;
      } else if (data.length < edtl) {
        underflow = true;
        residual = edtl - data.length;
      }
      const statusInData = resp.status === ScsiStatus.Good && !resp.sense && n > 0;
      const seg = p.initiatorMaxRecvDataSegmentLength;
      const burst = p.maxBurstLength;
      let off = 0;
      let inBurst = 0;
      while (off < n) {
        const len = Math.min(seg, n - off, burst - inBurst);
        const last = off + len >= n;
        inBurst += len;
        const endOfSeq = last || inBurst >= burst;
        if (endOfSeq) inBurst = 0;
        const withStatus = last && statusInData;
        this.send({
          opcode: Opcode.DataIn,
          immediate: false,
          ahs: [],
          data: data.subarray(off, off + len),
          final: endOfSeq,
          ack: false,
          overflow: withStatus && overflow,
          underflow: withStatus && underflow,
          hasStatus: withStatus,
          status: withStatus ? resp.status : 0,
          lun: withStatus ? 0n : task.pdu.lun,
          itt: task.itt,
          ttt: RESERVED_TAG,
          statSN: 0,
          expCmdSN: 0,
          maxCmdSN: 0,
          dataSN: dataSN++,
          bufferOffset: off,
          residualCount: withStatus ? residual : 0,
        });
        off += len;
      }
      if (statusInData) return;
    } else if (task.pdu.read && !data && edtl > 0) {
      underflow = true;
      residual = edtl;
    } else if (task.pdu.write || resp.dataOutLength !== undefined) {
      const wanted = resp.dataOutLength ?? edtl;
      if (wanted > edtl) {
        overflow = true;
        residual = wanted - edtl;
      } else if (wanted < edtl) {
        underflow = true;
        residual = edtl - wanted;
      }
      dataSN = task.r2tSN;
    } else if (!task.pdu.read && !task.pdu.write && edtl > 0) {
      underflow = true;
      residual = edtl;
    }
    this.sendResponse(task.itt, resp, dataSN, residual, edtl, overflow, underflow);
  }

  private sendResponse(itt: number, resp: ScsiResponse, expDataSN: number, residual: number, _edtl: number, overflow: boolean, underflow = false): void {
    this.send({
      opcode: Opcode.ScsiResponse,
      immediate: false,
      ahs: [],
      data: resp.sense ? senseSegment(resp.sense) : EMPTY,
      bidiOverflow: false,
      bidiUnderflow: false,
      overflow,
      underflow,
      response: 0,
      status: resp.status,
      itt,
      snack: 0,
      statSN: 0,
      expCmdSN: 0,
      maxCmdSN: 0,
      expDataSN,
      bidiResidualCount: 0,
      residualCount: overflow || underflow ? residual : 0,
    });
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

  // ---------------------------------------------------------------- Task management

  private async onTaskManagement(pdu: TaskMgmtRequest): Promise<void> {
    const respond = (response: TmfResponse): void => {
      if (this.closed) return;
      this.send({
        opcode: Opcode.TaskMgmtResponse,
        immediate: false,
        ahs: [],
        data: EMPTY,
        response,
        itt: pdu.itt,
        statSN: 0,
        expCmdSN: 0,
        maxCmdSN: 0,
      });
    };
    const port = this.port;
    const nexus = this.nexus;
    if (!port || !nexus) return respond(TmfResponse.Rejected);
    const lun = decodeLun(pdu.lun);
    const fn = pdu.fn;
    const lunScoped = fn === TmfFunction.AbortTask || fn === TmfFunction.AbortTaskSet || fn === TmfFunction.ClearTaskSet || fn === TmfFunction.LogicalUnitReset || fn === TmfFunction.ClearAca;
    if (lunScoped && !port.hasLun(lun)) return respond(TmfResponse.LunDoesNotExist);
    switch (fn) {
      case TmfFunction.AbortTask: {
        const task = this.tasks.get(pdu.referencedTaskTag);
        if (!task || task.lun !== lun) {
          // Not here: if its CmdSN is still ahead of us, make sure it never runs.
          if (snInWindow(pdu.refCmdSN, this.expCmdSN, this.maxCmdSN) && !snLt(pdu.refCmdSN, this.expCmdSN)) {
            this.abortedCmdSNs.add(pdu.refCmdSN);
            return respond(TmfResponse.Complete);
          }
          return respond(TmfResponse.TaskDoesNotExist);
        }
        await this.abortTasks([task]);
        return respond(TmfResponse.Complete);
      }
      case TmfFunction.AbortTaskSet:
        await this.abortTasks(this.tasksOn(lun));
        await port.taskManagement(TmfCode.AbortTaskSet, nexus, lun);
        return respond(TmfResponse.Complete);
      case TmfFunction.ClearTaskSet:
        await this.abortAcrossSessions((s) => s.tasksOn(lun));
        await port.taskManagement(TmfCode.ClearTaskSet, nexus, lun);
        return respond(TmfResponse.Complete);
      case TmfFunction.LogicalUnitReset:
        await this.abortAcrossSessions((s) => s.tasksOn(lun));
        await port.taskManagement(TmfCode.LogicalUnitReset, nexus, lun);
        return respond(TmfResponse.Complete);
      case TmfFunction.TargetWarmReset:
      case TmfFunction.TargetColdReset: {
        await this.abortAcrossSessions((s) => [...s.tasks.values()]);
        const code = fn === TmfFunction.TargetWarmReset ? TmfCode.TargetWarmReset : TmfCode.TargetColdReset;
        await port.taskManagement(code, nexus, lun);
        respond(TmfResponse.Complete);
        if (fn === TmfFunction.TargetColdReset) {
          // A cold reset drops every session of the target, this one last (after its response is queued).
          for (const s of this.init.directory.sessionsOfTarget(this.targetName ?? '')) if (s !== this) s.terminate('target cold reset', false);
          this.terminate('target cold reset', false);
        }
        return;
      }
      case TmfFunction.ClearAca:
        return respond(TmfResponse.NotSupported);
      case TmfFunction.TaskReassign:
        return respond(TmfResponse.ReassignmentNotSupported);
      default:
        return respond(TmfResponse.NotSupported);
    }
  }

  tasksOn(lun: number): Task[] {
    const out: Task[] = [];
    for (const t of this.tasks.values()) if (t.lun === lun) out.push(t);
    return out;
  }

  private async abortAcrossSessions(select: (s: Session) => Task[]): Promise<void> {
    const sessions = this.init.directory.sessionsOfTarget(this.targetName ?? '');
    await Promise.all(sessions.map((s) => s.abortTasks(select(s))));
  }

  /** Abort tasks (SAM-5): no response is sent for them; wait for those the SCSI layer is running. */
  async abortTasks(list: Task[]): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const t of list) {
      t.aborted = true;
      if (t.request) t.request.aborted = true;
      this.abortedItts.add(t.itt);
      if (t.state === TaskState.Executing) waits.push(whenFinished(t));
      else {
        this.tasks.delete(t.itt);
        if (t.state === TaskState.Queued) {
          // Keep the CmdSN slot so ordering continues, but never run it.
          this.abortedCmdSNs.add(t.cmdSN);
        }
      }
    }
    if (this.abortedItts.size > 4096) this.abortedItts.clear();
    await Promise.all(waits);
  }

  // ---------------------------------------------------------------- output

  private reject(reason: RejectReason, header: Buffer): void {
    this.send(rejectPdu(reason, header));
  }

  private send(pdu: TargetPdu): void {
    if (this.closed || !this.conn) return;
    this.conn.send(pdu);
  }
}

const EMPTY = Buffer.alloc(0);

/** A Reject carrying the rejected PDU's header; the connection fills the sequence numbers. */
export function rejectPdu(reason: RejectReason, header: Buffer): RejectPdu {
  return { opcode: Opcode.Reject, immediate: false, ahs: [], data: header.subarray(0, 48), reason, statSN: 0, expCmdSN: 0, maxCmdSN: 0, dataSN: 0 };
}

/**
 * Reuses the Data-Out buffers of large WRITEs. Each fresh buffer counts as V8
 * external memory, and tens of MB of it trigger a full mark-compact: with a
 * new 1 MiB buffer per command, 1 MiB sequential writes at depth 8 ran a
 * mark-compact every ~15 commands (docs/performance.md). Only WRITE(10/12/16)
 * data is pooled: those handlers are done with it when they complete, whereas
 * other commands' parameter data may be kept (e.g. a SANITIZE pattern).
 */
class WriteBufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private bytes = 0;

  constructor(
    private readonly minBytes: number,
    private readonly maxPooledBytes: number,
  ) {}

  fits(length: number, cdb: Buffer): boolean {
    const op = cdb[0];
    return length >= this.minBytes && (op === 0x2a || op === 0xaa || op === 0x8a);
  }

  take(length: number): Buffer {
    const list = this.free.get(length);
    const b = list?.pop();
    if (!b) return Buffer.allocUnsafe(length);
    this.bytes -= length;
    return b;
  }

  give(b: Buffer): void {
    if (this.bytes + b.length > this.maxPooledBytes) return;
    let list = this.free.get(b.length);
    if (!list) this.free.set(b.length, (list = []));
    list.push(b);
    this.bytes += b.length;
  }
}

const writeBuffers = new WriteBufferPool(64 * 1024, 32 * 1024 * 1024);

const invalidFieldSense = (): Buffer => buildSense(Sense.invalidFieldInCdb, false);
const internalFailureSense = (): Buffer => buildSense(Sense.internalTargetFailure, false);
