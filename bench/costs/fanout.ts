// Table delta fan-out (issue 5): one vdisk exported on 16 agents; the
// controller changes one segment and the clock runs from the commit to the
// last agent's ack. The controller is the real one (src/controller) in the
// bench's process, so the commit and the acks can be timed exactly; the 16
// agents are real `tabula agent` processes (they decode, apply through the
// device's drain-and-swap, and ack).
//
// Each change flips one segment between zero and invalid (no allocation, no
// copy: only the table moves), through the same commit-push-ack path as a
// fault's allocation or `segment set-state`.
//
// A/B of agent builds under the same load: BENCH_FANOUT_ENTRY_B=/other/checkout/bin/tabula.js
// starts every odd-numbered agent from that launcher; the CPU of each half is
// reported apart (the same changes, at the same moments, on the same machine:
// far steadier than alternating whole runs on a shared box). The other checkout
// needs its own build: `npx tsc -p tsconfig.json` there, and the native addon
// (build/Release/fileops.node, e.g. a link to this checkout's build/), or its
// agents exit at start and the run fails only once the start times out.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { startController } from '../../src/controller/daemon.js';
import { SegmentState } from '../../src/table/index.js';
import { Cluster } from '../../test/system/cluster.js';
import { LOOPBACK, freeLoopbackPort } from '../../test/support/process.js';
import { startDaemon } from '../../test/support/tabula-process.js';
import { cpuSeconds, onCleanup } from '../proc.js';
import { stats, type LatencyStats } from './fault-latency.js';

export interface FanoutResult {
  agents: number;
  changes: number;
  /** Commit (SQLite transaction, fsync) and send to every holder. */
  commitAndSend: LatencyStats;
  /** After commitAndSend returned -> the last agent's ack arrived. */
  sentToLastAck: LatencyStats;
  /** Start of the commit -> last ack. */
  commitToLastAck: LatencyStats;
  /** CPU time all agent processes together spent per change (user + system), over the timed changes. */
  agentCpuMsPerChange?: number;
  /** With BENCH_FANOUT_ENTRY_B: CPU per change of one agent (µs), this checkout's agents (A) and the other build's (B). */
  agentCpuUsPerAgentA?: number;
  agentCpuUsPerAgentB?: number;
  entryB?: string;
}

/**
 * CPU time of all of a process's threads in seconds, to the nanosecond
 * (/proc/PID/task/TID/schedstat), where /proc/PID/stat counts 10 ms ticks:
 * a few agents over a hundred changes are ~0.1 s, too few ticks to compare.
 */
function preciseCpuSeconds(pids: readonly number[]): number {
  let ns = 0;
  for (const p of pids) {
    let tids: string[] = [];
    try {
      tids = readdirSync(`/proc/${p}/task`);
    } catch {
      // exited: counted as nothing
    }
    for (const t of tids) {
      try {
        ns += Number(readFileSync(`/proc/${p}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
      } catch {
        // a thread gone between the listing and the read
      }
    }
  }
  return ns / 1e9;
}

/** An agent from another build's launcher (A/B), registered with the cluster so that it is stopped with it. */
async function startAgentFrom(c: Cluster, name: string, entry: string, containers: string[]): Promise<void> {
  const port = await freeLoopbackPort();
  const portal = `${LOOPBACK}:${port}`;
  const nodeArgs = (process.env.TABULA_SYSTEM_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
  const daemon = await startDaemon(['agent', '--controller', c.controllerAddress, '--name', name, '--portal', portal, '--containers', ...containers], {
    label: `agent-${name}`,
    launcher: [...nodeArgs, entry],
    logFile: join(c.dir, `agent-${name}.b.log`),
    ready: new RegExp(`agent ${name} serving on ${portal.replace(/\./g, '\\.')}`),
    env: { TABULA_LOG_LEVEL: 'info' },
  });
  c.agents.set(name, { name, daemon, portal, port });
}

function agentsCpuSeconds(pids: readonly number[]): number {
  let s = 0;
  for (const p of pids) {
    try {
      s += cpuSeconds(p);
    } catch {
      // exited: counted as nothing
    }
  }
  return s;
}

export async function measureFanout(opts: { agents: number; changes: number; warmup: number; log: (m: string) => void }): Promise<FanoutResult> {
  const c = await Cluster.create('bench-fanout');
  let closed = false;
  const handle = await startController({ dbPath: c.dbPath, listen: c.controllerAddress, ackTimeoutMs: 10_000 });
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await c.close(false);
    await handle.close();
  };
  onCleanup(close);
  try {
    await c.addContainer('c0.img', '256MiB');
    const names = Array.from({ length: opts.agents }, (_, i) => `a${i}`);
    opts.log(`bench: fan-out: starting ${opts.agents} agent processes`);
    const entryB = process.env.BENCH_FANOUT_ENTRY_B;
    const isB = (i: number): boolean => entryB !== undefined && entryB !== '' && i % 2 === 1;
    const containers = [join(c.dir, 'containers', '*.img')];
    await Promise.all(names.map((n, i) => (isB(i) ? startAgentFrom(c, n, entryB as string, containers) : c.startAgent(n, { containers }))));
    await c.cliOk(['vdisk', 'create', 'shared', '--size', '64MiB']);
    for (const n of names) await c.cliOk(['export', 'add', 'shared', '--agent', n]);
    await c.waitServed('shared', names, 120_000);
    const ctrl = handle.controller;
    const id = handle.db.vdisks().find((v) => v.name === 'shared')?.id;
    if (id === undefined) throw new Error('vdisk shared not found');
    const commit: number[] = [];
    const toAck: number[] = [];
    const total: number[] = [];
    opts.log(`bench: fan-out: ${opts.changes} changes (after ${opts.warmup} for warm-up) of one segment, each acked by ${opts.agents} agents`);
    const pids = names.map((n) => c.agent(n).daemon.processPid);
    const pidsA = pids.filter((_, i) => !isB(i));
    const pidsB = pids.filter((_, i) => isB(i));
    let cpu0 = 0;
    let cpuA0 = 0;
    let cpuB0 = 0;
    for (let i = 0; i < opts.changes + opts.warmup; i++) {
      if (i === opts.warmup) {
        cpu0 = agentsCpuSeconds(pids);
        cpuA0 = preciseCpuSeconds(pidsA);
        cpuB0 = preciseCpuSeconds(pidsB);
      }
      const seg = i % 64;
      const state = Math.floor(i / 64) % 2 === 0 ? SegmentState.Invalid : SegmentState.Zero;
      await ctrl.tables.serialize(id, async () => {
        const t0 = performance.now();
        const r = ctrl.tables.commitAndSend(id, (cx) => cx.set(seg, state, null));
        const t1 = performance.now();
        if (r === null) throw new Error(`segment ${seg}: the change changed nothing`);
        await ctrl.tables.awaitAcks(r);
        const t2 = performance.now();
        if (i < opts.warmup) return;
        commit.push(t1 - t0);
        toAck.push(t2 - t1);
        total.push(t2 - t0);
      });
    }
    const agentCpuMsPerChange = ((agentsCpuSeconds(pids) - cpu0) * 1000) / opts.changes;
    const perAgentUs = (p: number[], s0: number): number => ((preciseCpuSeconds(p) - s0) * 1e6) / opts.changes / p.length;
    const ab = pidsB.length > 0 ? { agentCpuUsPerAgentA: perAgentUs(pidsA, cpuA0), agentCpuUsPerAgentB: perAgentUs(pidsB, cpuB0), entryB } : {};
    const fenced = handle.db.exportsOfVdisk(id).filter((e) => e.fenced).length;
    if (fenced > 0) throw new Error(`${fenced} agents were fenced during the fan-out (missed an ack deadline)`);
    const result = { agents: opts.agents, changes: opts.changes, commitAndSend: stats(commit), sentToLastAck: stats(toAck), commitToLastAck: stats(total), agentCpuMsPerChange, ...ab };
    opts.log(
      `bench: fan-out to ${opts.agents} agents: commit->last ack median ${result.commitToLastAck.medianMs.toFixed(2)} ms ` +
        `p99 ${result.commitToLastAck.p99Ms.toFixed(2)} ms (commit+send median ${result.commitAndSend.medianMs.toFixed(2)} ms; agents' CPU ${agentCpuMsPerChange.toFixed(2)} ms per change, all ${opts.agents} together)`,
    );
    if (result.agentCpuUsPerAgentB !== undefined) {
      opts.log(`bench: fan-out A/B: CPU per change of one agent: A (this build) ${result.agentCpuUsPerAgentA?.toFixed(0)} us, B (${entryB}) ${result.agentCpuUsPerAgentB.toFixed(0)} us`);
    }
    return result;
  } finally {
    await close();
  }
}
