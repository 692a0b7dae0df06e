// The mirrored-vdisk rows of the bench (issue 16): one thick vdisk served by
// an agent over two local file containers in two failure domains
// (`container add --domain m1` / `m2`), created with
//   vdisk-1copy  --copies 1 (the reference: every write goes to one container),
//   vdisk-2copy  --copies 2 (every write goes to both containers, reads to one).
// Both rows have the same set-up apart from the copies, each its own
// controller and agent process, so the CPU charged to a row is its agent's;
// "x 1copy" compares a row with vdisk-1copy of the same run (the issue's
// goals for vdisk-2copy: 4k random write depth 32 at least 0.6x, 4k random
// read depth 32 at least 1.0x, 1 MiB sequential write at least 0.5x).
// Each container is as large as the vdisk plus room for the label, so either
// one can hold a whole copy.
import { closeSync, mkdirSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { freePort, onCleanup, runBounded, sleep, spawnDaemon, stopChild } from './proc.js';
import { waitLine, type AgentVdisk, type AgentVdiskOptions } from './network-lun.js';

export const MIRROR_TARGETS = ['vdisk-1copy', 'vdisk-2copy'] as const;
export type MirrorTarget = (typeof MIRROR_TARGETS)[number];

/** The row every mirror row is compared with. */
export const MIRROR_REFERENCE: MirrorTarget = 'vdisk-1copy';

const HOST = '127.0.0.1';
/** Room for the container label and its rounding, beyond the vdisk's segments. */
const LABEL_ROOM = 64 * 1024 * 1024;
const DOMAINS = ['m1', 'm2'];

export function copiesOf(kind: MirrorTarget): number {
  return kind === 'vdisk-2copy' ? 2 : 1;
}

/**
 * Starts a controller and an agent over two file containers in two domains,
 * creates a thick vdisk with the row's copies and exports it on the agent.
 * The returned target's pid is the agent's.
 */
export async function startMirrorVdisk(kind: MirrorTarget, dir: string, sizeBytes: number, logDir: string, o: AgentVdiskOptions): Promise<AgentVdisk> {
  const work = join(dir, `${kind}.data`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const env = { ...process.env, TABULA_LOG_LEVEL: 'warn', ...o.env };
  const tabula = (args: string[], timeoutMs = 60_000): Promise<string> =>
    runBounded(process.execPath, [o.entry, ...args], timeoutMs, { env }).then((r) => {
      if (r.code !== 0) throw new Error(`tabula ${args.join(' ')}: ${(r.stderr || r.stdout).trim()}`);
      return r.stdout;
    });
  const stops: (() => Promise<void>)[] = [];
  const stopAll = async (): Promise<void> => {
    for (const s of stops.reverse()) await s().catch(() => undefined);
    stops.length = 0;
    rmSync(work, { recursive: true, force: true });
  };
  onCleanup(stopAll);
  const daemon = (name: string, args: string[]): ChildProcess => {
    const logFd = openSync(join(logDir, `${kind}-${name}.log`), 'a');
    const child = spawnDaemon(process.execPath, [...(o.nodeArgs ?? []), o.entry, ...args], logFd, env);
    closeSync(logFd);
    stops.push(() => stopChild(child, 10_000));
    return child;
  };
  try {
    const files = DOMAINS.map((d) => join(work, `container-${d}.img`));
    for (const f of files) await tabula(['container', 'init', f, '--size', String(sizeBytes + LABEL_ROOM)]);
    const ctl = daemon('controller', ['controller', '--db', join(work, 'controller.db'), '--listen', `${HOST}:0`]);
    const address = (await waitLine(ctl, /controller listening on (\S+)\n/, 60_000))[1] as string;
    const admin = ['--controller', address];
    for (const [i, f] of files.entries()) await tabula(['container', 'add', f, '--domain', DOMAINS[i] as string, ...admin]);
    const portal = `${HOST}:${await freePort()}`;
    const agent = daemon('agent', ['agent', '--controller', address, '--name', 'bench', '--portal', portal, '--containers', ...files]);
    await waitLine(agent, /agent bench serving on /, 60_000);
    await tabula(['vdisk', 'create', 'disk0', '--size', String(sizeBytes), '--thick', '--copies', String(copiesOf(kind)), ...admin], 300_000);
    await tabula(['export', 'add', 'disk0', '--agent', 'bench', ...admin]);
    const url = `iscsi://${portal}/iqn.2026-11.org.tabula:disk0/0`;
    // Served once the agent has the table: READ CAPACITY answers.
    for (let i = 0; ; i++) {
      const r = await runBounded('qemu-img', ['info', url], 10_000);
      if (r.code === 0) break;
      if (i >= 100) throw new Error(`${url} not served: ${(r.stderr || r.stdout).trim()}`);
      await sleep(300);
    }
    return { name: kind, url, pid: agent.pid!, locator: files.join(' '), files, stop: stopAll };
  } catch (e) {
    await stopAll();
    throw new Error(`${kind}: ${(e as Error).message} (logs in ${logDir})`);
  }
}
