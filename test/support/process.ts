// Child processes the tests start: has it exited, wait for it to, stop it
// (SIGTERM, then SIGKILL of its group), the tail of its log, free loopback
// ports, and polling. Every test harness (the CLI's, the interop targets',
// the system cluster's, tgtd) uses these; none keeps its own copy.
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { killGroup } from './bounded-run.js';

/** Tests listen and connect on loopback only. */
export const LOOPBACK = '127.0.0.1';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it returns a value other than undefined; throws `what` with the last error after `ms`. */
export async function waitFor<T>(what: string, ms: number, probe: () => Promise<T | undefined>, everyMs = 200): Promise<T> {
  const deadline = Date.now() + ms;
  let last = '';
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms${last ? ` (last: ${last})` : ''}`);
    await sleep(everyMs);
  }
}

export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Resolves true once the child has exited, false if it has not within `ms`. */
export function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

/** The child's exit status when it exits (null when a signal ended it), however long that takes. */
export function exitStatus(child: ChildProcess): Promise<number | null> {
  if (exited(child)) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

/**
 * SIGTERM the child (a `timeout` wrapper from spawnBounded passes it on), then
 * SIGKILL its process group after `graceMs`. The group is SIGKILLed in any
 * case, so nothing the child started outlives it. Returns whether it exited
 * by itself within the grace period.
 */
export async function terminate(child: ChildProcess, graceMs: number): Promise<boolean> {
  let byItself = true;
  if (!exited(child)) {
    child.kill('SIGTERM');
    byItself = await waitExit(child, graceMs);
    if (!byItself) {
      if (child.pid !== undefined) killGroup(child.pid, 'SIGKILL');
      await waitExit(child, 5000);
    }
  }
  if (child.pid !== undefined) killGroup(child.pid, 'SIGKILL');
  return byItself;
}

/** The last `lines` lines of a log file, or `missing` when it cannot be read. */
export function fileTail(file: string, lines = 15, missing = '(no log)'): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return missing;
  }
}

/** A TCP port on loopback that was free a moment ago. */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, LOOPBACK, () => {
      const addr = srv.address();
      srv.close(() => {
        if (addr !== null && typeof addr === 'object') resolve(addr.port);
        else reject(new Error('no port from listen(0)'));
      });
    });
  });
}

/** Directory holding Tabula's package.json (works from test/ and from dist/test/). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'tabula') return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the tabula package root above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}
