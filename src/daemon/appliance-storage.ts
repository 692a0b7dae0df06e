// The storage role of a node (docs/deploy.md, "A storage network"): its data
// disks served raw as LUN 0..n-1 of one iSCSI target, the same target as
// `tabula target --file A --file B` (file-target.ts), for agents on other
// hosts that reach containers over iSCSI. No controller and no agent run
// here; agents label the LUNs over the network (`tabula container init
// iscsi://...`), so this node never writes a label itself.
import { hasMagic, expandGlob } from '../container/glob.js';
import type { StorageConfig, TabulaConfig } from '../config/schema.js';
import { parseHostPort } from '../util/size.js';
import { log } from '../util/log.js';
import { startFileTarget, type FileLun, type FileTargetHandle, type FileTargetOptions } from './file-target.js';
import { iscsiAuth } from './options.js';
import { DEVICE_WAIT_MS, waitForPath } from './prepare.js';

/**
 * The LUNs in order: each entry as given, a glob by its matches sorted (an
 * entry that matches nothing is an error: a missing disk must not shift the
 * LUN numbers of the disks after it). A device named outright may appear late
 * (udev on a slow boot), so it is waited for.
 */
export async function storageLuns(cfg: StorageConfig, waitMs = DEVICE_WAIT_MS): Promise<FileLun[]> {
  const out: FileLun[] = [];
  for (const l of cfg.luns) {
    if (hasMagic(l.path)) {
      const found = await expandGlob(l.path);
      if (found.length === 0) throw new Error(`storage.luns: ${l.path} matches nothing`);
      for (const f of found) out.push({ file: f, size: l.size });
      continue;
    }
    // A file with a size is created by the target; anything else must exist.
    if (l.size === undefined && !(await waitForPath(l.path, waitMs))) throw new Error(`storage.luns: ${l.path} does not exist (waited ${waitMs / 1000} s)`);
    out.push({ file: l.path, size: l.size });
  }
  return out;
}

/** The target's options from the node's configuration: storage.*, and security.chap / allowed-initiators as on an agent. */
export async function storageTargetOptions(cfg: TabulaConfig, waitMs?: number): Promise<FileTargetOptions> {
  const portal = parseHostPort(cfg.storage.portal, 3260);
  const auth = iscsiAuth(cfg);
  return {
    luns: await storageLuns(cfg.storage, waitMs),
    blockSize: cfg.storage.blockSize,
    readOnly: false,
    iqn: cfg.storage.iqn,
    host: portal.host,
    port: portal.port,
    chap: auth?.chap,
    mutualChap: auth?.mutualChap,
    allowedInitiators: auth?.allowedInitiators ?? null,
  };
}

/** Starts the storage node's target; run.ts owns its lifetime. */
export async function startStorageNode(cfg: TabulaConfig, waitMs?: number): Promise<FileTargetHandle> {
  const o = await storageTargetOptions(cfg, waitMs);
  const loopback = o.host === 'localhost' || o.host.startsWith('127.') || o.host === '::1';
  if (!loopback && o.chap === undefined && o.allowedInitiators === null) {
    log.warn(`storage: ${cfg.storage.portal} is beyond loopback with neither security.chap nor security.allowed-initiators: any initiator that reaches it can read and write these disks`);
  }
  return startFileTarget(o);
}
