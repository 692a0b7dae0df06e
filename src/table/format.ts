// Readable text for a mapping table, like `dmsetup table`: one line per
// extent, `first-last state [c=<container> off=<offset> [legs=<container>:<offset>+...]] [owner=<agent number>]`
// (legs: the extra legs of a mirrored vdisk, leg 1 first). Used by
// `tabula vdisk table`; ranges are inclusive vdisk segment numbers and
// offsets are in segments.

import type { MappingTable } from './mapping-table.js';
import { toExtents, type Extent } from './extents.js';
import { segmentStateName } from './segment-state.js';

export interface FormatOptions {
  /** Print whole container UUIDs instead of their first 8 characters. */
  fullIds?: boolean;
  /** Start with a `#` line giving version and geometry. */
  header?: boolean;
}

export function formatExtent(e: Extent, opts: FormatOptions = {}): string {
  const range = `${e.first}-${e.first + e.count - 1} ${segmentStateName(e.state)}`;
  const owner = e.owner ? ` owner=${e.owner}` : '';
  if (e.container === null) return range + owner;
  const id = (c: string): string => (opts.fullIds ? c : c.slice(0, 8));
  // Extra legs of a mirrored vdisk after leg 0: `legs=<container>:<offset>+...`.
  const legs = e.legs !== undefined && e.legs.length > 0 ? ` legs=${e.legs.map((l) => `${id(l.container)}:${l.offset}`).join('+')}` : '';
  return `${range} c=${id(e.container)} off=${e.offset}${legs}${owner}`;
}

export function formatExtents(extents: readonly Extent[], opts: FormatOptions = {}): string {
  return extents.map((e) => formatExtent(e, opts)).join('\n');
}

export function formatTable(table: MappingTable, opts: FormatOptions = {}): string {
  const body = formatExtents(toExtents(table), opts);
  if (!opts.header) return body;
  const head =
    `# ${table.name ? `vdisk ${table.name} ` : ''}version ${table.version}: ${table.segmentCount} segments` +
    ` of ${table.segmentSize} bytes, block size ${table.blockSize}`;
  return body ? `${head}\n${body}` : head;
}
