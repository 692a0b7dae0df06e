// qemu's iSCSI clients for the system tests: qemu-img for bulk copies and
// comparisons, qemu-io for pattern writes and pattern-verified reads. Each run
// is time-bounded; failures carry the command and its output.
import { describeRun, runBounded, type RunResult } from '../support/bounded-run.js';

export const CLIENT_TIMEOUT = 120_000;

/** Runs qemu-io commands against one URL; qemu-io reports a failed command on its output. */
export async function qemuIo(url: string, cmds: readonly string[], timeoutMs = CLIENT_TIMEOUT): Promise<RunResult> {
  const args = ['-f', 'raw'];
  for (const c of cmds) args.push('-c', c);
  return runBounded('qemu-io', [...args, url], { timeoutMs });
}

function qemuIoFailed(r: RunResult): boolean {
  return r.exitCode !== 0 || /failed|error|Pattern verification/i.test(r.stdout + r.stderr);
}

export async function qemuIoOk(url: string, cmds: readonly string[], timeoutMs?: number): Promise<string> {
  const r = await qemuIo(url, cmds, timeoutMs);
  if (qemuIoFailed(r)) throw new Error(`${describeRun(r)}\n${r.stdout}`);
  return r.stdout;
}

/** Writes `pattern` over [offset, offset+len) (bytes). */
export const writeP = (url: string, pattern: number, offset: number, len: number): Promise<string> =>
  qemuIoOk(url, [`write -P 0x${pattern.toString(16)} ${offset} ${len}`]);

/** Reads [offset, offset+len) and checks every byte is `pattern` (qemu-io compares). */
export const readP = (url: string, pattern: number, offset: number, len: number): Promise<string> =>
  qemuIoOk(url, [`read -P 0x${pattern.toString(16)} ${offset} ${len}`]);

/** Copies a raw image onto the LUN (which must be at least as large), writing zeros where the image has holes. */
export async function copyTo(image: string, url: string, timeoutMs = CLIENT_TIMEOUT): Promise<void> {
  const r = await runBounded('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image, url], { timeoutMs });
  if (r.exitCode !== 0) throw new Error(describeRun(r));
}

/** qemu-img compare: exit 0 identical, 1 different (first difference on stdout), other: error. */
export async function compare(image: string, url: string, timeoutMs = CLIENT_TIMEOUT): Promise<{ same: boolean; text: string }> {
  const r = await runBounded('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, url], { timeoutMs });
  if (r.exitCode !== 0 && r.exitCode !== 1) throw new Error(describeRun(r));
  return { same: r.exitCode === 0, text: (r.stdout + r.stderr).trim() };
}
