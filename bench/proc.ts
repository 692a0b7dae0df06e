// Process helpers for the benchmark: bounded child runs, CPU accounting from
// /proc, free loopback ports, and cleanup of everything the bench started.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

const CLK_TCK = 100; // USER_HZ on Linux (getconf CLK_TCK); /proc/PID/stat counts in these ticks

/** user + system CPU seconds of a process, all threads included (/proc/PID/stat fields 14 and 15). */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // the command name (field 2) may contain spaces: count fields after its closing parenthesis
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** Machine-wide CPU counters (/proc/stat "cpu" line), for busy/steal percentages over an interval. */
export interface CpuTimes {
  total: number;
  idle: number;
  steal: number;
}

export function machineCpu(): CpuTimes {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  return { total, idle: (v[3] ?? 0) + (v[4] ?? 0), steal: v[7] ?? 0 };
}

export function busyPercent(a: CpuTimes, b: CpuTimes): { busy: number; steal: number } {
  const t = b.total - a.total;
  if (t <= 0) return { busy: 0, steal: 0 };
  return { busy: (100 * (t - (b.idle - a.idle))) / t, steal: (100 * (b.steal - a.steal)) / t };
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  stdout: string;
  stderr: string;
}

/** Run a command to completion, killing its process group after timeoutMs. */
export function runBounded(cmd: string, args: string[], timeoutMs: number, opts: SpawnOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child, 'SIGKILL');
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${cmd}: ${e.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, timedOut, stdout, stderr });
    });
  });
}

/** Signal a detached child's whole process group (it was started with detached: true). */
export function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

/** Stop a child: SIGTERM, then SIGKILL after graceMs; resolves once it has exited. */
export function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => killGroup(child, 'SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    killGroup(child, 'SIGTERM');
  });
}

type Cleanup = () => Promise<void> | void;
const cleanups: Cleanup[] = [];
let cleaning: Promise<void> | null = null;

/** Register cleanup to run (last registered first) at the end, on a signal, or on a crash. */
export function onCleanup(fn: Cleanup): void {
  cleanups.push(fn);
}

export function runCleanups(): Promise<void> {
  cleaning ??= (async () => {
    while (cleanups.length > 0) {
      const fn = cleanups.pop()!;
      try {
        await fn();
      } catch (e) {
        process.stderr.write(`bench: cleanup failed: ${(e as Error).message}\n`);
      }
    }
  })();
  return cleaning;
}

export function installSignalCleanup(): void {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      process.stderr.write(`bench: ${sig}: stopping targets\n`);
      void runCleanups().finally(() => process.exit(130));
    });
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

let niceLevel = 0;

/**
 * Run targets and clients at this nice level (root may go below 0): on a
 * machine shared with other work it keeps them from being starved, equally
 * for every target. nice(1) execs the command, so pids stay the command's.
 */
export function setNice(n: number): void {
  niceLevel = n;
}

export function niced(cmd: string, args: string[]): [string, string[]] {
  return niceLevel === 0 ? [cmd, args] : ['nice', ['-n', String(niceLevel), cmd, ...args]];
}

/** Spawn a long-running daemon in its own process group, output to the given fd. */
export function spawnDaemon(cmd: string, args: string[], logFd: number, env?: NodeJS.ProcessEnv): ChildProcess {
  const [c, a] = niced(cmd, args);
  return spawn(c, a, { detached: true, stdio: ['ignore', 'pipe', logFd], env: env ?? process.env });
}
