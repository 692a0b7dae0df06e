// The storage-network rows of the bench (issue 15): one thick vdisk served by
// an agent whose container is
//   vdisk-file        a local file (the reference),
//   vdisk-lun-tabula  a LUN of `tabula target` (a storage node) over iSCSI,
//   vdisk-lun-tgtd    a LUN of tgtd over iSCSI,
// each its own controller, agent and storage in separate processes, so the
// CPU charged to a row is the agent's alone (the storage node's is reported
// beside it). All on loopback; the container is as large as the vdisk plus
// room for the label.
import { closeSync, mkdirSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { freePort, onCleanup, runBounded, sleep, spawnDaemon, stopChild } from './proc.js';
import { startTabulaTarget, startTgtd, type RunningTarget } from './targets.js';

export const NETWORK_LUN_TARGETS = ['vdisk-file', 'vdisk-lun-tabula', 'vdisk-lun-tgtd'] as const;
export type NetworkLunTarget = (typeof NETWORK_LUN_TARGETS)[number];

export interface AgentVdisk extends RunningTarget {
  /** The storage node's process (its CPU is not the agent's), when there is one. */
  storagePid?: number;
  /** The container locator the agent was given. */
  locator: string;
  /** The file under the container (local, or the storage node's backing file): its page cache is normalised like the others'. */
  files: string[];
}

export interface AgentVdiskOptions {
  /** bin/tabula.js or a launcher taking the same arguments. */
  entry: string;
  nodeArgs?: string[];
  env?: NodeJS.ProcessEnv;
}

const HOST = '127.0.0.1';
/** Room for the container label and its rounding, beyond the vdisk's segments. */
const LABEL_ROOM = 64 * 1024 * 1024;

/** Resolves with the first stdout line matching `re`; rejects on exit or timeout. */
export function waitLine(child: ChildProcess, re: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`no line matching ${re} within ${timeoutMs} ms (stdout: ${buf.trim()})`)), timeoutMs);
    child.stdout!.on('data', (b: Buffer) => {
      buf += b.toString();
      const m = re.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited with ${code} (stdout: ${buf.trim()})`));
    });
  });
}

/**
 * Starts storage (none, `tabula target`, or tgtd), a controller, and an agent
 * reaching the container; creates a thick vdisk over all of it and exports it
 * on the agent. The returned target's pid is the agent's.
 */
export async function startAgentVdisk(kind: NetworkLunTarget, dir: string, sizeBytes: number, logDir: string, o: AgentVdiskOptions): Promise<AgentVdisk> {
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
    const containerBytes = sizeBytes + LABEL_ROOM;
    let locator: string;
    let storagePid: number | undefined;
    const file = join(work, kind === 'vdisk-file' ? 'container.img' : 'lun.img');
    if (kind === 'vdisk-file') {
      locator = file;
      await tabula(['container', 'init', locator, '--size', String(containerBytes)]);
    } else {
      const lun = file;
      const t = await runBounded('truncate', ['-s', String(containerBytes), lun], 10_000);
      if (t.code !== 0) throw new Error(`truncate ${lun}: ${t.stderr.trim()}`);
      const node: RunningTarget =
        kind === 'vdisk-lun-tgtd' ? await startTgtd(lun, logDir) : await startTabulaTarget(lun, logDir, { entry: o.entry, nodeArgs: [], env: o.env, name: 'storage' });
      stops.push(() => node.stop());
      storagePid = node.pid;
      locator = node.url;
      // The LUN's label, written through the admin's own initiator (size: the LUN's capacity).
      await tabula(['container', 'init', locator]);
    }
    const ctl = daemon('controller', ['controller', '--db', join(work, 'controller.db'), '--listen', `${HOST}:0`]);
    const address = (await waitLine(ctl, /controller listening on (\S+)\n/, 60_000))[1] as string;
    const admin = ['--controller', address];
    await tabula(['container', 'add', locator, ...admin]);
    const portal = `${HOST}:${await freePort()}`;
    const agent = daemon('agent', ['agent', '--controller', address, '--name', 'bench', '--portal', portal, '--containers', locator]);
    await waitLine(agent, /agent bench serving on /, 60_000);
    await tabula(['vdisk', 'create', 'disk0', '--size', String(sizeBytes), '--thick', ...admin], 300_000);
    await tabula(['export', 'add', 'disk0', '--agent', 'bench', ...admin]);
    const url = `iscsi://${portal}/iqn.2026-11.org.tabula:disk0/0`;
    // Served once the agent has the table: READ CAPACITY answers.
    for (let i = 0; ; i++) {
      const r = await runBounded('qemu-img', ['info', url], 10_000);
      if (r.code === 0) break;
      if (i >= 100) throw new Error(`${url} not served: ${(r.stderr || r.stdout).trim()}`);
      await sleep(300);
    }
    return { name: kind, url, pid: agent.pid!, storagePid, locator, files: [file], stop: stopAll };
  } catch (e) {
    await stopAll();
    throw new Error(`${kind}: ${(e as Error).message} (logs in ${logDir})`);
  }
}
