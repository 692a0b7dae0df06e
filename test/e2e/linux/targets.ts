// The target under test for the Linux end-to-end scenarios, chosen with env
// TABULA_E2E_TARGET: Tabula's `tabula target` (default, started by the shared
// interop helper) or tgtd, the reference that proves the harness itself.
//
// tgtd is started here rather than by the interop helper: its management
// channel number (-C) must be below 32768, so it cannot simply reuse the
// portal's (ephemeral) port number.
import { existsSync, mkdtempSync, openSync, closeSync, ftruncateSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { spawnBounded, killGroup, runBounded, describeRun } from '../../support/bounded-run.js';
import {
  startTarget,
  freeLoopbackPort,
  LOOPBACK,
  type RunningTarget,
  type TargetKind,
  type TargetOptions,
} from '../../support/target-process.js';

/** Starts the target under test for one scenario. */
export type E2eTargetStarter = (opts: TargetOptions) => Promise<RunningTarget>;

/** env TABULA_E2E_TARGET: "tabula" (default) or "tgtd". */
export function e2eTargetKind(): TargetKind {
  const v = (process.env.TABULA_E2E_TARGET ?? 'tabula').trim().toLowerCase();
  if (v === '' || v === 'tabula') return 'tabula';
  if (v === 'tgtd' || v === 'tgt') return 'tgtd';
  throw new Error(`TABULA_E2E_TARGET=${v}: expected "tabula" or "tgtd"`);
}

export function e2eTargetStarter(kind: TargetKind = e2eTargetKind()): E2eTargetStarter {
  return kind === 'tgtd' ? startTgtd : (opts) => startTarget({ ...opts, kind: 'tabula' });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child: ChildProcess, ms: number): Promise<void> {
  if (exited(child)) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

function tail(file: string): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-15).join('\n');
  } catch {
    return '(no log)';
  }
}

/** A tgtd management channel number (0..32767) whose socket is not in use. */
function freeControlChannel(): number {
  for (let i = 0; i < 100; i++) {
    const ctl = 1000 + Math.floor(Math.random() * 31_000);
    if (!existsSync(`/var/run/tgtd/socket.${ctl}`)) return ctl;
  }
  throw new Error('no free tgtd management channel in /var/run/tgtd');
}

function removeSockets(ctl: number): void {
  rmSync(`/var/run/tgtd/socket.${ctl}`, { force: true });
  rmSync(`/var/run/tgtd/socket.${ctl}.lock`, { force: true });
}

/**
 * tgtd on 127.0.0.1:PORT only: one target with a thin-provisioned,
 * file-backed disk at LUN 1 (tgt keeps LUN 0 for its controller), CRC32C
 * digests allowed, CHAP and mutual CHAP accounts when asked, initiators
 * limited to loopback.
 */
export async function startTgtd(opts: TargetOptions): Promise<RunningTarget> {
  if (process.getuid?.() !== 0) throw new Error('tgtd needs root (TABULA_E2E_TARGET=tgtd)');
  const port = await freeLoopbackPort();
  const ctl = freeControlChannel();
  const iqn = opts.iqn ?? `iqn.2026-11.org.tabula:e2e-${port}`;
  const dir = mkdtempSync(join(tmpdir(), `tabula-e2e-${opts.label ?? 'tgtd'}-`));
  const backingFile = join(dir, 'lun.img');
  const fd = openSync(backingFile, 'w');
  try {
    ftruncateSync(fd, opts.sizeBytes);
  } finally {
    closeSync(fd);
  }
  const portal = `${LOOPBACK}:${port}`;
  const logFile = join(dir, 'tgtd.log');
  removeSockets(ctl);
  const logFd = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawnBounded('tgtd', ['-f', '-C', String(ctl), '--iscsi', `portal=${portal}`], opts.maxLifetimeMs ?? 30 * 60_000, [
      'ignore',
      logFd,
      logFd,
    ]);
  } finally {
    closeSync(logFd);
  }
  const tgtadm = async (args: string[], check = true): Promise<void> => {
    const r = await runBounded('tgtadm', ['-C', String(ctl), ...args], { timeoutMs: 15_000 });
    if (check && r.exitCode !== 0) throw new Error(`tgtd setup failed: ${describeRun(r)}`);
  };
  const stop = async (): Promise<void> => {
    if (!exited(child)) {
      // tgtd ignores SIGTERM while it has targets: remove them and ask it to exit.
      await tgtadm(['--lld', 'iscsi', '--mode', 'target', '--op', 'delete', '--force', '--tid', '1'], false);
      await tgtadm(['--mode', 'system', '--op', 'delete'], false);
      await waitExit(child, 5000);
    }
    if (child.pid !== undefined) killGroup(child.pid, 'SIGKILL');
    await waitExit(child, 5000);
    removeSockets(ctl);
  };
  const iscsi = ['--lld', 'iscsi'];
  try {
    const deadline = Date.now() + (opts.readyTimeoutMs ?? 20_000);
    for (;;) {
      if (exited(child)) throw new Error(`tgtd exited before it was ready; log:\n${tail(logFile)}`);
      const r = await runBounded('tgtadm', ['-C', String(ctl), '--mode', 'system', '--op', 'show'], { timeoutMs: 5000 });
      if (r.exitCode === 0) break;
      if (Date.now() > deadline) throw new Error(`tgtd management channel ${ctl} not up in time; log:\n${tail(logFile)}`);
      await sleep(200);
    }
    await tgtadm([...iscsi, '--mode', 'target', '--op', 'new', '--tid', '1', '--targetname', iqn]);
    await tgtadm([...iscsi, '--mode', 'logicalunit', '--op', 'new', '--tid', '1', '--lun', '1', '--backing-store', backingFile, '--bstype', 'rdwr']);
    await tgtadm([...iscsi, '--mode', 'logicalunit', '--op', 'update', '--tid', '1', '--lun', '1', '--params', 'thin_provisioning=1']);
    // tgtd answers HeaderDigest=None unless CRC32C is allowed explicitly.
    await tgtadm([...iscsi, '--mode', 'target', '--op', 'update', '--tid', '1', '--name', 'HeaderDigest', '--value', 'CRC32C,None']);
    await tgtadm([...iscsi, '--mode', 'target', '--op', 'update', '--tid', '1', '--name', 'DataDigest', '--value', 'CRC32C,None']);
    if (opts.chap) {
      await tgtadm([...iscsi, '--mode', 'account', '--op', 'new', '--user', opts.chap.user, '--password', opts.chap.secret]);
      await tgtadm([...iscsi, '--mode', 'account', '--op', 'bind', '--tid', '1', '--user', opts.chap.user]);
    }
    if (opts.mutualChap) {
      await tgtadm([...iscsi, '--mode', 'account', '--op', 'new', '--user', opts.mutualChap.user, '--password', opts.mutualChap.secret]);
      await tgtadm([...iscsi, '--mode', 'account', '--op', 'bind', '--tid', '1', '--user', opts.mutualChap.user, '--outgoing']);
    }
    await tgtadm([...iscsi, '--mode', 'target', '--op', 'bind', '--tid', '1', '--initiator-address', LOOPBACK]);
  } catch (err) {
    await stop();
    rmSync(backingFile, { force: true });
    throw new Error(`${(err as Error).message}\n(logs kept in ${dir})`);
  }
  let stopped = false;
  return {
    kind: 'tgtd',
    url: `iscsi://${portal}/${iqn}/1`,
    host: LOOPBACK,
    port,
    portal,
    iqn,
    lun: 1,
    sizeBytes: opts.sizeBytes,
    dir,
    backingFile,
    logFile,
    pid: child.pid as number,
    async stop(o?: { keepLogs?: boolean }): Promise<void> {
      if (stopped) return;
      stopped = true;
      await stop();
      rmSync(backingFile, { force: true });
      if (!(o?.keepLogs ?? false)) rmSync(dir, { recursive: true, force: true });
    },
  };
}
