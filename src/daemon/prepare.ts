// What a node does before its daemon starts, every boot (each step is
// idempotent, so "first boot" is simply the boot that finds work to do):
// - data-device: format it ext4 (label tabula-data) when blank, mount it at data-dir;
// - containers-init: label each listed device as a container when blank;
// - all-in-one: link the container devices into DATA/containers/ (where
//   `tabula up` looks), one link per container id so renamed devices
//   (vdb becoming vdc) keep their name.
// "Blank" means the first MiB reads as zeros: a partition table, a file
// system, LVM or an earlier label all live there, and none is ever overwritten.
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, lstatSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, readlinkSync, symlinkSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { initContainer, readContainerLabel, LabelError } from '../container/index.js';
import { formatSize } from '../util/size.js';
import { log } from '../util/log.js';
import type { TabulaConfig } from '../config/schema.js';

const BLANK_PROBE = 1 << 20;
/** Links made by prepare carry this prefix; others in the directory are the admin's. */
export const DEVICE_LINK_PREFIX = 'dev-';

export function isBlank(path: string, probe = BLANK_PROBE): boolean {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(64 * 1024);
    for (let off = 0; off < probe; ) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, probe - off), off);
      if (n === 0) break;
      for (let i = 0; i < n; i++) if (buf[i] !== 0) return false;
      off += n;
    }
    return true;
  } finally {
    closeSync(fd);
  }
}

/** The device mounted at dir, from /proc/self/mountinfo (null when nothing is). */
export function mountedAt(dir: string, mountinfo = '/proc/self/mountinfo'): string | null {
  let text: string;
  try {
    text = readFileSync(mountinfo, 'utf8');
  } catch {
    return null;
  }
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (f[4] === dir && dash > 0) return f[dash + 2] ?? null;
  }
  return null;
}

/** Devices appear through udev, late on a slow boot: wait for the path a while. */
export async function waitForPath(path: string, timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (!existsSync(path)) {
    if (Date.now() >= until) return false;
    await new Promise((r) => setTimeout(r, 250));
  }
  return true;
}

/** How long prepare waits for a configured device to appear. */
export const DEVICE_WAIT_MS = 30_000;

function run(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000 });
}

export async function prepareDataDevice(cfg: TabulaConfig): Promise<void> {
  const dev = cfg.dataDevice;
  mkdirSync(cfg.dataDir, { recursive: true });
  if (dev === undefined) return;
  if (mountedAt(cfg.dataDir) !== null) return;
  if (!(await waitForPath(dev, DEVICE_WAIT_MS))) throw new Error(`data-device ${dev} does not exist (data-dir ${cfg.dataDir} stays unmounted)`);
  if (isBlank(dev)) {
    log.info(`prepare: formatting blank data device ${dev} (ext4, label tabula-data)`);
    run('mkfs.ext4', ['-q', '-L', 'tabula-data', dev]);
  }
  run('mount', [dev, cfg.dataDir]);
  log.info(`prepare: mounted ${dev} at ${cfg.dataDir}`);
}

export interface PreparedContainer {
  device: string;
  id: string;
  /** Labelled by this run. */
  labelled: boolean;
}

export async function prepareContainers(cfg: TabulaConfig): Promise<PreparedContainer[]> {
  const out: PreparedContainer[] = [];
  for (const c of cfg.containersInit) {
    if (!(await waitForPath(c.device, DEVICE_WAIT_MS))) {
      log.error(`prepare: container device ${c.device} did not appear within ${DEVICE_WAIT_MS / 1000} s; skipped`);
      continue;
    }
    try {
      const found = await readContainerLabel(c.device);
      out.push({ device: c.device, id: found.id, labelled: false });
      continue;
    } catch (e) {
      if (!(e instanceof LabelError) || e.kind !== 'unlabelled') {
        log.error(`prepare: container device ${c.device}: ${(e as Error).message}; not touched`);
        continue;
      }
    }
    if (!isBlank(c.device)) {
      log.error(`prepare: ${c.device} is not blank (its first MiB holds data): refusing to label it; run 'tabula container init ${c.device} --force' if it really is free`);
      continue;
    }
    const r = await initContainer(c.device, { size: c.size, segmentSize: c.segmentSize });
    log.info(`prepare: labelled ${c.device} as container ${r.label.id} (${formatSize(r.label.size)})`);
    out.push({ device: c.device, id: r.label.id, labelled: true });
  }
  return out;
}

/** DATA/containers/dev-<id> → device, for each container; stale links of ours are removed. */
export function linkContainers(dir: string, containers: readonly PreparedContainer[]): string[] {
  mkdirSync(dir, { recursive: true });
  const want = new Map(containers.map((c) => [`${DEVICE_LINK_PREFIX}${c.id}`, c.device]));
  for (const name of readdirSync(dir)) {
    if (!name.startsWith(DEVICE_LINK_PREFIX)) continue;
    const p = join(dir, name);
    if (!lstatSync(p).isSymbolicLink()) continue;
    if (want.get(name) === readlinkSync(p)) {
      want.delete(name);
      continue;
    }
    unlinkSync(p);
  }
  for (const [name, device] of want) symlinkSync(device, join(dir, name));
  return containers.map((c) => join(dir, `${DEVICE_LINK_PREFIX}${c.id}`));
}

export async function prepareNode(cfg: TabulaConfig): Promise<PreparedContainer[]> {
  await prepareDataDevice(cfg);
  const containers = await prepareContainers(cfg);
  if (cfg.role === 'all-in-one') linkContainers(join(cfg.dataDir, 'containers'), containers);
  return containers;
}
