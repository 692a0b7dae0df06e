// How `tabula vdisk migrate|migrate-status` and `tabula container evacuate`
// show migrations: one progress line per migration (percent, MB/s, ETA), and
// `--wait`, which polls the controller until every named migration has
// stopped, refreshing the line in place on a terminal and printing it when
// it changes otherwise (so logs of scripted runs stay short).
import type { MigrationInfo } from '../wire/proto-types.js';
import { formatSize } from '../util/size.js';
import { CliError, type AdminSession } from './admin-client.js';
import { formatColumns } from './output.js';

/** `12s`, `3m05s`, `1h02m`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** Decimal megabytes per second, as disk tools print it. */
export function formatRate(bytesPerSecond: number): string {
  return bytesPerSecond > 0 ? `${(bytesPerSecond / 1e6).toFixed(1)} MB/s` : '- MB/s';
}

function short(id: string): string {
  return id === '' ? '' : id.slice(0, 8);
}

/** Where a migration goes: `to 1c077dfc`, `off 1c077dfc` (evacuation). */
export function migrationTarget(m: MigrationInfo): string {
  if (m.toContainer !== '' && m.fromContainer !== '') return `from ${short(m.fromContainer)} to ${short(m.toContainer)}`;
  if (m.toContainer !== '') return `to ${short(m.toContainer)}`;
  return `off ${short(m.fromContainer)}`;
}

/**
 * `vdisk disk0 to 1c077dfc: running 45.0% (461/1024 segments), 38.2 MB/s, ETA 15s`;
 * finished ones say so instead of a rate, failed ones carry the reason.
 */
export function migrationLine(m: MigrationInfo): string {
  const head = `vdisk ${m.vdiskName || m.vdiskId} ${migrationTarget(m)}: ${m.state} ${m.percent.toFixed(1)}% (${m.segmentsDone}/${m.segmentsTotal} segments, ${formatSize(m.bytesDone)})`;
  if (m.state === 'running') {
    const eta = m.etaSeconds >= 0 ? `ETA ${formatDuration(m.etaSeconds)}` : 'ETA unknown';
    return `${head}, ${formatRate(m.bytesPerSecond)}, ${eta}${m.error ? `; ${m.error}` : ''}`;
  }
  return `${head}${m.error ? `: ${m.error}` : ''}`;
}

export function migrationRows(list: readonly MigrationInfo[]): string {
  return formatColumns(
    ['VDISK', 'TARGET', 'STATE', 'PERCENT', 'SEGMENTS', 'MOVED', 'RATE', 'ETA', 'STARTED', 'NOTE'],
    list.map((m) => [
      m.vdiskName || m.vdiskId,
      migrationTarget(m),
      m.state,
      `${m.percent.toFixed(1)}%`,
      `${m.segmentsDone}/${m.segmentsTotal}`,
      formatSize(m.bytesDone),
      m.state === 'running' ? formatRate(m.bytesPerSecond) : '-',
      m.state === 'running' && m.etaSeconds >= 0 ? formatDuration(m.etaSeconds) : '-',
      m.started,
      m.error || '-',
    ]),
  );
}

export interface WaitOptions {
  /** Poll interval. */
  intervalMs?: number;
  /** Where progress goes; nothing when undefined (--json). */
  out?: NodeJS.WriteStream;
}

/**
 * Polls GetMigration for each vdisk until none is running; returns the final
 * states. Progress lines go to `out`: redrawn in place on a TTY, else printed
 * whenever a line's text (ignoring rate and ETA) changes.
 */
export async function waitMigrations(s: AdminSession, vdisks: readonly string[], opts: WaitOptions = {}): Promise<MigrationInfo[]> {
  const every = opts.intervalMs ?? 1000;
  const out = opts.out;
  const tty = out?.isTTY === true;
  const lastShown = new Map<string, string>();
  let drawn = 0;
  for (;;) {
    const list = await Promise.all(vdisks.map((v) => s.call('GetMigration', { vdisk: v })));
    if (out !== undefined) {
      const lines = list.map(migrationLine);
      if (tty) {
        // Move up over the previous block and redraw it.
        if (drawn > 0) out.write(`\x1b[${drawn}F`);
        out.write(lines.map((l) => `\x1b[2K${l}\n`).join(''));
        drawn = lines.length;
      } else {
        for (const [i, m] of list.entries()) {
          const key = `${m.state} ${m.segmentsDone}`;
          if (lastShown.get(m.vdiskId) === key) continue;
          lastShown.set(m.vdiskId, key);
          out.write(`${lines[i]}\n`);
        }
      }
    }
    if (list.every((m) => m.state !== 'running')) return list;
    await new Promise((r) => setTimeout(r, every));
  }
}

/** Throws the one-line CLI error for migrations that did not finish. */
export function requireDone(list: readonly MigrationInfo[]): void {
  const bad = list.filter((m) => m.state !== 'done');
  if (bad.length === 0) return;
  const what = bad.map((m) => `migration of vdisk ${m.vdiskName || m.vdiskId} ${m.state}${m.error ? `: ${m.error}` : ''}`).join('; ');
  throw new CliError(what);
}
