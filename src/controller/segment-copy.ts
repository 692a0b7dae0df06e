// Copying one segment's data between container locations while agents serve
// the vdisk: the steps after the entry is frozen (no-write, pushed) that the
// migration engine (migration.ts, steps 3-4) and the mirror rebuild
// (rebuild.ts) share. Whoever calls them has frozen the entry and holds its
// locations in `migrating` so that writes on it wait.
//
//   frozenEverywhere   every exporter has acked the version that froze the
//                      entry, so none still writes the source
//   copySegmentData    one agent reaching both containers copies it
//                      (CopyCommand / CopyDone); a copy that missed its
//                      deadline leaves the destination reserved until the
//                      silent agent answers (agent-commands.ts, `late`)

import type { ControllerDb, Location, VdiskRow } from './db.js';
import { isOverdue, type AgentCommands } from './agent-commands.js';
import type { AgentRegistry } from './agent-registry.js';
import type { Allocator } from './allocator.js';
import type { TableChanges } from './table-changes.js';
import type { WriteBehind } from './write-behind.js';

/** What copying a frozen segment needs of the controller (MigrationHost has all of it). */
export interface SegmentCopyHost {
  readonly db: Pick<ControllerDb, 'exportsOfVdisk'>;
  readonly allocator: Pick<Allocator, 'unreserve'>;
  readonly writeBehind: Pick<WriteBehind, 'flush'>;
  readonly closed: boolean;
  readonly tables: Pick<TableChanges, 'quiesce'>;
  readonly agents: Pick<AgentRegistry, 'link'>;
  readonly commands: Pick<AgentCommands, 'copy'>;
}

/**
 * Null once every exporter of the vdisk has acked `frozenAt` (the version
 * from which it sees the entry no-write), else why not: an exporter that
 * has not (offline, fenced) might still write the source, so the copy
 * would miss that write.
 */
export async function frozenEverywhere(host: SegmentCopyHost, vdisk: VdiskRow, frozenAt: number): Promise<string | null> {
  await host.tables.quiesce(vdisk.id);
  host.writeBehind.flush(); // acked versions
  const laggard = host.db.exportsOfVdisk(vdisk.id).find((e) => e.ackedVersion < frozenAt);
  if (laggard === undefined) return null;
  return `waiting for agent ${laggard.agent} to ack vdisk ${vdisk.name}'s table (acked version ${laggard.ackedVersion})`;
}

/** How a segment copy ended. */
export type CopyResult =
  | { kind: 'copied' }
  /** Try again later (another agent, or the same once it is back); `overdue`: the destination's reservation now belongs to the silent agent's `late`. */
  | { kind: 'retry'; reason: string; overdue: boolean }
  /** The agent answered with an error (the source cannot be read, say). */
  | { kind: 'failed'; reason: string };

/**
 * Has `agent` copy the segment at `src` to the reserved location `dst`.
 * On `overdue` the caller must not unreserve `dst`: the command's `late`
 * does, once the agent can no longer write there.
 */
export async function copySegmentData(host: SegmentCopyHost, agent: string, vdisk: VdiskRow, src: Location, dst: Location): Promise<CopyResult> {
  const err = await host.commands.copy(
    agent,
    {
      srcContainer: src.containerId,
      srcOffset: src.offset * vdisk.segmentSize,
      dstContainer: dst.containerId,
      dstOffset: dst.offset * vdisk.segmentSize,
      length: vdisk.segmentSize,
    },
    // The agent may still write the destination: it is given up only once the copy is over.
    { late: () => host.allocator.unreserve([dst], true) },
  );
  if (err === null) return { kind: 'copied' };
  // Tried again with another agent (AgentCommands.copyAgent puts this one last).
  if (isOverdue(err)) return { kind: 'retry', reason: err, overdue: true };
  // The agent went away mid-copy (or we are shutting down): another, or the same once back.
  if (host.closed || host.agents.link(agent) === undefined) return { kind: 'retry', reason: `copy on agent ${agent} interrupted: ${err}`, overdue: false };
  return { kind: 'failed', reason: `agent ${agent} could not copy ${src.containerId}@${src.offset} to ${dst.containerId}@${dst.offset}: ${err}` };
}

/** A copy loop's run that a pause can be cut short for (cancel, a new agent, a repair). */
export interface WakeableRun {
  wake: (() => void) | null;
}

/** Waits `ms`, or until `run.wake()` is called: the pause migration and rebuild take between tries. */
export function pauseRun(run: WakeableRun, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      run.wake = null;
      resolve();
    }, ms);
    run.wake = () => {
      clearTimeout(t);
      run.wake = null;
      resolve();
    };
  });
}
