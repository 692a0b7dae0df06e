// tgtd (Debian "tgt"), the reference target, as the interop tests and the
// bench configure it: which management channel it gets, and the tgtadm
// commands that set up its one target. Starting and stopping the process is
// left to the caller (time-bounded for tests, niced and CPU-accounted for the
// bench); what tgtd is asked to serve is written only here.
import { existsSync, rmSync } from 'node:fs';
import type { ChapCredentials } from './target-process.js';

/** The tgtd LUN that holds the disk: tgt keeps LUN 0 for its controller device. */
export const TGTD_LUN = 1;

function socketFiles(ctl: number): string[] {
  return [`/var/run/tgtd/socket.${ctl}`, `/var/run/tgtd/socket.${ctl}.lock`];
}

/**
 * A management channel number (-C) whose socket nobody holds: at most 32767,
 * so derived from `seed` (e.g. the portal's port) rather than equal to it, and
 * different for concurrent instances.
 */
export function tgtdControlNumber(seed: number): number {
  for (let i = 0; i < 1000; i++) {
    const n = 1000 + ((seed + i) % 31_000);
    if (socketFiles(n).every((f) => !existsSync(f))) return n;
  }
  throw new Error('no free tgtd management channel number in /var/run/tgtd');
}

export function removeTgtdSockets(ctl: number): void {
  for (const f of socketFiles(ctl)) rmSync(f, { force: true });
}

/** tgtd's own arguments: in the foreground, on one portal, with its own channel so instances do not collide. */
export function tgtdArgs(ctl: number, portal: string): string[] {
  return ['-f', '-C', String(ctl), '--iscsi', `portal=${portal}`];
}

export interface TgtdTarget {
  iqn: string;
  backingFile: string;
  /** The only initiator address let in (loopback). */
  initiatorAddress: string;
  /** Report thin provisioning (UNMAP, GET LBA STATUS), as the interop tests want. */
  thin?: boolean;
  /** Allow CRC32C header and data digests: tgtd answers None unless told. */
  digests?: boolean;
  chap?: ChapCredentials;
  mutualChap?: ChapCredentials;
}

/**
 * The tgtadm arguments (after `-C CTL`), in order, that create target 1 with
 * one file-backed disk (bstype rdwr) at TGTD_LUN.
 */
export function tgtdSetup(t: TgtdTarget): string[][] {
  const iscsi = ['--lld', 'iscsi'];
  const target = [...iscsi, '--mode', 'target', '--tid', '1'];
  const lun = [...iscsi, '--mode', 'logicalunit', '--tid', '1', '--lun', String(TGTD_LUN)];
  const cmds = [
    [...target, '--op', 'new', '--targetname', t.iqn],
    [...lun, '--op', 'new', '--backing-store', t.backingFile, '--bstype', 'rdwr'],
  ];
  if (t.thin === true) cmds.push([...lun, '--op', 'update', '--params', 'thin_provisioning=1']);
  if (t.digests === true) {
    for (const name of ['HeaderDigest', 'DataDigest']) cmds.push([...target, '--op', 'update', '--name', name, '--value', 'CRC32C,None']);
  }
  for (const [account, outgoing] of [[t.chap, false], [t.mutualChap, true]] as const) {
    if (account === undefined) continue;
    cmds.push([...iscsi, '--mode', 'account', '--op', 'new', '--user', account.user, '--password', account.secret]);
    cmds.push([...iscsi, '--mode', 'account', '--op', 'bind', '--tid', '1', '--user', account.user, ...(outgoing ? ['--outgoing'] : [])]);
  }
  cmds.push([...target, '--op', 'bind', '--initiator-address', t.initiatorAddress]);
  return cmds;
}

/**
 * The tgtadm arguments (after `-C CTL`) that add one more file-backed disk to
 * target 1 at `lun`, e.g. a storage node that gets a new disk while it runs.
 */
export function tgtdAddLun(lun: number, backingFile: string): string[] {
  return ['--lld', 'iscsi', '--mode', 'logicalunit', '--op', 'new', '--tid', '1', '--lun', String(lun), '--backing-store', backingFile, '--bstype', 'rdwr'];
}

/** tgtadm arguments that remove every target and then ask tgtd to exit (it ignores SIGTERM while it has targets). */
export function tgtdShutdown(): string[][] {
  return [
    ['--lld', 'iscsi', '--mode', 'target', '--op', 'delete', '--force', '--tid', '1'],
    ['--mode', 'system', '--op', 'delete'],
  ];
}

/** tgtadm arguments that succeed once tgtd's management channel is up. */
export const TGTD_PROBE: readonly string[] = ['--mode', 'system', '--op', 'show'];
