// Runs `tabula` from source as a real process for the CLI tests: one-shot
// commands, and daemons that are started, waited for and stopped
// (test/support/tabula-process.ts).
import { describeRun, type RunResult } from '../support/bounded-run.js';
import { SOURCE_LAUNCHER, runTabula, startDaemon as startTabulaDaemon, type Daemon } from '../support/tabula-process.js';

export { freeLoopbackPort } from '../support/process.js';
export { expectOneLineError, type Daemon } from '../support/tabula-process.js';

/** Runs one tabula command to completion (60 s at most). */
export function tabula(args: readonly string[], env?: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<RunResult> {
  return runTabula(SOURCE_LAUNCHER, args, { env, timeoutMs });
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

/**
 * Starts a daemon (`tabula controller`, `tabula agent`, `tabula up`) from
 * source and waits until its stdout matches `ready`. Logs go to `logFile`.
 * The process lives at most `lifetimeMs`.
 */
export function startDaemon(
  args: readonly string[],
  ready: RegExp,
  logFile: string,
  opts: { env?: NodeJS.ProcessEnv; readyMs?: number; lifetimeMs?: number } = {},
): Promise<Daemon> {
  return startTabulaDaemon(args, { label: `tabula ${args.join(' ')}`, launcher: SOURCE_LAUNCHER, logFile, ready, readyMs: opts.readyMs ?? 90_000, lifetimeMs: opts.lifetimeMs, env: opts.env });
}
