// How commands print: aligned columns for people, JSON for scripts.
import { segmentStateName } from '../table/index.js';
import type { TableReply } from '../wire/proto-types.js';
import { formatSize } from '../util/size.js';

export type Cell = string | number | boolean;

/** Columns padded to their widest cell; numbers right-aligned. */
export function formatColumns(header: readonly string[], rows: readonly (readonly Cell[])[]): string {
  const text = rows.map((r) => r.map((c) => (typeof c === 'boolean' ? (c ? 'yes' : 'no') : String(c))));
  const widths = header.map((h, i) => Math.max(h.length, ...text.map((r) => (r[i] ?? '').length)));
  const right = header.map((_, i) => rows.length > 0 && rows.every((r) => typeof r[i] === 'number'));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 && !right[i] ? c : right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...text.map(line)].join('\n');
}

/** Key/value lines for one object, keys aligned. */
export function formatFields(fields: readonly [string, Cell][]): string {
  const w = Math.max(...fields.map(([k]) => k.length));
  return fields.map(([k, v]) => `${`${k}:`.padEnd(w + 1)} ${typeof v === 'boolean' ? (v ? 'yes' : 'no') : String(v)}`).join('\n');
}

export function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** `512MiB (12%)` style: bytes of a whole, with the share. */
export function sizeWithShare(part: number, whole: number): string {
  const pct = whole > 0 ? (part / whole) * 100 : 0;
  // Small shares keep a decimal so a thin vdisk that holds data never reads 0%.
  const shown = pct > 0 && pct < 10 ? pct.toFixed(1) : String(Math.round(pct));
  return `${formatSize(part)} (${shown}%)`;
}

/** A table reply for --json: state names instead of enum numbers, no text rendering. */
export function tableJson(t: TableReply): object {
  const { text: _text, extents, ...rest } = t;
  // A mirrored extent's legs as a plain list (on the wire they sit in a wrapper message).
  return { ...rest, extents: extents.map(({ legs, ...e }) => ({ ...e, state: segmentStateName(e.state), ...(legs ? { legs: legs.list } : {}) })) };
}
