// The targets under test: tgtd (the reference, Debian "tgt") and Tabula's
// standalone target, each on loopback over its own backing file. Each start
// registers its own cleanup, so an interrupted bench leaves no daemon behind.
import { openSync, closeSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { freePort, onCleanup, runBounded, sleep, spawnDaemon, stopChild } from './proc.js';
import { TGTD_LUN, TGTD_PROBE, removeTgtdSockets, tgtdArgs, tgtdControlNumber, tgtdSetup } from '../test/support/tgtd.js';

export interface RunningTarget {
  name: string;
  url: string;
  /** Pid whose CPU time is charged to the target. */
  pid: number;
  stop(): Promise<void>;
}

const HOST = '127.0.0.1'; // never anything but loopback

/** A target's log is kept when it says something; empty ones would pile up in the bench dir run after run. */
function removeIfEmpty(path: string): void {
  try {
    if (statSync(path).size === 0) rmSync(path, { force: true });
  } catch {
    // already gone
  }
}

/**
 * tgtd with one file-backed LUN (bstype rdwr, its default), like
 * ../shared/anchor-tgt/start-tgtd.sh: no thin provisioning or digests, which
 * the interop tests ask of it (test/support/tgtd.ts holds both set-ups).
 */
export async function startTgtd(backingFile: string, logDir: string): Promise<RunningTarget> {
  if (process.getuid?.() !== 0) throw new Error('tgtd needs root (run the bench as root, or --targets tabula)');
  const port = await freePort();
  const ctl = tgtdControlNumber(port);
  const iqn = `iqn.2026-01.org.tabula.bench:tgtd-${port}`;
  const logPath = join(logDir, `tgtd-${port}.log`);
  const logFd = openSync(logPath, 'a');
  const child = spawnDaemon('tgtd', tgtdArgs(ctl, `${HOST}:${port}`), logFd);
  closeSync(logFd);
  const stop = async (): Promise<void> => {
    await stopChild(child);
    removeIfEmpty(logPath);
    removeTgtdSockets(ctl);
  };
  onCleanup(stop);
  const adm = async (args: readonly string[]): Promise<void> => {
    const r = await runBounded('tgtadm', ['-C', String(ctl), ...args], 10_000);
    if (r.code !== 0) throw new Error(`tgtadm ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim()}`);
  };
  let up = false;
  for (let i = 0; i < 50 && !up; i++) {
    if (child.exitCode !== null) throw new Error(`tgtd exited with ${child.exitCode} (log in ${logDir})`);
    up = (await runBounded('tgtadm', ['-C', String(ctl), ...TGTD_PROBE], 5000)).code === 0;
    if (!up) await sleep(200);
  }
  if (!up) throw new Error(`tgtd management channel ${ctl} did not come up`);
  for (const args of tgtdSetup({ iqn, backingFile, initiatorAddress: HOST })) await adm(args);
  return { name: 'tgtd', url: `iscsi://${HOST}:${port}/${iqn}/${TGTD_LUN}`, pid: child.pid!, stop };
}

export interface TabulaTargetOptions {
  /** Path of bin/tabula.js (or any script taking the same arguments). */
  entry: string;
  /** Extra node flags (e.g. --cpu-prof). */
  nodeArgs?: string[];
  env?: NodeJS.ProcessEnv;
  name?: string;
}

/** `tabula target --file`: prints its URL on stdout once it listens. */
export async function startTabulaTarget(backingFile: string, logDir: string, opts: TabulaTargetOptions): Promise<RunningTarget> {
  const port = await freePort();
  const iqn = `iqn.2026-01.org.tabula.bench:target-${port}`;
  const logPath = join(logDir, `tabula-${port}.log`);
  const logFd = openSync(logPath, 'a');
  const args = [...(opts.nodeArgs ?? []), opts.entry, 'target', '--file', backingFile, '--portal', `${HOST}:${port}`, '--iqn', iqn];
  const child = spawnDaemon(process.execPath, args, logFd, { ...process.env, TABULA_LOG_LEVEL: 'warn', ...opts.env });
  closeSync(logFd);
  const stop = async (): Promise<void> => {
    await stopChild(child, 10_000);
    removeIfEmpty(logPath);
  };
  onCleanup(stop);
  const url = await firstLine(child, 30_000).catch(async (e: unknown) => {
    await stop();
    throw new Error(`tabula target did not start: ${(e as Error).message} (log in ${logDir})`);
  });
  if (!url.startsWith(`iscsi://${HOST}:`)) throw new Error(`tabula target printed an unexpected URL: ${url}`);
  return { name: opts.name ?? 'tabula', url, pid: child.pid!, stop };
}

function firstLine(child: ChildProcess, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`no URL within ${timeoutMs} ms`)), timeoutMs);
    child.stdout!.on('data', (b: Buffer) => {
      buf += b.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        resolve(buf.slice(0, nl).trim());
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited with ${code}`));
    });
  });
}

/** `tabula up`: controller, agent and one thin vdisk "disk0" in one process, in a fresh data directory. */
export async function startTabulaUp(dataDir: string, sizeBytes: number, logDir: string, opts: TabulaTargetOptions): Promise<RunningTarget> {
  rmSync(dataDir, { recursive: true, force: true });
  mkdirSync(dataDir, { recursive: true });
  const port = await freePort();
  const logPath = join(logDir, `tabula-up-${port}.log`);
  const logFd = openSync(logPath, 'a');
  const args = [...(opts.nodeArgs ?? []), opts.entry, 'up', '--data', dataDir, '--portal', `${HOST}:${port}`, '--controller-listen', `${HOST}:0`, '--size', String(sizeBytes)];
  const child = spawnDaemon(process.execPath, args, logFd, { ...process.env, TABULA_LOG_LEVEL: 'warn', ...opts.env });
  closeSync(logFd);
  const stop = async (): Promise<void> => {
    await stopChild(child, 10_000);
    rmSync(dataDir, { recursive: true, force: true });
    removeIfEmpty(logPath);
  };
  onCleanup(stop);
  const url = await firstLine(child, 60_000).catch(async (e: unknown) => {
    await stop();
    throw new Error(`tabula up did not start: ${(e as Error).message} (log in ${logDir})`);
  });
  if (!url.startsWith(`iscsi://${HOST}:`)) throw new Error(`tabula up printed an unexpected URL: ${url}`);
  return { name: opts.name ?? 'tabula-up', url, pid: child.pid!, stop };
}

/**
 * Tabula's modes in the matrix (issue 5): "tabula" is `tabula target --file`;
 * "vdisk-thick" a table-driven vdisk through `tabula up` whose every segment
 * is allocated (the base image is copied onto it before measuring);
 * "vdisk-thin-fill" a fresh thin vdisk for every run, so writes measure
 * filling it (first writes fault through the controller) and reads measure
 * unallocated space.
 */
export type TabulaMode = 'tabula' | 'vdisk-thick' | 'vdisk-thin-fill';
