// `tabula` as a real process for the CLI and system tests: how to launch it
// (the build when it is current, else the sources through tsx), the
// environment it gets, one-shot commands, and daemons that are started,
// waited for and stopped. Each process is time-bounded and in its own process
// group (bounded-run.ts).
import { expect } from 'chai';
import type { ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeRun, killGroup, runBounded, spawnBounded, type RunResult } from './bounded-run.js';
import { exited, fileTail, repoRoot, terminate, waitExit } from './process.js';

/** `tabula` from source: test/support/tabula-entry.ts. */
export const ENTRY = fileURLToPath(new URL('./tabula-entry.ts', import.meta.url));

/** node arguments that run `tabula` from the sources. */
export const SOURCE_LAUNCHER: readonly string[] = ['--import', 'tsx', ENTRY];

function newestMtime(dir: string, ext: string): Map<string, number> {
  const out = new Map<string, number>();
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(ext)) out.set(p, statSync(p).mtimeMs);
    }
  };
  walk(dir);
  return out;
}

let launcher: readonly string[] | undefined;

/**
 * node arguments that run `tabula`: the compiled dist/ when it is at least
 * as new as every source file (as under `npm test`, which builds first), else
 * the sources, so a stale build is never what gets tested.
 */
export function tabulaLauncher(): readonly string[] {
  if (launcher !== undefined) return launcher;
  const root = repoRoot();
  let fresh = existsSync(join(root, 'dist', 'src', 'cli', 'main.js'));
  if (fresh) {
    for (const [src, mtime] of newestMtime(join(root, 'src'), '.ts')) {
      const js = join(root, 'dist', relative(root, src)).replace(/\.ts$/, '.js');
      if (!existsSync(js) || statSync(js).mtimeMs < mtime) {
        fresh = false;
        break;
      }
    }
  }
  launcher = fresh ? [join(root, 'bin', 'tabula.js')] : SOURCE_LAUNCHER;
  return launcher;
}

/** The environment for tabula processes: no TABULA_* settings leak in from the caller. */
export function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('TABULA_')) env[k] = v;
  return { ...env, ...extra };
}

/**
 * The command line that runs node with `args`: inside network namespace
 * `netns` (test/support/netns.ts) when given, through `ip netns exec`, which
 * execs node itself (so the pid under `timeout` is still node's).
 */
function nodeCommand(args: readonly string[], netns: string | undefined): [string, string[]] {
  return netns === undefined ? [process.execPath, [...args]] : ['ip', ['netns', 'exec', netns, process.execPath, ...args]];
}

/** Runs one tabula command to completion (or to `timeoutMs`) with a clean environment (in namespace `netns` when given). */
export function runTabula(launch: readonly string[], args: readonly string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; netns?: string } = {}): Promise<RunResult> {
  const [cmd, argv] = nodeCommand([...launch, ...args], opts.netns);
  return runBounded(cmd, argv, { timeoutMs: opts.timeoutMs ?? 60_000, env: cleanEnv(opts.env) });
}

/** The command failed (not by timing out) with exactly one line on stderr, starting `tabula: ` and matching `re`. */
export function expectOneLineError(r: RunResult, re: RegExp): void {
  expect(r.timedOut, describeRun(r)).to.equal(false);
  expect(r.exitCode, describeRun(r)).to.be.a('number').and.not.equal(0);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  expect(lines, `stderr of ${r.command}`).to.have.lengthOf(1);
  expect(lines[0]).to.match(/^tabula: /);
  expect(lines[0]).to.match(re);
}

/** One running `tabula` daemon (`child` is the timeout(1) wrapper it runs under). */
export class Daemon {
  #out = '';

  constructor(
    readonly label: string,
    readonly child: ChildProcess,
    readonly logFile: string,
  ) {
    child.stdout?.on('data', (c: Buffer) => (this.#out += c.toString()));
  }

  /** All it has printed on stdout so far. */
  get stdout(): string {
    return this.#out;
  }

  get running(): boolean {
    return !exited(this.child);
  }

  /**
   * The tabula process itself: `child` is the timeout(1) wrapper it runs
   * under, so a signal meant for the daemon alone (SIGTERM without the
   * wrapper's later SIGKILL) or its /proc figures go to this pid.
   */
  get processPid(): number {
    const pid = this.child.pid;
    if (pid === undefined) throw new Error(`${this.label}: not started`);
    const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
    if (kids.length !== 1) throw new Error(`${this.label}: expected one process under timeout ${pid}, found ${kids.length}`);
    return kids[0] as number;
  }

  /**
   * Sends `signal` to tabula itself. (Through `timeout` it would arrive too,
   * but `timeout -k` then SIGKILLs it after its grace: fine for SIGTERM, not for SIGHUP.)
   */
  signal(signal: NodeJS.Signals): void {
    if (!this.running) throw new Error(`${this.label} is not running`);
    process.kill(this.processPid, signal);
  }

  /** Its stderr (logs), from its log file. */
  log(): string {
    try {
      return readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  logTail(lines = 10): string {
    return fileTail(this.logFile, lines, '');
  }

  /** Resolves when stdout matches `re`; rejects if the process exits first or after `ms`. */
  waitStdout(re: RegExp, ms: number): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.child.stdout?.off('data', check);
        this.child.off('exit', onExit);
      };
      const check = (): void => {
        const m = re.exec(this.#out);
        if (m) {
          done();
          resolve(m);
        }
      };
      const onExit = (): void => {
        // The last stdout chunk may come with the exit.
        const m = re.exec(this.#out);
        done();
        if (m) resolve(m);
        else reject(new Error(`${this.label} exited (${this.child.signalCode ?? `status ${this.child.exitCode}`}) before printing ${re}; stdout: ${this.#out.trim()}\n${this.logTail()}`));
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.label} did not print ${re} within ${ms} ms; stdout: ${this.#out.trim()}\n${this.logTail()}`));
      }, ms);
      this.child.stdout?.on('data', check);
      this.child.once('exit', onExit);
      check();
    });
  }

  /** SIGKILL the daemon's whole process group: a crash, no cleanup. */
  async kill(): Promise<void> {
    if (this.child.pid !== undefined) killGroup(this.child.pid, 'SIGKILL');
    await waitExit(this.child, 5000);
  }

  /** SIGTERM (the `timeout` wrapper passes it on), SIGKILL after `graceMs`; the exit status, null when it had to be killed. */
  async stop(graceMs = 15_000): Promise<number | null> {
    return (await terminate(this.child, graceMs)) ? this.child.exitCode : null;
  }
}

export interface DaemonOptions {
  /** Names the daemon in messages. */
  label: string;
  /** node arguments that run tabula (default: tabulaLauncher()). */
  launcher?: readonly string[];
  /** Its stderr (the logs) is appended here. */
  logFile: string;
  /** Stdout that says it is ready. */
  ready: RegExp;
  /** How long it may take to be ready (default 60 s). */
  readyMs?: number;
  /** It is killed after this long in any case (default 10 min). */
  lifetimeMs?: number;
  /** Passed through cleanEnv. */
  env?: NodeJS.ProcessEnv;
  /** Run inside this network namespace (test/support/netns.ts). */
  netns?: string;
}

/**
 * Starts a daemon (`tabula controller`, `tabula agent`, `tabula up`) and
 * waits until its stdout matches `ready`; a daemon that is not ready in time
 * is killed and the error carries its stdout and the tail of its log.
 */
export async function startDaemon(args: readonly string[], opts: DaemonOptions): Promise<Daemon> {
  const fd = openSync(opts.logFile, 'a');
  let d: Daemon;
  try {
    const [cmd, argv] = nodeCommand([...(opts.launcher ?? tabulaLauncher()), ...args], opts.netns);
    const child = spawnBounded(cmd, argv, opts.lifetimeMs ?? 10 * 60_000, ['ignore', 'pipe', fd], cleanEnv(opts.env));
    d = new Daemon(opts.label, child, opts.logFile);
  } finally {
    closeSync(fd);
  }
  try {
    await d.waitStdout(opts.ready, opts.readyMs ?? 60_000);
  } catch (err) {
    await d.kill();
    throw err;
  }
  return d;
}
