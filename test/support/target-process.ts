// Start and stop an iSCSI target for interoperability tests: Tabula's
// standalone target (`tabula target`), or tgtd (Debian "tgt") as a reference
// to prove the harness itself. Each target gets a free loopback port, a fresh
// sparse backing file in its own temp dir, and a log file that is kept when a
// test fails.
import { existsSync, mkdtempSync, openSync, closeSync, ftruncateSync, rmSync, writeFileSync, createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { ChildProcess } from 'node:child_process';
import { spawnBounded, runBounded, describeRun } from './bounded-run.js';
import { TGTD_LUN, TGTD_PROBE, removeTgtdSockets, tgtdArgs, tgtdControlNumber, tgtdSetup, tgtdShutdown } from './tgtd.js';
import { LOOPBACK, exited, fileTail as tail, freeLoopbackPort, repoRoot, sleep, terminate, waitExit } from './process.js';

export type TargetKind = 'tabula' | 'tgtd';

export interface ChapCredentials {
  user: string;
  secret: string;
}

export interface TargetOptions {
  /** Which implementation to start (default: targetKindFromEnv()). */
  kind?: TargetKind;
  /** LUN size in bytes. */
  sizeBytes: number;
  /** Target name (default iqn.2026-11.org.tabula:interop-<port>). */
  iqn?: string;
  /** One-way CHAP: the initiator must authenticate with these. */
  chap?: ChapCredentials;
  /** Mutual CHAP: the target authenticates itself to the initiator with these. */
  mutualChap?: ChapCredentials;
  /** How long to wait for the target to accept connections (default 20 s). */
  readyTimeoutMs?: number;
  /** Upper bound on the target's lifetime; it is killed after that (default 30 min). */
  maxLifetimeMs?: number;
  /** Short label used in the temp dir name and messages. */
  label?: string;
}

export interface RunningTarget {
  kind: TargetKind;
  /** iscsi://127.0.0.1:PORT/IQN/LUN (no credentials) */
  url: string;
  host: string;
  port: number;
  /** HOST:PORT */
  portal: string;
  iqn: string;
  lun: number;
  sizeBytes: number;
  /** Temp dir holding the backing file and the logs. */
  dir: string;
  backingFile: string;
  /** The target's stderr (Tabula) or tgtd's output. */
  logFile: string;
  /** Pid of the time-bounding wrapper (also the process group id). */
  pid: number;
  /**
   * Stop the target (SIGTERM, SIGKILL after a grace period) and delete the
   * backing file; the dir with its logs is kept when keepLogs is true.
   */
  stop(opts?: { keepLogs?: boolean }): Promise<void>;
}

/** The target under test: env TABULA_INTEROP_TARGET=tgtd selects tgtd; default Tabula. */
export function targetKindFromEnv(): TargetKind {
  const v = (process.env.TABULA_INTEROP_TARGET ?? 'tabula').trim().toLowerCase();
  if (v === '' || v === 'tabula') return 'tabula';
  if (v === 'tgtd' || v === 'tgt') return 'tgtd';
  throw new Error(`TABULA_INTEROP_TARGET=${v}: expected "tabula" or "tgtd"`);
}

/** Start a target; rejects (after cleaning up) if it is not ready in time. */
export async function startTarget(opts: TargetOptions): Promise<RunningTarget> {
  const kind = opts.kind ?? targetKindFromEnv();
  const port = await freeLoopbackPort();
  const iqn = opts.iqn ?? `iqn.2026-11.org.tabula:interop-${port}`;
  const dir = mkdtempSync(join(tmpdir(), `tabula-interop-${opts.label ?? kind}-`));
  const backingFile = join(dir, 'lun.img');
  // A fresh sparse file: ftruncate allocates nothing.
  const fd = openSync(backingFile, 'w');
  try {
    ftruncateSync(fd, opts.sizeBytes);
  } finally {
    closeSync(fd);
  }
  const ctx: StartContext = {
    port,
    iqn,
    dir,
    backingFile,
    readyTimeoutMs: opts.readyTimeoutMs ?? 20_000,
    maxLifetimeMs: opts.maxLifetimeMs ?? 30 * 60_000,
    opts,
  };
  try {
    return kind === 'tabula' ? await startTabula(ctx) : await startTgtd(ctx);
  } catch (err) {
    // Keep the logs of a target that did not come up; drop the big file.
    rmSync(backingFile, { force: true });
    throw new Error(`${(err as Error).message}\n(logs kept in ${dir})`);
  }
}

interface StartContext {
  port: number;
  iqn: string;
  dir: string;
  backingFile: string;
  readyTimeoutMs: number;
  maxLifetimeMs: number;
  opts: TargetOptions;
}

/**
 * The running target as tests see it; `stopProcess` stops the process, and
 * stop() then deletes the backing file and, unless asked to keep them, the logs.
 */
function runningTarget(ctx: StartContext, kind: TargetKind, lun: number, logFile: string, pid: number, stopProcess: () => Promise<void>): RunningTarget {
  const portal = `${LOOPBACK}:${ctx.port}`;
  let stopped = false;
  return {
    kind,
    url: `iscsi://${portal}/${ctx.iqn}/${lun}`,
    host: LOOPBACK,
    port: ctx.port,
    portal,
    iqn: ctx.iqn,
    lun,
    sizeBytes: ctx.opts.sizeBytes,
    dir: ctx.dir,
    backingFile: ctx.backingFile,
    logFile,
    pid,
    async stop(o?: { keepLogs?: boolean }): Promise<void> {
      if (stopped) return;
      stopped = true;
      await stopProcess();
      rmSync(ctx.backingFile, { force: true });
      if (!(o?.keepLogs ?? false)) rmSync(ctx.dir, { recursive: true, force: true });
    },
  };
}

// ---------------------------------------------------------------- Tabula ----

async function startTabula(ctx: StartContext): Promise<RunningTarget> {
  const root = repoRoot();
  const entry = join(root, 'dist', 'src', 'cli', 'main.js');
  if (!existsSync(entry)) {
    throw new Error(`Tabula is not built (${entry} is missing): run \`npm run build:ts\` first`);
  }
  const portal = `${LOOPBACK}:${ctx.port}`;
  const args = [
    join(root, 'bin', 'tabula.js'),
    'target',
    '--file', ctx.backingFile,
    '--size', String(ctx.opts.sizeBytes),
    '--portal', portal,
    '--iqn', ctx.iqn,
  ];
  if (ctx.opts.chap) args.push('--chap', `${ctx.opts.chap.user}:${ctx.opts.chap.secret}`);
  if (ctx.opts.mutualChap) args.push('--mutual-chap', `${ctx.opts.mutualChap.user}:${ctx.opts.mutualChap.secret}`);
  const logFile = join(ctx.dir, 'target.log');
  writeFileSync(join(ctx.dir, 'command.txt'), `node ${args.join(' ')}\n`);
  const logFd = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawnBounded(process.execPath, args, ctx.maxLifetimeMs, ['ignore', 'pipe', logFd], {
      ...process.env,
      TABULA_LOG_LEVEL: process.env.TABULA_LOG_LEVEL ?? 'info',
    });
  } finally {
    closeSync(logFd);
  }
  const expected = `iscsi://${portal}/${ctx.iqn}/0`;
  // Everything the target prints on stdout goes to stdout.txt (the pipe must
  // keep draining after the ready line).
  const stdoutLog = createWriteStream(join(ctx.dir, 'stdout.txt'));
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`tabula target did not print ${expected} within ${ctx.readyTimeoutMs} ms; stderr:\n${tail(logFile)}`)),
        ctx.readyTimeoutMs,
      );
      const fail = (msg: string): void => {
        clearTimeout(timer);
        reject(new Error(msg));
      };
      lines.on('line', (line) => {
        if (!stdoutLog.writableEnded) stdoutLog.write(line + '\n');
        if (!line.startsWith('iscsi://')) return;
        clearTimeout(timer);
        if (line.trim() === expected) resolve();
        else reject(new Error(`tabula target printed ${JSON.stringify(line)}, expected ${expected}`));
      });
      child.once('error', (err) => fail(`cannot start tabula target: ${err.message}`));
      child.once('exit', (code, signal) =>
        fail(`tabula target exited (${signal ?? `code ${code}`}) before it was ready; stderr:\n${tail(logFile)}`),
      );
    });
  } catch (err) {
    await terminate(child, 3000);
    stdoutLog.end();
    throw err;
  }
  return runningTarget(ctx, 'tabula', 0, logFile, child.pid as number, async () => {
    await terminate(child, 10_000);
    stdoutLog.end();
  });
}

// ------------------------------------------------------------------ tgtd ----

async function tgtadm(ctl: number, args: readonly string[]): Promise<void> {
  const r = await runBounded('tgtadm', ['-C', String(ctl), ...args], { timeoutMs: 15_000 });
  if (r.exitCode !== 0) throw new Error(`tgtd setup failed: ${describeRun(r)}`);
}

/**
 * tgtd on 127.0.0.1:PORT only (with its own management channel so instances
 * do not collide), one target, one thin-provisioned file-backed disk at LUN 1 (tgt
 * keeps LUN 0 for its controller device), ACL restricted to loopback.
 */
async function startTgtd(ctx: StartContext): Promise<RunningTarget> {
  if (process.getuid?.() !== 0) throw new Error('tgtd needs root');
  const ctl = tgtdControlNumber(ctx.port);
  const portal = `${LOOPBACK}:${ctx.port}`;
  const logFile = join(ctx.dir, 'tgtd.log');
  removeTgtdSockets(ctl);
  const logFd = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawnBounded('tgtd', tgtdArgs(ctl, portal), ctx.maxLifetimeMs, ['ignore', logFd, logFd]);
  } finally {
    closeSync(logFd);
  }
  const stop = async (): Promise<void> => {
    if (!exited(child)) {
      for (const args of tgtdShutdown()) await runBounded('tgtadm', ['-C', String(ctl), ...args], { timeoutMs: 10_000 });
      await waitExit(child, 5000);
    }
    await terminate(child, 5000);
    removeTgtdSockets(ctl);
  };
  try {
    const deadline = Date.now() + ctx.readyTimeoutMs;
    for (;;) {
      if (exited(child)) throw new Error(`tgtd exited before it was ready; log:\n${tail(logFile)}`);
      const r = await runBounded('tgtadm', ['-C', String(ctl), ...TGTD_PROBE], { timeoutMs: 5000 });
      if (r.exitCode === 0) break;
      if (Date.now() > deadline) throw new Error(`tgtd management channel not up within ${ctx.readyTimeoutMs} ms; log:\n${tail(logFile)}`);
      await sleep(200);
    }
    const setup = { iqn: ctx.iqn, backingFile: ctx.backingFile, initiatorAddress: LOOPBACK, thin: true, digests: true, chap: ctx.opts.chap, mutualChap: ctx.opts.mutualChap };
    for (const args of tgtdSetup(setup)) await tgtadm(ctl, args);
  } catch (err) {
    await stop();
    throw err;
  }
  return runningTarget(ctx, 'tgtd', TGTD_LUN, logFile, child.pid as number, stop);
}

/** The target's URL with CHAP credentials: iscsi://user%secret@host:port/iqn/lun. */
export function urlWithChap(t: RunningTarget, c: ChapCredentials): string {
  // libiscsi splits the URL on '%', '@' and '/' without percent-decoding.
  for (const v of [c.user, c.secret]) {
    if (/[%@/?&\s]/.test(v)) throw new Error(`CHAP name or secret ${JSON.stringify(v)} cannot be put in an iSCSI URL`);
  }
  return `iscsi://${c.user}%${c.secret}@${t.portal}/${t.iqn}/${t.lun}`;
}
