// The SCSI tasks of one session and their data transfer (RFC 7143 sections
// 4.2.2, 11.3-11.8): a task per SCSI Command, its write data gathered from
// immediate, unsolicited and R2T-solicited Data-Out PDUs, its execution
// through the ScsiPort, then Data-In sequencing, residuals and the SCSI
// Response. CmdSN ordering stays with the session (session.ts); aborting
// tasks is asked for by task management (task-management.ts).
import { log } from '../../util/log.js';
import type { Nexus, ScsiPort, ScsiRequest, ScsiResponse } from '../../scsi/port.js';
import { ScsiStatus } from '../../scsi/port.js';
import { buildSense, Sense } from '../../scsi/sense.js';
import type { NegotiatedParams } from '../login/negotiation.js';
import { senseSegment } from '../pdu/encode.js';
import { EMPTY } from '../pdu/layout.js';
import { decodeLun } from '../pdu/lun.js';
import { Opcode, RESERVED_TAG, RejectReason, type DataOut, type InitiatorPdu, type ScsiCommandPdu, type TargetPdu } from '../pdu/types.js';
import { writeBuffers } from './write-buffer-pool.js';

/** What the tasks need of their session. */
export interface TaskTransferHost {
  readonly tsih: number;
  readonly params: NegotiatedParams;
  readonly isClosed: boolean;
  send(pdu: TargetPdu): void;
  reject(reason: RejectReason, header: Buffer): void;
  /** A Target Transfer Tag unique in the session (R2T and Text continuations share them). */
  allocTtt(): number;
  /** A task left the SCSI layer: the CmdSN window may widen. */
  taskLeft(): void;
}

export const enum TaskState {
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

export interface Task {
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
  /** Open R2Ts by TTT; NO_R2TS (read-only, empty) for a task without solicited data. */
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

/**
 * The R2T map of a task that can never have one (no Data-Out beyond its
 * immediate data): shared and only ever read, a Map less per command.
 */
const NO_R2TS: ReadonlyMap<number, R2TState> = new Map();

/** Resolves when the SCSI layer is done with an executing task. */
function whenFinished(t: Task): Promise<void> {
  return new Promise<void>((resolve) => (t.onFinished ??= []).push(resolve));
}

/** How a Data-Out PDU fits its task. */
const enum DataOutFit {
  Fits,
  /** Outside the task's buffer or its unsolicited allowance: Reject (protocol error). */
  OutOfBounds,
  /** Names no open R2T, or lies outside it: Reject (invalid PDU field). */
  NotSolicited,
  /** Right place, wrong DataSN: the command fails (ERL 0 cannot recover). */
  OutOfOrder,
}

/**
 * The checks of a Data-Out against its task (a task with a write buffer),
 * without effects: made by the parser's early look (dataOutDestination) and
 * again for the decoded PDU (onDataOut), which may meet a task changed since.
 */
function fitDataOut(task: Task, ttt: number, dataSN: number, offset: number, length: number): DataOutFit {
  const end = offset + length;
  if (end > task.edtl) return DataOutFit.OutOfBounds;
  if (ttt === RESERVED_TAG) {
    if (task.unsolicitedReceived + length > task.unsolicitedLimit || end > task.unsolicitedLimit) return DataOutFit.OutOfBounds;
    return dataSN === task.unsolicitedDataSN ? DataOutFit.Fits : DataOutFit.OutOfOrder;
  }
  const r2t = task.r2ts.get(ttt);
  if (!r2t || offset < r2t.offset || end > r2t.offset + r2t.length) return DataOutFit.NotSolicited;
  return dataSN === r2t.nextDataSN ? DataOutFit.Fits : DataOutFit.OutOfOrder;
}

export class TaskTransfer {
  private readonly tasks = new Map<number, Task>();
  /** ITTs of tasks aborted recently: their late Data-Out PDUs are dropped silently. */
  private readonly abortedItts = new Set<number>();
  /** CmdSNs an ABORT TASK named before the command arrived: never execute them. */
  private readonly abortedCmdSNs = new Set<number>();
  /** Tasks handed to SCSI and not yet done (limits the CmdSN window). */
  private active = 0;

  constructor(
    private readonly host: TaskTransferHost,
    private readonly port: ScsiPort | undefined,
    private readonly nexus: Nexus | undefined,
  ) {}

  /** Commands received and not yet answered. */
  get size(): number {
    return this.tasks.size;
  }

  /** Tasks the SCSI layer is running. */
  get executing(): number {
    return this.active;
  }

  has(itt: number): boolean {
    return this.tasks.has(itt);
  }

  get(itt: number): Task | undefined {
    return this.tasks.get(itt);
  }

  all(): Task[] {
    return [...this.tasks.values()];
  }

  onLun(lun: number): Task[] {
    const out: Task[] = [];
    for (const t of this.tasks.values()) if (t.lun === lun) out.push(t);
    return out;
  }

  /** A command that arrived ahead of its CmdSN: its Data-Out may come before it runs. */
  queue(pdu: ScsiCommandPdu): void {
    this.register(pdu, TaskState.Queued);
  }

  /** Make sure the command with this CmdSN never runs (it has not arrived, or is queued). */
  neverRun(cmdSN: number): void {
    this.abortedCmdSNs.add(cmdSN);
  }

  /**
   * The PDU with this CmdSN is next in order: true if an abort named it,
   * in which case it is dropped (its slot in the order is used up).
   */
  dropIfAborted(cmdSN: number, pdu: InitiatorPdu): boolean {
    if (!this.abortedCmdSNs.delete(cmdSN)) return false;
    if (pdu.opcode === Opcode.ScsiCommand) {
      this.tasks.delete(pdu.itt);
      this.abortedItts.add(pdu.itt);
    }
    return true;
  }

  /** The session ends: every task is abandoned (responses of running ones are dropped). */
  abandonAll(): void {
    for (const t of this.tasks.values()) t.aborted = true;
    if (this.tasks.size > 0) log.debug('session closing with outstanding tasks', { tsih: this.host.tsih, tasks: this.tasks.size });
    this.tasks.clear();
  }

  /** Abort tasks (SAM-5): no response is sent for them; wait for those the SCSI layer is running. */
  async abort(list: Task[]): Promise<void> {
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

  // ---------------------------------------------------------------- command and Data-Out

  private register(pdu: ScsiCommandPdu, state: TaskState): Task {
    const edtl = pdu.expectedDataTransferLength >>> 0;
    const p = this.host.params;
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
      r2ts: pdu.write && edtl > immediateLen ? new Map() : (NO_R2TS as Map<number, R2TState>),
      r2tSN: 0,
      aborted: false,
    };
    if (pdu.write && edtl > 0) {
      if (immediateLen === edtl) {
        task.buffer = pdu.data; // all data arrived with the command: no copy
      } else {
        task.pooled = edtl >= writeBuffers.minBytes && this.port !== undefined && this.port.releasesDataOut(pdu.cdb);
        task.buffer = task.pooled ? writeBuffers.take(edtl) : Buffer.allocUnsafe(edtl);
        if (immediateLen > 0) pdu.data.copy(task.buffer, 0);
      }
      task.received = immediateLen;
      task.unsolicitedReceived = immediateLen;
    }
    this.tasks.set(pdu.itt, task);
    return task;
  }

  /** A SCSI Command PDU, in CmdSN order (or immediate). */
  onCommand(pdu: ScsiCommandPdu, header: Buffer): void {
    const p = this.host.params;
    const dataLen = pdu.data.length;
    if (dataLen > 0 && (!pdu.write || !p.immediateData || dataLen > pdu.expectedDataTransferLength || dataLen > p.firstBurstLength)) {
      this.tasks.delete(pdu.itt);
      this.host.reject(RejectReason.ProtocolError, header);
      return;
    }
    if (pdu.read && pdu.write) {
      // Bidirectional commands are not offered by any command we implement.
      this.tasks.delete(pdu.itt);
      this.sendResponse(pdu.itt, { status: ScsiStatus.CheckCondition, sense: invalidFieldSense() }, 0, 0, false);
      return;
    }
    let task = this.tasks.get(pdu.itt);
    if (!task) task = this.register(pdu, TaskState.Receiving);
    else task.state = TaskState.Receiving;
    if (task.aborted) {
      this.tasks.delete(task.itt);
      return;
    }
    this.advance(task);
  }

  /** Solicit more data, or execute once all of it is here. */
  private advance(task: Task): void {
    if (task.state !== TaskState.Receiving) return;
    if (task.buffer && task.received < task.edtl) {
      this.solicit(task);
      return;
    }
    this.execute(task);
  }

  private solicit(task: Task): void {
    const p = this.host.params;
    while (task.nextSolicit < task.edtl && task.r2ts.size < p.maxOutstandingR2T) {
      const length = Math.min(p.maxBurstLength, task.edtl - task.nextSolicit);
      const ttt = this.host.allocTtt();
      task.r2ts.set(ttt, { offset: task.nextSolicit, length, received: 0, nextDataSN: 0 });
      this.host.send({
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

  onDataOut(pdu: DataOut, header: Buffer): void {
    const task = this.tasks.get(pdu.itt);
    if (!task) {
      if (this.abortedItts.has(pdu.itt)) return; // late data for an aborted task
      this.host.reject(RejectReason.InvalidPduField, header);
      return;
    }
    if (!task.buffer) {
      this.host.reject(RejectReason.ProtocolError, header);
      return;
    }
    const len = pdu.data.length;
    switch (fitDataOut(task, pdu.ttt, pdu.dataSN, pdu.bufferOffset, len)) {
      case DataOutFit.Fits:
        break;
      case DataOutFit.OutOfBounds:
        this.host.reject(RejectReason.ProtocolError, header);
        return;
      case DataOutFit.NotSolicited:
        this.host.reject(RejectReason.InvalidPduField, header);
        return;
      case DataOutFit.OutOfOrder:
        this.dataSequenceError(task, header, pdu.dataSN, pdu.ttt === RESERVED_TAG ? task.unsolicitedDataSN : task.r2ts.get(pdu.ttt)!.nextDataSN);
        return;
    }
    let r2t: R2TState | undefined;
    if (pdu.ttt === RESERVED_TAG) {
      task.unsolicitedDataSN++;
      task.unsolicitedReceived += len;
    } else {
      r2t = task.r2ts.get(pdu.ttt)!;
      r2t.nextDataSN++;
      r2t.received += len;
    }
    if (len > 0) {
      // Already in place when dataOutDestination() had the parser assemble it there.
      if (pdu.data.buffer !== task.buffer.buffer || pdu.data.byteOffset !== task.buffer.byteOffset + pdu.bufferOffset) pdu.data.copy(task.buffer, pdu.bufferOffset);
      task.received += len;
    }
    if (r2t && (pdu.final || r2t.received >= r2t.length)) task.r2ts.delete(pdu.ttt);
    if (task.state === TaskState.Receiving && (task.received >= task.edtl || (r2t && !task.r2ts.has(pdu.ttt)))) this.advance(task);
  }

  /**
   * Where the parser should assemble the data of the PDU with this BHS: for a
   * Data-Out that onDataOut() will accept, the range of its task's buffer, so
   * the payload is copied once; otherwise undefined (the parser's default).
   */
  dataOutDestination(bhs: Buffer, length: number): Buffer | undefined {
    if ((bhs[0]! & 0x3f) !== Opcode.DataOut) return undefined;
    const task = this.tasks.get(bhs.readUInt32BE(16));
    // Only while the data phase is open: a pooled buffer is recycled once the command has run.
    if (!task || !task.buffer || task.aborted || (task.state !== TaskState.Receiving && task.state !== TaskState.Queued)) return undefined;
    const offset = bhs.readUInt32BE(40);
    if (fitDataOut(task, bhs.readUInt32BE(20), bhs.readUInt32BE(36), offset, length) !== DataOutFit.Fits) return undefined;
    return task.buffer.subarray(offset, offset + length);
  }

  /**
   * A Data-Out out of DataSN order. ERL 0 cannot ask for the missing PDU again, so the
   * PDU is rejected and the command ends with ABORTED COMMAND / DATA PHASE ERROR.
   */
  private dataSequenceError(task: Task, header: Buffer, got: number, want: number): void {
    log.warn('Data-Out DataSN out of order: failing the command', { session: this.host.tsih, itt: task.itt, got, want });
    this.host.reject(RejectReason.ProtocolError, header);
    this.tasks.delete(task.itt);
    this.abortedItts.add(task.itt);
    if (task.state === TaskState.Queued) this.abortedCmdSNs.add(task.cmdSN);
    task.aborted = true;
    this.sendResponse(task.itt, { status: ScsiStatus.CheckCondition, sense: buildSense(Sense.dataPhaseError, false) }, task.r2tSN, 0, false);
  }

  // ---------------------------------------------------------------- execution and response

  /** Hands the task to the SCSI layer; a command the port answers in this turn completes in it too (no promise). */
  private execute(task: Task): void {
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
    let r: ScsiResponse | Promise<ScsiResponse>;
    try {
      r = port.start !== undefined ? port.start(req) : port.execute(req);
    } catch (e) {
      r = Promise.reject(e);
    }
    if (r instanceof Promise) {
      r.then(
        (resp) => this.executed(task, req, resp),
        (e: unknown) => this.executed(task, req, this.failed(task, e)),
      );
      return;
    }
    this.executed(task, req, r);
  }

  private failed(task: Task, e: unknown): ScsiResponse {
    log.error('SCSI layer threw', { err: (e as Error).message, cdb: task.pdu.cdb.toString('hex'), session: this.host.tsih });
    return { status: ScsiStatus.CheckCondition, sense: internalFailureSense() };
  }

  /** The SCSI layer is done with the task: release its buffer, then answer unless it was aborted. */
  private executed(task: Task, req: ScsiRequest, resp: ScsiResponse): void {
    this.active--;
    task.state = TaskState.Done;
    if (task.pooled) {
      writeBuffers.give(task.buffer!);
      task.pooled = false;
      task.buffer = null;
      req.dataOut = null;
    }
    if (task.onFinished) for (const f of task.onFinished) f();
    if (this.host.isClosed) return;
    if (task.aborted || req.aborted) {
      this.abortedItts.add(task.itt);
      this.tasks.delete(task.itt);
      this.host.taskLeft();
      return;
    }
    this.tasks.delete(task.itt);
    this.host.taskLeft();
    this.complete(task, resp);
  }

  /** Data-In (status in the last one when it can be) and the SCSI Response, with residuals. */
  private complete(task: Task, resp: ScsiResponse): void {
    const edtl = task.edtl;
    const p = this.host.params;
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
        this.host.send({
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
    this.sendResponse(task.itt, resp, dataSN, residual, overflow, underflow);
  }

  private sendResponse(itt: number, resp: ScsiResponse, expDataSN: number, residual: number, overflow: boolean, underflow = false): void {
    this.host.send({
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
}

const invalidFieldSense = (): Buffer => buildSense(Sense.invalidFieldInCdb, false);
const internalFailureSense = (): Buffer => buildSense(Sense.internalTargetFailure, false);
