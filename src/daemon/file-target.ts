// The process of `tabula target`: one file served as LUN 0 of one iSCSI
// target, without the controller or tables, until SIGINT/SIGTERM. The CLI
// loads this module only for that command, so the iSCSI and SCSI stacks are
// not part of every command's start-up.
import { FileBlockDevice } from '../blockdev/file-device.js';
import type { TargetAuth } from '../iscsi/login/environment.js';
import { IscsiPortalServer } from '../iscsi/portal-server.js';
import { TargetRegistry } from '../iscsi/target-registry.js';
import { ScsiTargetDevice } from '../scsi/target-device.js';
import { log } from '../util/log.js';
import { runUntilSignal } from './signals.js';

export interface FileTargetOptions {
  /** Backing file (created sparse when missing and `size` is given). */
  file: string;
  /** Create or grow the file to this many bytes. */
  size?: number;
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

/** Serves the file, prints its iscsi:// URL on stdout once listening, and runs until a signal stops it. */
export async function runFileTarget(o: FileTargetOptions): Promise<void> {
  const device = await FileBlockDevice.open(o.file, { size: o.size, blockSize: o.blockSize, readOnly: o.readOnly });
  const scsi = new ScsiTargetDevice({ name: o.iqn, portGroups: [{ id: 1, relativePortIds: [1] }] });
  scsi.addLun(0, device, { readOnly: o.readOnly, lunId: `${o.iqn}/${o.file}` });
  const registry = new TargetRegistry();
  registry.add({ name: o.iqn, chap: o.chap, mutualChap: o.mutualChap, allowedInitiators: o.allowedInitiators, portals: [] }, scsi);
  const server = new IscsiPortalServer(registry, { host: o.host, port: o.port, tpgt: 1 });
  const addr = await server.listen();
  const host = o.host.includes(':') ? `[${o.host}]` : o.host;
  process.stdout.write(`iscsi://${host}:${addr.port}/${o.iqn}/0\n`);
  await runUntilSignal(async (signal) => {
    log.info('stopping target', { signal });
    await server.close();
    await device.flush().catch(() => undefined);
    await device.close();
  });
}
