// Runs `tabula` from source as a real process, time-bounded and in its own
// process group (test/support/bounded-run.ts), for the CLI tests: one-shot
// commands, and daemons that are started, waited for and stopped.
import { expect } from 'chai';
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describeRun, killGroup, runBounded, spawnBounded, type RunResult } from '../support/bounded-run.js';

export { freeLoopbackPort } from '../support/target-process.js';

export const ENTRY = fileURLToPath(new URL('./tabula-dev.ts', import.meta.url));

function nodeArgs(args: readonly string[]): string[] {
  return ['--import', 'tsx', ENTRY, ...args];
}

/** The environment for tabula processes: no TABULA_* settings leak in from the caller. */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('TABULA_')) env[k] = v;
  return { ...env, ...extra };
}

/** Runs one tabula command to completion (60 s at most). */
export function tabula(args: readonly string[], env?: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<RunResult> {
  return runBounded(process.execPath, nodeArgs(args), { timeoutMs, env: cleanEnv(env) });
}

/** Runs a command that must succeed; returns its stdout. */
export async function tabulaOk(args: readonly string[], env?: NodeJS.ProcessEnv): Promise<string> {
  const r = await tabula(args, env);
  if (r.exitCode !== 0) throw new Error(describeRun(r));
  return r.stdout;
}

/** Runs a command with --json that must succeed, and parses its stdout. */
export async function tabulaJson<T>(args: readonly string[], env?: NodeJS.ProcessEnv): Promise<T> {
  const out = await tabulaOk([...args, '--json'], env);
  return JSON.parse(out) as T;
}

/** The command failed (not by timing out) with exactly one line on stderr matching `re`. */
export function expectOneLineError(r: RunResult, re: RegExp): void {
  expect(r.timedOut, describeRun(r)).to.equal(false);
  expect(r.exitCode, describeRun(r)).to.be.a('number').and.not.equal(0);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  expect(lines, `stderr of ${r.command}`).to.have.lengthOf(1);
  expect(lines[0]).to.match(/^tabula: /);
  expect(lines[0]).to.match(re);
}

export interface Daemon {
  readonly stdout: () => string;
  /** The daemon's stderr (logs), from its log file. */
  readonly log: () => string;
  readonly child: ChildProcess;
  /** SIGTERM, then the exit status (SIGKILL after `graceMs`). */
  stop(graceMs?: number): Promise<number | null>;
  /** SIGKILL the whole process group. */
  kill(): Promise<void>;
  /**
   * Sends `signal` to tabula itself. (Through `timeout` it would arrive too,
   * but `timeout -k` then SIGKILLs it after its grace: fine for SIGTERM, not for SIGHUP.)
   */
  signal(signal: NodeJS.Signals): void;
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

/**
 * Starts a daemon (`tabula controller`, `tabula agent`, `tabula up`) and
 * waits until its stdout matches `ready`. Logs go to `logFile`. The process
 * lives at most `lifetimeMs`.
 */
export async function startDaemon(
  args: readonly string[],
  ready: RegExp,
  logFile: string,
  opts: { env?: NodeJS.ProcessEnv; readyMs?: number; lifetimeMs?: number } = {},
): Promise<Daemon> {
  const fd = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawnBounded(process.execPath, nodeArgs(args), opts.lifetimeMs ?? 10 * 60_000, ['ignore', 'pipe', fd], cleanEnv(opts.env));
  } finally {
    closeSync(fd);
  }
  let out = '';
  child.stdout?.on('data', (c: Buffer) => (out += c.toString()));
  const log = (): string => {
    try {
      return readFileSync(logFile, 'utf8');
    } catch {
      return '';
    }
  };
  const kill = async (): Promise<void> => {
    if (child.pid !== undefined) killGroup(child.pid, 'SIGKILL');
    await waitExit(child, 5000);
  };
  const readyMs = opts.readyMs ?? 90_000;
  const ok = await new Promise<boolean>((resolve) => {
    const t = setTimeout(() => resolve(false), readyMs);
    const check = (): void => {
      if (ready.test(out)) {
        clearTimeout(t);
        resolve(true);
      }
    };
    child.stdout?.on('data', check);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(ready.test(out));
    });
  });
  if (!ok) {
    await kill();
    const tail = log().trimEnd().split('\n').slice(-8).join('\n');
    throw new Error(`tabula ${args.join(' ')} not ready in ${readyMs} ms (exit ${String(child.exitCode)}); stdout: ${out.trim()}\n${tail}`);
  }
  return {
    stdout: () => out,
    log,
    child,
    async stop(graceMs = 15_000) {
      if (!exited(child)) {
        // The child is coreutils `timeout`, which passes SIGTERM on to tabula.
        child.kill('SIGTERM');
        if (!(await waitExit(child, graceMs))) {
          await kill();
          return null;
        }
      }
      return child.exitCode;
    },
    kill,
    signal(signal) {
      const pid = child.pid;
      if (pid === undefined || exited(child)) throw new Error(`tabula ${args.join(' ')} is not running`);
      const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter((k) => k !== '');
      for (const k of kids) process.kill(Number(k), signal);
    },
  };
}
