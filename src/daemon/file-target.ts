// The process of `tabula target`: files or block devices served as LUN 0..n-1
// of one iSCSI target, without the controller or tables, until
// SIGINT/SIGTERM. A storage node (the appliance's `storage` role) is this with
// its data disks. The CLI loads this module only for that command, so the
// iSCSI and SCSI stacks are not part of every command's start-up.
import { FileBlockDevice } from '../blockdev/file-device.js';
import type { TargetAuth } from '../iscsi/login/environment.js';
import { IscsiPortalServer } from '../iscsi/portal-server.js';
import { TargetRegistry } from '../iscsi/target-registry.js';
import { ScsiTargetDevice } from '../scsi/target-device.js';
import { log } from '../util/log.js';
import { runUntilSignal } from './signals.js';

/** One LUN: its backing file or block device. */
export interface FileLun {
  /** Backing file (created sparse when missing and `size` is given) or block device. */
  file: string;
  /** Create or grow the file to this many bytes. */
  size?: number;
}

export interface FileTargetOptions {
  /** LUN i is luns[i]. */
  luns: FileLun[];
  blockSize: 512 | 4096;
  readOnly: boolean;
  iqn: string;
  /** The portal to listen on (port 0 picks one). */
  host: string;
  port: number;
  chap?: TargetAuth;
  mutualChap?: TargetAuth;
  /** Initiators allowed to log in; null: any. */
  allowedInitiators: string[] | null;
}

export interface FileTargetHandle {
  /** iscsi://HOST:PORT/IQN/LUN of each LUN, in LUN order. */
  readonly urls: string[];
  readonly port: number;
  close(): Promise<void>;
}

/** iscsi://HOST:PORT/IQN/LUN, with an IPv6 host in brackets. */
export function lunUrl(host: string, port: number, iqn: string, lun: number): string {
  return `iscsi://${host.includes(':') ? `[${host}]` : host}:${port}/${iqn}/${lun}`;
}

/**
 * Opens every LUN's file (all or none: a file that fails closes those opened
 * before it) and listens. The caller owns the handle.
 */
export async function startFileTarget(o: FileTargetOptions): Promise<FileTargetHandle> {
  if (o.luns.length === 0) throw new Error('a target needs at least one file');
  const seen = new Set<string>();
  for (const l of o.luns) {
    // Two LUNs over one file would be two caches of the same bytes.
    if (seen.has(l.file)) throw new Error(`${l.file} is given twice: each LUN needs a file of its own`);
    seen.add(l.file);
  }
  const devices: FileBlockDevice[] = [];
  try {
    for (const l of o.luns) devices.push(await FileBlockDevice.open(l.file, { size: l.size, blockSize: o.blockSize, readOnly: o.readOnly }));
  } catch (e) {
    await Promise.all(devices.map((d) => d.close().catch(() => undefined)));
    throw e;
  }
  const scsi = new ScsiTargetDevice({ name: o.iqn, portGroups: [{ id: 1, relativePortIds: [1] }] });
  devices.forEach((device, lun) => {
    // The LU's identity follows its file, so a LUN keeps its NAA name when files are reordered.
    scsi.addLun(lun, device, { readOnly: o.readOnly, lunId: `${o.iqn}/${device.path}` });
  });
  const registry = new TargetRegistry();
  registry.add({ name: o.iqn, chap: o.chap, mutualChap: o.mutualChap, allowedInitiators: o.allowedInitiators, portals: [] }, scsi);
  const server = new IscsiPortalServer(registry, { host: o.host, port: o.port, tpgt: 1 });
  let port: number;
  try {
    port = (await server.listen()).port;
  } catch (e) {
    await Promise.all(devices.map((d) => d.close().catch(() => undefined)));
    throw e;
  }
  log.info('target serving', { iqn: o.iqn, port, luns: devices.map((d, lun) => ({ lun, file: d.path, bytes: d.blockCount * d.blockSize })) });
  let closing: Promise<void> | undefined;
  return {
    urls: devices.map((_, lun) => lunUrl(o.host, port, o.iqn, lun)),
    port,
    close() {
      closing ??= (async () => {
        await server.close();
        for (const d of devices) {
          await d.flush().catch((e: unknown) => log.error(`target: flushing ${d.path}: ${(e as Error).message}`));
          await d.close().catch((e: unknown) => log.error(`target: closing ${d.path}: ${(e as Error).message}`));
        }
      })();
      return closing;
    },
  };
}

/** Serves the files, prints one iscsi:// URL per LUN on stdout once listening, and runs until a signal stops it. */
export async function runFileTarget(o: FileTargetOptions): Promise<void> {
  const target = await startFileTarget(o);
  process.stdout.write(target.urls.map((u) => `${u}\n`).join(''));
  await runUntilSignal(async (signal) => {
    log.info('stopping target', { signal });
    await target.close();
  });
}
