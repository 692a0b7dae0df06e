// Fault handling (docs/architecture.md, "Decisions"): one decision per segment however many
// I/Os or agents fault on it together. Faults on one segment join a case;
// the case looks at the segment's current state (the controller's table,
// not the state the agent reported, which may be stale), performs at most
// one table change at a time (allocate a zero segment, make a sole-owner
// no-write segment writable), and then answers every waiting fault. The
// allocations of every case of one vdisk that decide `allocate` together
// (typically all those that queued behind the vdisk's previous change) are
// one table change: one commit, one delta, one ack (AllocBatch).
//
// The decisions, in full (decide() and FAILURE below are this table in code):
//
//   state now      op          answer
//   normal         write-ish   write owner another agent, or CAW on an
//                              unowned segment of a vdisk with several
//                              exporters: the faulting agent becomes the
//                              owner, push, acks (the old owner acks once its
//                              in-flight CAW is done), RETRY to every such
//                              fault (another agent's faults again, later)
//   normal         any other   RETRY (the agent's table is behind)
//   zero           read/verify RETRY
//   zero           unmap       DONE (nothing to deallocate)
//   zero           other write allocate, push, acks, RETRY (a mirrored
//                              vdisk: `copies` legs in distinct domains, fewer
//                              (degraded) when domains run out)
//   no-write       read/verify RETRY
//   no-write       write-ish   being migrated: WAIT (RETRY once the remap is acked);
//                              refcount 1: make normal (and mark the segment
//                              dirty for a stale leg's resync), push, acks, RETRY;
//                              shared: copy-on-write: reserve new locations
//                              (one per copy), agents copy a healthy old leg
//                              to each, commit the writer's new mapping
//                              (normal), push, acks, RETRY; the old locations
//                              lose a reference (and a sole remaining
//                              writable holder gets them back normal)
//   invalid        any         WAIT, answered again when the state changes
//   error          read/verify FAIL 03/11/00; others FAIL 03/0C/00
//   (snapshot)     write-ish   FAIL 07/27/00: snapshots are read-only
//
//   and whatever the state:
//   vdisk unknown, removed, or not exported to the agent  FAIL 05/25/00
//   segment past the vdisk's end                          FAIL 05/21/00
//   allocation or copy-on-write: no container has room    FAIL 07/27/07
//     but room is only behind containers an exporting
//     agent cannot reach now (storage node away)           WAIT, looked at again each second
//   copy-on-write: no agent reaches both containers,
//     or the copy failed                                  FAIL 04/44/00
//   unknown op or state in the fault; handling threw      FAIL 04/44/00
//   an exporter away (allocate, make-writable, copy,
//     take ownership)                                     WAIT (see below)
//
// Replies go out only once every table change of the vdisk queued before
// has been acked (TableChanges.quiesce), so no agent acts on a version
// another has not installed. One exception saves a round trip: when the
// faulting agent is the vdisk's only holder, the RETRY for a change made
// for it goes right behind the delta on the same stream (#answerBehind);
// the change still waits for that ack before the vdisk's next change.
//
// An exporting agent that is not connected cannot be told of a change: the
// change (allocate, make-writable, copy) WAITs until that agent's lease has
// run out (AgentRegistry.exportersInLease; the agent then holds its zero and
// no-write segments itself until it has resynced), and the case looks again
// at that moment. Without a lease it waits for the agent to come back.
//
// Every fault is recorded for `tabula fault ls` with its outcome.

import { IoOp, SegmentState, inhibits, isIoOp, isReadOp, isSegmentState, ioOpName, segmentStateName } from '../table/index.js';
import { FaultAction, FAULT_ACTION_NAMES, type Fault, type FaultReply } from '../wire/proto-types.js';
import { debugEnabled, log } from '../util/log.js';
import { ContainerFullError, locKey } from './allocator.js';
import type { ControllerDb, Location, VdiskRow } from './db.js';
import { containerDomains } from './domains.js';
import type { AgentLink } from './agent-link.js';
import { isOverdue, type AgentCommands } from './agent-commands.js';
import type { AgentRegistry } from './agent-registry.js';
import type { ChangeContext, CommitResult, TableChanges } from './table-changes.js';
import type { WriteBehind } from './write-behind.js';
import type { Allocator } from './allocator.js';
import { Sense as ScsiSense, type Asc } from '../scsi/sense.js';
import type { MirrorManager } from './mirrors.js';

/**
 * Sense data the controller hands out (key, asc, ascq), named from the one
 * list of sense codes the SCSI layer reports (src/scsi/sense.ts), so what is
 * chosen here is what the initiator sees.
 */
export const SENSE = {
  /** MEDIUM ERROR, UNRECOVERED READ ERROR. */
  readError: tuple(ScsiSense.unrecoveredReadError),
  /** MEDIUM ERROR, WRITE ERROR. */
  writeError: tuple(ScsiSense.writeError),
  /** DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (container full). */
  spaceAllocationFailed: tuple(ScsiSense.spaceAllocationFailedWriteProtect),
  /** ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE. */
  lbaOutOfRange: tuple(ScsiSense.lbaOutOfRange),
  /** ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (vdisk not exported here). */
  luNotSupported: tuple(ScsiSense.lunNotSupported),
  /** HARDWARE ERROR, INTERNAL TARGET FAILURE (a fault the controller cannot act on; a copy that failed). */
  internalFailure: tuple(ScsiSense.internalTargetFailure),
  /** DATA PROTECT, WRITE PROTECTED (a write to a snapshot). */
  writeProtected: tuple(ScsiSense.writeProtected),
} as const satisfies Record<string, readonly [number, number, number]>;

function tuple(s: Asc): readonly [number, number, number] {
  return [s.key, s.asc, s.ascq];
}

type Sense = readonly [number, number, number];

/**
 * Every reason the controller fails a fault, and the sense data it chooses
 * for each (the table at the top of this file, in code).
 */
export const FAILURE = {
  /** Read or verify of a segment in state error. */
  readOfErrorSegment: SENSE.readError,
  /** Write-like op on a segment in state error. */
  writeToErrorSegment: SENSE.writeError,
  /** Write-like op on a snapshot's zero or no-write segment. */
  writeToSnapshot: SENSE.writeProtected,
  /** No eligible container has room for the allocation or copy a write needs. */
  containerFull: SENSE.spaceAllocationFailed,
  /** The vdisk does not exist (or was removed while the fault waited), or is not exported to the faulting agent. */
  noSuchVdisk: SENSE.luNotSupported,
  /** The segment is past the vdisk's end. */
  segmentOutOfRange: SENSE.lbaOutOfRange,
  /** The fault names an op or a segment state this controller does not know. */
  malformedFault: SENSE.internalFailure,
  /** Copy-on-write could not copy: no online agent reaches both containers, or the copy failed. */
  copyFailed: SENSE.internalFailure,
  /** Handling the fault threw. */
  internalError: SENSE.internalFailure,
} as const satisfies Record<string, Sense>;

type FailureCause = keyof typeof FAILURE;

type Decision =
  | { kind: 'retry' }
  | { kind: 'done' }
  | { kind: 'fail'; cause: FailureCause; reason: string }
  | { kind: 'wait'; reason: string }
  | { kind: 'allocate' }
  | { kind: 'make-writable' }
  | { kind: 'copy' }
  | { kind: 'take-ownership' };

type Action = 'allocate' | 'make-writable' | 'copy' | 'take-ownership';

/** How often a fault waiting for an unreachable container's room is looked at again. */
const UNREACHABLE_RECHECK_MS = 1000;
/** A vdisk's degraded allocations are logged at most this often. */
const DEGRADED_LOG_MS = 60_000;

const isAction = (d: Decision): boolean => d.kind === 'allocate' || d.kind === 'make-writable' || d.kind === 'copy' || d.kind === 'take-ownership';

/** What besides state, op and reference count a decision depends on. */
export interface DecideContext {
  /** The vdisk is a snapshot (read-only). */
  snapshot?: boolean;
  /** The segment's location is being copied by a migration. */
  migrating?: boolean;
  /** The segment's write owner (agent number; 0 or absent: none). */
  owner?: number;
  /** The faulting agent's number. */
  agent?: number;
  /** More than one agent exports the vdisk: COMPARE AND WRITE needs ownership. */
  shared?: boolean;
  /**
   * The state the agent reported. Ownership is moved only for a fault that
   * ownership caused (the agent reports no-write); a fault on a state that
   * changed since is answered RETRY and faults again if it still must.
   */
  reported?: SegmentState;
}

const WRITE_LIKE = (op: IoOp): boolean => !isReadOp(op);

/** The decision for one op on a segment in `state` with a location referenced `refcount` times. */
export function decide(state: SegmentState, op: IoOp, refcount: number, ctx: DecideContext = {}): Decision {
  const inh = inhibits(state, op);
  if (inh === 'proceed' && WRITE_LIKE(op) && (ctx.reported === undefined || ctx.reported === SegmentState.NoWrite)) {
    const owner = ctx.owner ?? 0;
    if (owner !== 0 ? owner !== ctx.agent : op === IoOp.CompareAndWrite && ctx.shared === true) return { kind: 'take-ownership' };
  }
  if (inh === 'proceed' || inh === 'zero-read') return { kind: 'retry' };
  if (inh === 'fail') {
    return isReadOp(op)
      ? { kind: 'fail', cause: 'readOfErrorSegment', reason: 'segment is in state error' }
      : { kind: 'fail', cause: 'writeToErrorSegment', reason: 'segment is in state error' };
  }
  if (ctx.snapshot && WRITE_LIKE(op) && (state === SegmentState.Zero || state === SegmentState.NoWrite)) {
    return { kind: 'fail', cause: 'writeToSnapshot', reason: 'vdisk is a snapshot (read-only)' };
  }
  switch (state) {
    case SegmentState.Zero:
      return op === IoOp.Unmap ? { kind: 'done' } : { kind: 'allocate' };
    case SegmentState.NoWrite:
      if (!WRITE_LIKE(op)) return { kind: 'retry' };
      if (ctx.migrating) return { kind: 'wait', reason: 'segment is being migrated' };
      return refcount <= 1 ? { kind: 'make-writable' } : { kind: 'copy' };
    case SegmentState.Invalid:
      return { kind: 'wait', reason: 'segment is invalid' };
    default:
      return { kind: 'wait', reason: `segment is ${segmentStateName(state)}` };
  }
}

/**
 * The reference count that decides between make-writable and copy-on-write:
 * the highest over the segment's legs (a snapshot shares every leg; one
 * moved by a migration for this vdisk alone is exclusive while the others
 * stay shared). 0 without a location.
 */
export function segmentRefcount(db: Pick<ControllerDb, 'refcount'>, locs: readonly Location[]): number {
  let n = 0;
  for (const l of locs) n = Math.max(n, db.refcount(l));
  return n;
}

/** The same locations in the same leg order. */
export function sameLocations(a: readonly Location[], b: readonly Location[]): boolean {
  return a.length === b.length && a.every((l, i) => l.containerId === b[i]?.containerId && l.offset === b[i]?.offset);
}

/** What the fault manager needs of the controller. */
export interface FaultHost {
  readonly db: ControllerDb;
  readonly allocator: Pick<Allocator, 'reserve' | 'unreserve' | 'awayWithRoom' | 'eligibleContainers' | 'freeSegments'>;
  /** The fault log is written behind the replies. */
  readonly writeBehind: Pick<WriteBehind, 'add'>;
  /** The controller is shutting down: nothing more is decided. */
  readonly closed: boolean;
  /** Locations (locKey) being copied by a migration. */
  readonly migrating: ReadonlySet<string>;
  readonly tables: Pick<TableChanges, 'table' | 'quiesce' | 'changeTable' | 'settleShared'>;
  readonly agents: Pick<AgentRegistry, 'exportersInLease' | 'soleHolder'>;
  readonly commands: Pick<AgentCommands, 'copyAgent' | 'copy'>;
  /** Decides leg faults of mirrored vdisks (mirrors.ts); absent: they are handled as any fault. */
  readonly mirrors?: Pick<MirrorManager, 'legFault'>;
}

/**
 * A fault's row in the fault log, written behind (FaultHost.writeBehind): its
 * id once inserted; before that, the outcome the insert writes with it.
 */
interface FaultRecord {
  id: number | null;
  outcome?: string;
  detail?: string;
}

interface Waiter {
  link: AgentLink;
  fault: Fault;
  record: FaultRecord;
  /** A WAIT reply already went out for it. */
  toldWait: boolean;
}

interface SegmentCase {
  key: string;
  vdiskId: string;
  seg: number;
  waiters: Waiter[];
  /** A decision (and maybe a table change) is in progress. */
  busy: boolean;
  /** Looks again when a disconnected exporter's lease runs out. */
  leaseTimer?: NodeJS.Timeout;
}

/**
 * Allocations of one vdisk made in one table change: every case that decides
 * `allocate` while the batch has not run yet joins it (cases released by the
 * same quiesce decide in the same turn), so faults that queued behind a
 * change are answered from one commit, one delta and one ack instead of one
 * each, in turn.
 */
interface AllocBatch {
  members: { c: SegmentCase; seen: SegmentState }[];
  /** The change ran (or failed): a later case starts a new batch. */
  closed: boolean;
  /** Per member (by case), the failure to answer with; absent: allocated (or left for the next round). */
  failed: Map<SegmentCase, Decision>;
  /** Settles once the change is acked; rejects with what the change threw. */
  done?: Promise<void>;
}

export class FaultManager {
  readonly #host: FaultHost;
  readonly #cases = new Map<string, SegmentCase>();
  /** When each vdisk's degraded allocation was last logged. */
  readonly #degradedLogged = new Map<string, number>();
  /** The allocation batch of each vdisk still open to joiners. */
  readonly #allocBatches = new Map<string, AllocBatch>();

  constructor(host: FaultHost) {
    this.#host = host;
  }

  /** Open cases (segments with faults waiting), for tests and metrics. */
  get openCases(): number {
    return this.#cases.size;
  }

  handle(link: AgentLink, f: Fault): void {
    const agent = link.name as string;
    const db = this.#host.db;
    const vdisk = db.vdisk(f.vdiskId);
    const opName = isIoOp(f.op) ? ioOpName(f.op) : `op#${String(f.op)}`;
    const stateName = isSegmentState(f.state) ? segmentStateName(f.state) : `state#${String(f.state)}`;
    // The fault log need not be durable, nor written before the reply: it
    // goes in with the next bookkeeping writes, after the messages of this turn.
    const record: FaultRecord = { id: null };
    const row = {
      time: new Date().toISOString(),
      agent,
      vdiskId: f.vdiskId,
      segment: f.segment,
      op: opName,
      lba: f.lba,
      blocks: f.blocks,
      state: stateName,
      tableVersion: f.tableVersion,
      detail: f.detail,
    };
    this.#host.writeBehind.add(() => {
      // Usually answered before this runs: one row written with its outcome, not an insert and an update.
      record.id = db.insertFault(record.outcome === undefined ? row : { ...row, outcome: record.outcome, detail: record.detail ?? row.detail });
    });
    const w: Waiter = { link, fault: f, record, toldWait: false };
    const reject = (cause: FailureCause, why: string): void => {
      const msg = `fault ${f.faultId} from agent ${agent}: ${why}`;
      log.error(msg);
      link.sendError(msg);
      this.#reply(w, { kind: 'fail', cause, reason: why }, 'error');
    };
    if (!vdisk) return reject('noSuchVdisk', `unknown vdisk ${f.vdiskId}`);
    if (!db.export(f.vdiskId, agent)) return reject('noSuchVdisk', `vdisk ${vdisk.name} is not exported to this agent`);
    if (!isIoOp(f.op)) return reject('malformedFault', `unknown operation ${String(f.op)}`);
    if (!isSegmentState(f.state)) return reject('malformedFault', `unknown segment state ${String(f.state)}`);
    if (!Number.isInteger(f.segment) || f.segment >= vdisk.segmentCount) {
      return reject('segmentOutOfRange', `segment ${f.segment} out of range (vdisk ${vdisk.name} has ${vdisk.segmentCount})`);
    }
    // Debug, not info: every fault is in the fault log (tabula fault ls) already.
    // Guarded: winston formats (timestamp, JSON) even what its level then drops.
    if (debugEnabled()) log.debug(`fault: agent ${agent} vdisk ${vdisk.name} segment ${f.segment} ${opName} lba ${f.lba}+${f.blocks} in state ${stateName} (table v${f.tableVersion})`);
    // A leg fault (one copy failed, another took the I/O) is decided per container, not per segment.
    if (typeof f.failedContainer === 'string' && f.failedContainer !== '' && this.#host.mirrors !== undefined) {
      this.#host.mirrors.legFault(f, (d) => this.#reply(w, d.kind === 'retry' ? d : { kind: 'fail', cause: 'internalError', reason: d.reason }));
      return;
    }
    const key = `${f.vdiskId}:${f.segment}`;
    let c = this.#cases.get(key);
    if (c === undefined) {
      c = { key, vdiskId: f.vdiskId, seg: f.segment, waiters: [], busy: false };
      this.#cases.set(key, c);
    }
    c.waiters.push(w);
    if (!c.busy) void this.#evaluate(c);
  }

  /** A table changed: cases left waiting on that vdisk look again. */
  onTableChanged(vdiskId: string): void {
    for (const c of this.#cases.values()) {
      if (c.vdiskId === vdiskId && !c.busy && c.waiters.length > 0) void this.#evaluate(c);
    }
  }

  /** The agent is gone: its held I/Os will be re-faulted after it reconnects. */
  dropLink(link: AgentLink): void {
    for (const c of [...this.#cases.values()]) {
      const left = c.waiters.filter((w) => w.link !== link);
      for (const w of c.waiters) if (w.link === link) this.#outcome(w, 'dropped', 'agent disconnected');
      c.waiters = left;
      if (left.length === 0 && !c.busy) this.#dropCase(c);
    }
  }

  async #evaluate(c: SegmentCase): Promise<void> {
    c.busy = true;
    try {
      // Each round performs at most one table change, then looks again:
      // faults that joined meanwhile are answered from the new state.
      for (let round = 0, takes = 0; round < 4 && c.waiters.length > 0; round++) {
        const host = this.#host;
        await host.tables.quiesce(c.vdiskId);
        if (host.closed) return;
        const vdisk = host.db.vdisk(c.vdiskId);
        if (!vdisk) {
          for (const w of c.waiters.splice(0)) this.#reply(w, { kind: 'fail', cause: 'noSuchVdisk', reason: 'vdisk was removed' });
          break;
        }
        const table = host.tables.table(c.vdiskId);
        if (c.seg >= table.segmentCount) {
          for (const w of c.waiters.splice(0)) this.#reply(w, { kind: 'fail', cause: 'segmentOutOfRange', reason: 'segment beyond the end' });
          break;
        }
        const row = host.db.segment(c.vdiskId, c.seg);
        const locs = row.containerId !== null && row.offset !== null ? host.db.locationsOfSegment(c.vdiskId, c.seg) : [];
        const refcount = segmentRefcount(host.db, locs);
        const owner = host.db.segmentOwner(c.vdiskId, c.seg);
        const dctx: DecideContext = {
          snapshot: vdisk.kind === 'snapshot',
          migrating: locs.some((l) => host.migrating.has(locKey(l))),
          owner,
          // Read only where decide() looks at it (a CAW on an unowned segment): a query saved per first write.
          shared: owner === 0 && c.waiters.some((w) => w.fault.op === IoOp.CompareAndWrite) && host.db.exportsOfVdisk(c.vdiskId).length > 1,
        };
        const numbers = new Map<AgentLink, number>();
        const agentOf = (w: Waiter): number => {
          let n = numbers.get(w.link);
          if (n === undefined) numbers.set(w.link, (n = host.db.agentNumber(w.link.name as string)));
          return n;
        };
        // The faulting agent's number matters only against an owner (decide()).
        let decisions = c.waiters.map((w) => decide(row.state, w.fault.op, refcount, { ...dctx, agent: owner !== 0 ? agentOf(w) : 0, reported: w.fault.state }));
        let action = decisions.find(isAction);
        const away = action !== undefined ? host.agents.exportersInLease(c.vdiskId) : { agents: [], waitMs: 0 };
        if (away.agents.length > 0) {
          // An exporting agent that is not connected would go on serving the old
          // table (stale zeros, the shared location) until its lease runs out:
          // the change waits for that (or for the agent to resync, or the I/O's hold).
          const until = Number.isFinite(away.waitMs) ? ` (its lease runs out in ${away.waitMs} ms)` : '';
          const reason = `agent ${away.agents.join(', ')} exporting vdisk ${vdisk.name} is not connected${until}`;
          this.#lookAgainIn(c, away.waitMs);
          decisions = decisions.map((d) => (isAction(d) ? { kind: 'wait', reason } : d));
          action = undefined;
        }
        if (action !== undefined && action.kind === 'take-ownership') {
          // Once per segment: the first such fault's agent gets it, and every
          // fault that asked for it is answered RETRY; another agent's piece
          // then faults again at the new version and gets its turn.
          const i = decisions.indexOf(action);
          const winner = c.waiters[i] as Waiter;
          await this.#takeOwnership(c, agentOf(winner), winner.link.name as string);
          const left: Waiter[] = [];
          c.waiters.forEach((w, j) => {
            if (decisions[j]?.kind === 'take-ownership') this.#reply(w, { kind: 'retry' });
            else left.push(w);
          });
          c.waiters = left;
          // Agents taking turns on a contended lock block keep joining: their
          // turns do not use up the rounds (bounded all the same).
          if (++takes < 64) round--;
          continue;
        }
        if (action !== undefined) {
          const kind = action.kind as Exclude<Action, 'take-ownership'>;
          const failed =
            kind === 'copy' && locs.length > 0
              ? await this.#copyOnWrite(c, locs, c.waiters[0]?.link.name ?? null)
              : await this.#act(c, kind as 'allocate' | 'make-writable', row.state);
          if (failed !== null && failed.kind === 'wait') {
            // Room is behind an unreachable container: hold, look again soon.
            for (const w of c.waiters) {
              if (w.toldWait) continue;
              w.toldWait = true;
              this.#send(w, FaultAction.Wait, [0, 0, 0], failed.reason);
              this.#outcome(w, 'wait', failed.reason);
            }
            this.#lookAgainIn(c, UNREACHABLE_RECHECK_MS);
            break;
          }
          if (failed !== null) {
            // The action failed (e.g. container full): every fault that needed it fails.
            const left: Waiter[] = [];
            for (const w of c.waiters) {
              const d = decide(row.state, w.fault.op, refcount, dctx);
              if (d.kind === kind) this.#reply(w, failed, 'fail');
              else left.push(w);
            }
            c.waiters = left;
          }
          continue;
        }
        const left: Waiter[] = [];
        c.waiters.forEach((w, i) => {
          const d = decisions[i] as Decision;
          if (d.kind === 'wait') {
            if (!w.toldWait) {
              w.toldWait = true;
              this.#send(w, FaultAction.Wait, [0, 0, 0], d.reason);
              this.#outcome(w, 'wait', d.reason);
            }
            left.push(w);
          } else {
            // Same turn as the read of `vdisk` (no change since): its version is the one to name.
            this.#reply(w, d, undefined, vdisk.version);
          }
        });
        c.waiters = left;
        break;
      }
    } catch (err) {
      log.error(`fault handling for vdisk ${c.vdiskId} segment ${c.seg} failed: ${(err as Error).message}`);
      for (const w of c.waiters.splice(0)) {
        this.#reply(w, { kind: 'fail', cause: 'internalError', reason: (err as Error).message }, 'error');
      }
    } finally {
      c.busy = false;
      if (c.waiters.length === 0) this.#dropCase(c);
    }
  }

  #dropCase(c: SegmentCase): void {
    if (c.leaseTimer !== undefined) clearTimeout(c.leaseTimer);
    c.leaseTimer = undefined;
    if (this.#cases.get(c.key) === c) this.#cases.delete(c.key);
  }

  /** Evaluates the case again in `ms` (a lease running out); no-op for Infinity. */
  #lookAgainIn(c: SegmentCase, ms: number): void {
    if (!Number.isFinite(ms)) return;
    if (c.leaseTimer !== undefined) clearTimeout(c.leaseTimer);
    c.leaseTimer = setTimeout(() => {
      c.leaseTimer = undefined;
      if (this.#cases.get(c.key) === c && !c.busy && c.waiters.length > 0 && !this.#host.closed) void this.#evaluate(c);
    }, ms + 1);
    c.leaseTimer.unref();
  }

  /** Makes `agent` (its number) the segment's write owner: one table change, pushed and acked (changeTable). */
  async #takeOwnership(c: SegmentCase, agent: number, name: string): Promise<void> {
    const host = this.#host;
    if (agent === 0) throw new Error(`agent ${name} has no number`);
    await host.tables.changeTable(c.vdiskId, (ctx) => ctx.setOwner(c.seg, agent));
    if (debugEnabled()) log.debug(`vdisk ${c.vdiskId} segment ${c.seg}: write owner is now agent ${name} (${agent})`);
  }

  /**
   * Performs the one table change; null on success (or when the state moved
   * meanwhile: the next round looks again), else the failure to answer with.
   * An allocation joins the vdisk's open batch (AllocBatch) when there is
   * one: one change allocates for every case in it.
   */
  async #act(c: SegmentCase, kind: 'allocate' | 'make-writable', seen: SegmentState): Promise<Decision | null> {
    const host = this.#host;
    const open = kind === 'allocate' ? this.#allocBatches.get(c.vdiskId) : undefined;
    if (open !== undefined && !open.closed && open.done !== undefined) {
      open.members.push({ c, seen });
      await open.done;
      return open.failed.get(c) ?? null;
    }
    const batch: AllocBatch = { members: [{ c, seen }], closed: false, failed: new Map() };
    const close = (): void => {
      batch.closed = true;
      if (this.#allocBatches.get(c.vdiskId) === batch) this.#allocBatches.delete(c.vdiskId);
    };
    if (kind === 'allocate') this.#allocBatches.set(c.vdiskId, batch);
    batch.done = (async () => {
      try {
        await host.tables.changeTable(
          c.vdiskId,
          (ctx) => {
            close();
            for (const m of batch.members) this.#change(ctx, kind, m.c, m.seen, batch.failed);
          },
          (r) => this.#answerBehind(batch.members, r),
          // A thin allocation commits lazily: durable by the group commit, or when an agent syncs (durability.ts).
          { lazy: kind === 'allocate' },
        );
      } finally {
        close();
      }
    })();
    await batch.done;
    return batch.failed.get(c) ?? null;
  }

  /** One case's part of the change (#act), inside its transaction; a failure to answer with goes in `failed`. */
  #change(ctx: ChangeContext, kind: 'allocate' | 'make-writable', c: SegmentCase, seen: SegmentState, failed: Map<SegmentCase, Decision>): void {
    const host = this.#host;
    const row = host.db.segment(c.vdiskId, c.seg);
    // The state may have moved while we queued for the vdisk: act only
    // on the state we decided for, and let the next round look again.
    if (row.state !== seen) return;
    try {
      if (kind === 'allocate' && ctx.vdisk.copies > 1) {
        // One leg per copy, in distinct domains; fewer (degraded, rebuilt
        // later) rather than a failed write while one domain has room.
        const [first, ...legs] = ctx.allocateLegs(1, ctx.vdisk.copies)[0] ?? [];
        if (first === undefined) throw new Error('allocator returned nothing');
        if (legs.length + 1 < ctx.vdisk.copies) this.#degraded(ctx.vdisk, c.seg, legs.length + 1, 'allocated');
        ctx.set(c.seg, SegmentState.Normal, first, legs);
      } else if (kind === 'allocate') {
        const [loc] = ctx.allocate(1);
        if (loc === undefined) throw new Error('allocator returned nothing');
        ctx.set(c.seg, SegmentState.Normal, loc);
      } else if (row.containerId !== null && row.offset !== null) {
        // Same primary: the extra legs stay. The write about to happen
        // is what a stale leg of this segment misses (write intent, for
        // its resync): recorded in the same transaction.
        ctx.set(c.seg, SegmentState.Normal, { containerId: row.containerId, offset: row.offset });
        host.db.markDirty(c.vdiskId, c.seg);
      }
    } catch (err) {
      // No room for this one (the allocator takes nothing before it throws):
      // the others of the batch still get theirs.
      if (!(err instanceof ContainerFullError)) throw err;
      failed.set(c, this.#outOfRoom(c.vdiskId, 1, err));
    }
  }

  /** Logs (at most once a minute per vdisk) that a mirrored segment got fewer legs than its copies. */
  #degraded(vdisk: VdiskRow, seg: number, legs: number, how: string): void {
    const now = Date.now();
    if (now - (this.#degradedLogged.get(vdisk.id) ?? -Infinity) < DEGRADED_LOG_MS) return;
    this.#degradedLogged.set(vdisk.id, now);
    log.warn(`vdisk ${vdisk.name} segment ${seg} ${how} with ${legs} of ${vdisk.copies} copies: not enough failure domains with room (degraded until rebuilt)`);
  }

  /**
   * An allocation found no room. If room is only missing because an
   * exporting agent cannot reach some containers now (a storage node
   * restarting, a cut link), the write waits, held by the agent, and the case
   * is looked at again each second; else the vdisk is out of space.
   */
  #outOfRoom(vdiskId: string, count: number, err: ContainerFullError, what?: string): Decision {
    const vdisk = this.#host.db.vdisk(vdiskId);
    const away = vdisk ? this.#host.allocator.awayWithRoom(vdisk, count) : [];
    if (away.length > 0) {
      const reason = `containers ${away.join(', ')} with room for vdisk ${vdisk?.name ?? vdiskId} are unreachable from an exporting agent`;
      log.warn(what !== undefined ? `${what}: ${reason}` : reason);
      return { kind: 'wait', reason };
    }
    log.error(what !== undefined ? `${what}: ${err.message}` : err.message);
    return { kind: 'fail', cause: 'containerFull', reason: err.message };
  }

  /**
   * Copy-on-write of one shared segment: reserve a location per copy the
   * vdisk keeps (distinct failure domains), have agents (the faulting one
   * when it can) copy a healthy leg of the old entry to each, in parallel,
   * then commit the new mapping for this vdisk only. A leg whose copy could
   * not run is left out (degraded) while another made it. Null on success
   * (or when the entry changed meanwhile: the next round looks again), else
   * the failure to answer with.
   */
  async #copyOnWrite(c: SegmentCase, old: readonly Location[], prefer: string | null): Promise<Decision | null> {
    const host = this.#host;
    const vdisk = host.db.vdisk(c.vdiskId);
    if (!vdisk) return { kind: 'fail', cause: 'noSuchVdisk', reason: 'vdisk was removed' };
    const what = `copy-on-write of vdisk ${vdisk.name} segment ${c.seg}`;
    let fresh: Location[];
    try {
      fresh = this.#reserveLegs(vdisk);
    } catch (err) {
      if (err instanceof ContainerFullError) return this.#outOfRoom(c.vdiskId, 1, err, what);
      throw err;
    }
    /** Legs committed in the new mapping (kept), legs whose copy is overdue (their `late` gives them up). */
    const kept = new Set<Location>();
    const overdue = new Set<Location>();
    let committed = false;
    try {
      // A failed container's leg may hold anything: copy only from the others.
      const sources = old.filter((l) => host.db.container(l.containerId)?.state !== 'failed');
      const plans = fresh.map((dst) => {
        for (const src of sources) {
          const agent = host.commands.copyAgent([src.containerId, dst.containerId], prefer);
          if (agent !== null) return { src, dst, agent };
        }
        return { src: sources[0] ?? (old[0] as Location), dst, agent: null };
      });
      if (plans.every((p) => p.agent === null)) {
        const p = plans[0];
        const reason = `${what} failed: no online agent reaches both containers ${p?.src.containerId ?? '?'} and ${p?.dst.containerId ?? '?'}`;
        log.error(reason);
        return { kind: 'fail', cause: 'copyFailed', reason };
      }
      const size = vdisk.segmentSize;
      const errors = await Promise.all(
        plans.map(async ({ src, dst, agent }) => {
          if (agent === null) return `no online agent reaches both containers ${src.containerId} and ${dst.containerId}`;
          log.info(`${what}: agent ${agent} copies ${src.containerId}@${src.offset} to ${dst.containerId}@${dst.offset}`);
          const err = await host.commands.copy(
            agent,
            { srcContainer: src.containerId, srcOffset: src.offset * size, dstContainer: dst.containerId, dstOffset: dst.offset * size, length: size },
            // The agent may still write the new location: it is given up only once the copy is over.
            { late: () => host.allocator.unreserve([dst], true) },
          );
          if (isOverdue(err)) overdue.add(dst);
          return err === null ? null : `agent ${agent} could not copy ${src.containerId}@${src.offset} to ${dst.containerId}@${dst.offset}: ${err}`;
        }),
      );
      const copied = plans.filter((_, i) => errors[i] === null).map((p) => p.dst);
      const failures = errors.filter((e): e is string => e !== null);
      if (copied.length === 0) {
        const reason = `${what} failed: ${failures.join('; ')}`;
        log.error(reason);
        host.db.event('cow', vdisk.name, reason);
        return { kind: 'fail', cause: 'copyFailed', reason };
      }
      if (failures.length > 0) log.warn(`${what}: ${failures.join('; ')}; the segment keeps ${copied.length} of ${vdisk.copies} copies`);
      const [first, ...legs] = copied as [Location, ...Location[]];
      await host.tables.changeTable(
        c.vdiskId,
        (ctx) => {
          const row = host.db.segment(c.vdiskId, c.seg);
          // Still the shared entry we copied (not removed, made writable, migrated, a leg dropped)?
          if (row.state !== SegmentState.NoWrite || !sameLocations(host.db.locationsOfSegment(c.vdiskId, c.seg), old)) return;
          if (legs.length > 0) ctx.set(c.seg, SegmentState.Normal, first, legs);
          else ctx.set(c.seg, SegmentState.Normal, first);
          if (legs.length + 1 < vdisk.copies) this.#degraded(vdisk, c.seg, legs.length + 1, 'copied on write');
          committed = true;
          for (const l of copied) kept.add(l);
        },
        (r) => this.#answerBehind([{ c }], r),
      );
    } finally {
      for (const l of fresh) if (!overdue.has(l)) host.allocator.unreserve([l], !(committed && kept.has(l)));
    }
    if (committed) await host.tables.settleShared(old);
    return null;
  }

  /**
   * New locations for one segment of `vdisk`, reserved until unreserve: one
   * per copy, each in a failure domain the others do not use (the emptiest
   * eligible container first); fewer when domains with room run out.
   * Throws ContainerFullError when not even one fits.
   */
  #reserveLegs(vdisk: VdiskRow): Location[] {
    const allocator = this.#host.allocator;
    if (vdisk.copies <= 1) return allocator.reserve(vdisk, 1);
    const eligible = allocator.eligibleContainers(vdisk);
    const domains = containerDomains(this.#host.db);
    const domainOf = (id: string): string => domains.get(id) ?? `container:${id}`;
    const out = allocator.reserve(vdisk, 1, eligible);
    const used = new Set(out.map((l) => domainOf(l.containerId)));
    while (out.length < vdisk.copies) {
      const left = eligible.filter((id) => !used.has(domainOf(id)) && allocator.freeSegments(id) > 0);
      if (left.length === 0) break;
      const [l] = allocator.reserve(vdisk, 1, left) as [Location];
      out.push(l);
      used.add(domainOf(l.containerId));
    }
    return out;
  }

  /**
   * Answers RETRY right behind the new table when the faulting agent is the
   * vdisk's only holder, instead of after its ack: the delta and the reply
   * go out in order on the same stream, and the reply names the version to
   * wait for, so the retried I/O runs on the new table. No other agent
   * serves the old entry, so the ack protects no one here; the change still
   * waits for it before the vdisk's next change. Saves the ack's round trip
   * (docs/architecture.md, "Retry behind the delta": RETRY means a newer table is on its way or already sent).
   */
  #answerBehind(members: readonly { c: SegmentCase }[], r: CommitResult): void {
    const host = this.#host;
    const sole = host.agents.soleHolder(r.vdiskId);
    if (sole === null) return;
    const vdisk = host.db.vdisk(r.vdiskId);
    if (!vdisk) return;
    for (const { c } of members) {
      if (!r.ranges.some(([first, end]) => c.seg >= first && c.seg < end)) continue;
      const row = host.db.segment(c.vdiskId, c.seg);
      if (row.state !== SegmentState.Normal) continue;
      const left: Waiter[] = [];
      for (const w of c.waiters) {
        const d = decide(row.state, w.fault.op, 1, { snapshot: vdisk.kind === 'snapshot' });
        // r.version: the version just committed and sent, the one the agent must wait for.
        if (w.link === sole && d.kind === 'retry') this.#reply(w, d, undefined, r.version);
        else left.push(w);
      }
      c.waiters = left;
    }
  }

  /** `version`: the vdisk's version when the caller knows it (else read from the DB). */
  #reply(w: Waiter, d: Decision, outcome?: string, version = this.#host.db.vdisk(w.fault.vdiskId)?.version ?? 0): void {
    let action: FaultAction;
    let sense: Sense = [0, 0, 0];
    let reason = '';
    switch (d.kind) {
      case 'retry':
        action = FaultAction.Retry;
        break;
      case 'done':
        action = FaultAction.Done;
        break;
      case 'fail':
        action = FaultAction.Fail;
        sense = FAILURE[d.cause];
        reason = d.reason;
        break;
      default:
        // 'wait' is sent by #evaluate; allocate/make-writable/copy never reach here.
        action = FaultAction.Wait;
        reason = 'reason' in d ? d.reason : '';
    }
    this.#send(w, action, sense, reason, version);
    this.#outcome(w, outcome ?? (FAULT_ACTION_NAMES[action] as string), reason);
  }

  /** Records a fault's outcome in the fault log (written behind, after its insert). */
  #outcome(w: Waiter, outcome: string, detail: string): void {
    const db = this.#host.db;
    const record = w.record;
    if (record.id === null) {
      // Not inserted yet: the insert writes it (as setFaultOutcome would, a detail only when given).
      record.outcome = outcome;
      if (detail !== '') record.detail = detail;
      return;
    }
    this.#host.writeBehind.add(() => {
      if (record.id !== null) db.setFaultOutcome(record.id, outcome, detail);
    });
  }

  #send(w: Waiter, action: FaultAction, sense: Sense, reason: string, version = 0): void {
    const reply: FaultReply = {
      faultId: w.fault.faultId,
      action,
      tableVersion: version,
      senseKey: sense[0],
      asc: sense[1],
      ascq: sense[2],
      reason,
    };
    w.link.send({ body: 'faultReply', faultReply: reply });
  }
}
