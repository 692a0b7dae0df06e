// Task Management Function requests (RFC 7143 11.5, SAM-5 7): which tasks
// each function aborts, in this session or in every session of the target,
// waiting for those the SCSI layer is running; then the SCSI side of the
// function (unit attentions, reservation release) through the ScsiPort, and
// the response. The transport owns task bookkeeping; the device server owns
// the SCSI effects.
import type { Nexus, ScsiPort } from '../../scsi/port.js';
import { TmfCode } from '../../scsi/port.js';
import { EMPTY } from '../pdu/layout.js';
import { decodeLun } from '../pdu/lun.js';
import { Opcode, TmfFunction, TmfResponse, type TargetPdu, type TaskMgmtRequest } from '../pdu/types.js';
import { snInWindow, snLt } from '../serial.js';
import type { Task, TaskTransfer } from './task-transfer.js';

/** What task management needs of a session. */
export interface TaskManagementHost {
  readonly isClosed: boolean;
  readonly tasks: TaskTransfer;
  readonly window: { expCmdSN: number; maxCmdSN: number };
  send(pdu: TargetPdu): void;
  terminate(reason: string, nexusLost: boolean): void;
  /** Every session of this session's target, this one included (TMF scope across nexuses). */
  sessionsOfSameTarget(): TaskManagementHost[];
}

export class TaskManagement {
  constructor(
    private readonly session: TaskManagementHost,
    private readonly port: ScsiPort | undefined,
    private readonly nexus: Nexus | undefined,
  ) {}

  async handle(pdu: TaskMgmtRequest): Promise<void> {
    const respond = (response: TmfResponse): void => {
      if (this.session.isClosed) return;
      this.session.send({
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
    const tasks = this.session.tasks;
    const lun = decodeLun(pdu.lun);
    const fn = pdu.fn;
    const lunScoped = fn === TmfFunction.AbortTask || fn === TmfFunction.AbortTaskSet || fn === TmfFunction.ClearTaskSet || fn === TmfFunction.LogicalUnitReset || fn === TmfFunction.ClearAca;
    if (lunScoped && !port.hasLun(lun)) return respond(TmfResponse.LunDoesNotExist);
    switch (fn) {
      case TmfFunction.AbortTask: {
        const task = tasks.get(pdu.referencedTaskTag);
        if (!task || task.lun !== lun) {
          // Not here: if its CmdSN is still ahead of us, make sure it never runs.
          const { expCmdSN, maxCmdSN } = this.session.window;
          if (snInWindow(pdu.refCmdSN, expCmdSN, maxCmdSN) && !snLt(pdu.refCmdSN, expCmdSN)) {
            tasks.neverRun(pdu.refCmdSN);
            return respond(TmfResponse.Complete);
          }
          return respond(TmfResponse.TaskDoesNotExist);
        }
        await tasks.abort([task]);
        return respond(TmfResponse.Complete);
      }
      case TmfFunction.AbortTaskSet:
        await tasks.abort(tasks.onLun(lun));
        await port.taskManagement(TmfCode.AbortTaskSet, nexus, lun);
        return respond(TmfResponse.Complete);
      case TmfFunction.ClearTaskSet:
        await this.abortAcrossSessions((t) => t.onLun(lun));
        await port.taskManagement(TmfCode.ClearTaskSet, nexus, lun);
        return respond(TmfResponse.Complete);
      case TmfFunction.LogicalUnitReset:
        await this.abortAcrossSessions((t) => t.onLun(lun));
        await port.taskManagement(TmfCode.LogicalUnitReset, nexus, lun);
        return respond(TmfResponse.Complete);
      case TmfFunction.TargetWarmReset:
      case TmfFunction.TargetColdReset: {
        await this.abortAcrossSessions((t) => t.all());
        const code = fn === TmfFunction.TargetWarmReset ? TmfCode.TargetWarmReset : TmfCode.TargetColdReset;
        await port.taskManagement(code, nexus, lun);
        respond(TmfResponse.Complete);
        if (fn === TmfFunction.TargetColdReset) {
          // A cold reset drops every session of the target, this one last (after its response is queued).
          for (const s of this.session.sessionsOfSameTarget()) if (s !== this.session) s.terminate('target cold reset', false);
          this.session.terminate('target cold reset', false);
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

  private async abortAcrossSessions(select: (tasks: TaskTransfer) => Task[]): Promise<void> {
    const sessions = this.session.sessionsOfSameTarget();
    await Promise.all(sessions.map((s) => s.tasks.abort(select(s.tasks))));
  }
}
