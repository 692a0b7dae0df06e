// How `tabula vdisk ls|show|set-copies|repair` show a mirrored vdisk's
// health: one word for the HEALTH column (healthy, degraded N, rebuilding
// x/y), one line for `show`, and `--wait`, which polls the controller until
// the rebuild has ended, printing the line when it changes.
import type { VdiskHealthInfo, VdiskInfo } from '../wire/proto-types.js';
import { formatSize } from '../util/size.js';
import { CliError, type AdminSession } from './admin-client.js';

/** The HEALTH column: `healthy`, `degraded 12`, `rebuilding 3/64`, `resyncing 2/5`. */
export function healthText(h: VdiskHealthInfo | null | undefined): string {
  if (h === null || h === undefined) return '-';
  if (h.rebuilding !== null) return `rebuilding ${h.rebuilding.done}/${h.rebuilding.total}`;
  if (h.resyncing !== null) return `resyncing ${h.resyncing.done}/${h.resyncing.total}`;
  if (h.degraded > 0) return `degraded ${h.degraded}`;
  return 'healthy';
}

/**
 * `vdisk show`'s health line: `2 copies, healthy (64 segments)`;
 * `2 copies, degraded: 12 of 64 segments, 12 stale legs (3 dirty); rebuilding 3/12 segments, 3 MiB copied`.
 */
export function healthLine(h: VdiskHealthInfo | null | undefined): string {
  if (h === null || h === undefined) return '-';
  const parts = [`${h.copies} cop${h.copies === 1 ? 'y' : 'ies'}`];
  if (h.degraded === 0) parts.push(`healthy (${h.segments} segments)`);
  else parts.push(`degraded: ${h.degraded} of ${h.segments} segments`);
  let line = parts.join(', ');
  if (h.stale > 0) line += `, ${h.stale} stale leg${h.stale === 1 ? '' : 's'} (${h.dirty} dirty)`;
  const progress = (what: string, p: NonNullable<VdiskHealthInfo['rebuilding']>): string => `; ${what} ${p.done}/${p.total} segments, ${formatSize(p.bytes)} copied`;
  if (h.rebuilding !== null) line += progress('rebuilding', h.rebuilding);
  if (h.resyncing !== null) line += progress('resyncing', h.resyncing);
  if (h.blocked !== '') line += `; waiting: ${h.blocked}`;
  return line;
}

export interface WaitRebuildOptions {
  intervalMs?: number;
  /** Where progress goes; nothing when undefined (--json). */
  out?: NodeJS.WriteStream;
}

/**
 * Polls the vdisk until no rebuild runs; returns its final state. Throws the
 * CLI error when the rebuild is blocked (it goes on in the background, but
 * needs an admin: no room in another domain, a leg that cannot be read) or
 * ends with segments still degraded.
 */
export async function waitRebuild(s: AdminSession, vdisk: string, opts: WaitRebuildOptions = {}): Promise<VdiskInfo> {
  const every = opts.intervalMs ?? 500;
  let shown = '';
  for (;;) {
    const v = await s.call('ShowVdisk', { name: vdisk });
    const h = v.health ?? null;
    const line = `vdisk ${v.name}: ${healthLine(h)}`;
    if (opts.out !== undefined && line !== shown) {
      shown = line;
      opts.out.write(`${line}\n`);
    }
    if (h === null) return v;
    if (h.blocked !== '') throw new CliError(`vdisk ${v.name}: the rebuild cannot go on: ${h.blocked} (it retries in the background)`);
    if (h.rebuilding === null && h.resyncing === null) {
      // Stale legs wait for their container (or the rebuild delay): not this command's to wait for.
      if (h.degraded > h.stale) throw new CliError(`vdisk ${v.name}: ${h.degraded} segments are still degraded`);
      return v;
    }
    await new Promise((r) => setTimeout(r, every));
  }
}
