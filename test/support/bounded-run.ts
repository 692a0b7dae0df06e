// Run external programs (iSCSI clients, qemu-img, tgtadm, ...) from tests with
// a hard time bound. Each child runs under coreutils `timeout` (so it dies even
// if the test process itself is killed) and in its own process group, and we
// also keep our own timer that SIGKILLs the group. Every live child group is
// killed when the test process exits.
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';

/** Process groups we started and have not yet seen exit. */
const liveGroups = new Set<number>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // mocha's --exit ends the process without waiting for after() hooks of a
  // timed-out test to finish their cleanup; this is the last line of defence.
  process.on('exit', () => {
    for (const pgid of liveGroups) killGroup(pgid, 'SIGKILL');
  });
}

/** Signal a process group we started; a group that is already gone is fine. */
export function killGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // ESRCH: already exited
  }
}

/**
 * Spawn `cmd args` under `timeout -k GRACE LIMIT` in a new process group and
 * track it until it exits. The returned child is the `timeout` process; its
 * pid is also the process group id.
 */
export function spawnBounded(
  cmd: string,
  args: readonly string[],
  limitMs: number,
  stdio: ['ignore' | 'pipe', 'pipe' | 'ignore' | number, 'pipe' | 'ignore' | number],
  env?: NodeJS.ProcessEnv,
  graceMs = 5000,
): ChildProcess {
  installExitHook();
  const secs = Math.max(1, Math.ceil(limitMs / 1000));
  const grace = Math.max(1, Math.ceil(graceMs / 1000));
  const child = spawn('timeout', ['-k', `${grace}s`, `${secs}s`, cmd, ...args], {
    detached: true,
    stdio,
    env: env ?? process.env,
  });
  const pid = child.pid;
  if (pid !== undefined) {
    liveGroups.add(pid);
    child.once('exit', () => {
      // The group may still hold grandchildren of a child that daemonised; they
      // belong to us, so make sure they go too.
      killGroup(pid, 'SIGKILL');
      liveGroups.delete(pid);
    });
  }
  return child;
}

export interface RunOptions {
  /** Hard limit for the whole run. */
  timeoutMs: number;
  env?: NodeJS.ProcessEnv;
  /** Send stdout and stderr, interleaved, to this file instead of capturing them. */
  outputFile?: string;
  /** Keep at most this many trailing bytes of each captured stream (default 4 MiB). */
  maxCapture?: number;
}

export interface RunResult {
  /** The command line, for error messages. */
  command: string;
  /** Exit code of the program (124/137 when `timeout` stopped it), null if signalled. */
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** True when the time limit stopped the program. */
  timedOut: boolean;
  stdout: string;
  stderr: string;
  durationMs: number;
}

/** Exit statuses with which `timeout` reports that it had to stop the program. */
export function isTimeoutStatus(code: number | null): boolean {
  return code === 124 || code === 137;
}

/** Run a program to completion (or to its time limit); never rejects for a non-zero exit. */
export function runBounded(cmd: string, args: readonly string[], opts: RunOptions): Promise<RunResult> {
  const started = Date.now();
  const maxCapture = opts.maxCapture ?? 4 << 20;
  const command = [cmd, ...args].join(' ');
  let fd: number | undefined;
  if (opts.outputFile !== undefined) fd = openSync(opts.outputFile, 'a');
  return new Promise<RunResult>((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawnBounded(cmd, args, opts.timeoutMs, ['ignore', fd ?? 'pipe', fd ?? 'pipe'], opts.env);
    } catch (err) {
      if (fd !== undefined) closeSync(fd);
      reject(new Error(`cannot start ${command}: ${(err as Error).message}`));
      return;
    }
    const out: Buffer[] = [];
    const errs: Buffer[] = [];
    const keep = (list: Buffer[], chunk: Buffer): void => {
      list.push(chunk);
      let total = list.reduce((n, b) => n + b.length, 0);
      while (total > maxCapture && list.length > 1) total -= (list.shift() as Buffer).length;
    };
    child.stdout?.on('data', (c: Buffer) => keep(out, c));
    child.stderr?.on('data', (c: Buffer) => keep(errs, c));
    let ownTimeout = false;
    // `timeout` should stop the program at the limit and SIGKILL it after the
    // grace period; this timer only fires if even that did not work.
    const timer = setTimeout(() => {
      ownTimeout = true;
      if (child.pid !== undefined) killGroup(child.pid, 'SIGKILL');
    }, opts.timeoutMs + 10_000);
    child.once('error', (err) => {
      clearTimeout(timer);
      if (fd !== undefined) closeSync(fd);
      reject(new Error(`cannot start ${command}: ${err.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (fd !== undefined) closeSync(fd);
      resolve({
        command,
        exitCode: code,
        signal,
        timedOut: ownTimeout || isTimeoutStatus(code),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(errs).toString('utf8'),
        durationMs: Date.now() - started,
      });
    });
  });
}

/** One-line description of how a run ended, with the tail of its stderr. */
export function describeRun(r: RunResult): string {
  const how = r.timedOut
    ? `timed out after ${r.durationMs} ms`
    : r.signal !== null
      ? `killed by ${r.signal}`
      : `exit ${r.exitCode}`;
  const tail = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-5).join(' | ');
  return `${r.command}: ${how}${tail ? `: ${tail}` : ''}`;
}
