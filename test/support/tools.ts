// Checks for the external programs interop tests need, and a strict runner.
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { runBounded, describeRun, type RunOptions, type RunResult } from './bounded-run.js';

/** Debian packages that provide each tool (for error messages). */
const PACKAGE: Record<string, string> = {
  'iscsi-test-cu': 'libiscsi-bin',
  'iscsi-ls': 'libiscsi-bin',
  'iscsi-inq': 'libiscsi-bin',
  'iscsi-readcapacity16': 'libiscsi-bin',
  'qemu-img': 'qemu-utils qemu-block-extra',
  tgtd: 'tgt',
  tgtadm: 'tgt',
  timeout: 'coreutils',
  stdbuf: 'coreutils',
};

export function onPath(tool: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    try {
      accessSync(join(dir, tool), constants.X_OK);
      return true;
    } catch {
      // not here
    }
  }
  return false;
}

/** Throw one clear error naming every missing tool and its package. */
export function requireTools(tools: readonly string[]): void {
  const missing = tools.filter((t) => !onPath(t));
  if (missing.length > 0) {
    const pkgs = [...new Set(missing.map((t) => PACKAGE[t] ?? t))].join(' ');
    throw new Error(`missing tools: ${missing.join(', ')} (apt-get install ${pkgs})`);
  }
}

/** Run and require exit status 0; the error carries the command, status and stderr tail. */
export async function runOk(cmd: string, args: readonly string[], opts: RunOptions): Promise<RunResult> {
  const r = await runBounded(cmd, args, opts);
  if (r.exitCode !== 0) throw new Error(describeRun(r));
  return r;
}
