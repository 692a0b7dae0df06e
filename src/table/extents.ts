// Run-length encoding of a mapping table: how whole tables (and the changed
// parts of deltas) travel from the controller to agents and into text. One
// extent covers consecutive segments with the same state and container whose
// container offsets advance by one, so a contiguously allocated 1 TiB vdisk
// is one extent rather than a million entries.

import { MappingTable, checkEntry, withContext, type LegLocation, type TableMeta } from './mapping-table.js';
import { SegmentState, segmentStateName } from './segment-state.js';

export interface Extent {
  /** First vdisk segment. */
  first: number;
  /** Number of segments (>= 1). */
  count: number;
  state: SegmentState;
  /** Container UUID; null for states without a location (zero, invalid, error without one). */
  container: string | null;
  /** Container offset of `first`, in segments; segment first+i is at offset+i. 0 without a container. */
  offset: number;
  /** Write owner (agent number) of every segment of the extent; absent or 0: none. */
  owner?: number;
  /**
   * Extra legs of a mirrored vdisk (leg 1 first): segment first+i is also at
   * legs[k].offset+i in legs[k].container. Absent when none.
   */
  legs?: LegLocation[];
}

/**
 * Extents of the segments in [first, end) for which `include` is true (all of
 * them when omitted). Runs never span an excluded segment.
 */
export function extentsIn(table: MappingTable, first: number, end: number, include?: (seg: number) => boolean): Extent[] {
  if (!Number.isInteger(first) || !Number.isInteger(end) || first < 0 || end < first || end > table.segmentCount) {
    throw new RangeError(`extents of segments ${first}-${end} out of range (table has ${table.segmentCount} segments)`);
  }
  const out: Extent[] = [];
  const containers = table.containers;
  let s = first;
  while (s < end) {
    if (include !== undefined && !include(s)) {
      s++;
      continue;
    }
    let stop = end;
    if (include !== undefined) {
      stop = s + 1;
      while (stop < end && include(stop)) stop++;
    }
    while (s < stop) {
      const next = table.runEnd(s, stop);
      const slot = table.slotOf(s);
      const e: Extent = {
        first: s,
        count: next - s,
        state: table.stateOf(s),
        container: slot < 0 ? null : (containers[slot] as string),
        offset: table.containerOffsetOf(s),
      };
      // Only owned extents carry the field: the common extent stays as it was.
      const owner = table.ownerOf(s);
      if (owner !== 0) e.owner = owner;
      if (table.maxLegs > 1 && table.legCountOf(s) > 1) e.legs = table.locationsOf(s).slice(1);
      out.push(e);
      s = next;
    }
  }
  return out;
}

/** The whole table as extents covering every segment in order. */
export function toExtents(table: MappingTable): Extent[] {
  return extentsIn(table, 0, table.segmentCount);
}

/**
 * Checks that extents are sorted, non-overlapping, non-empty and inside
 * [0, segmentCount), with valid entries; with `cover`, that they also cover
 * every segment. Throws a RangeError naming the first bad extent.
 */
export function checkExtents(extents: readonly Extent[], segmentCount: number, cover: boolean): void {
  let next = 0;
  for (let i = 0; i < extents.length; i++) {
    const e = extents[i] as Extent;
    if (!Number.isInteger(e.first) || !Number.isInteger(e.count) || e.count < 1) {
      throw badExtent(i, e, 'first and count must be integers, count at least 1');
    }
    if (e.first < next) throw badExtent(i, e, `overlaps or is out of order (next free segment ${next})`);
    if (cover && e.first !== next) throw badExtent(i, e, `gap at segments ${next}-${e.first - 1}`);
    if (e.first + e.count > segmentCount) throw badExtent(i, e, `beyond the end (table has ${segmentCount} segments)`);
    try {
      checkEntry(e, e.count, 1);
    } catch (err) {
      throw withContext(err, extentName(i, e));
    }
    next = e.first + e.count;
  }
  if (cover && next !== segmentCount) {
    throw new RangeError(`extents cover segments 0-${next - 1} but the table has ${segmentCount} segments`);
  }
}

function extentName(i: number, e: Extent): string {
  return `extent ${i} (segments ${e.first}+${e.count})`;
}

function badExtent(i: number, e: Extent, why: string): RangeError {
  return new RangeError(`${extentName(i, e)}: ${why}`);
}

/** Rebuilds a table from extents that cover it exactly (as `toExtents` makes them). */
export function fromExtents(meta: TableMeta, extents: readonly Extent[], name?: string): MappingTable {
  const table = new MappingTable({ ...meta, name });
  checkExtents(extents, meta.segmentCount, true);
  applyExtents(table, extents);
  return table;
}

/** Writes extents into a table (no version change). Callers check them first. */
export function applyExtents(table: MappingTable, extents: readonly Extent[]): void {
  for (const e of extents) {
    table.setRange(e.first, e.count, e, 1);
  }
}

/** For error and log messages: `segments 12-15 normal container <uuid> offset 7`. */
export function describeExtent(e: Extent): string {
  const loc = e.container === null ? '' : ` container ${e.container} offset ${e.offset}`;
  const owner = e.owner ? ` owner ${e.owner}` : '';
  const legs = (e.legs ?? []).map((l) => ` + container ${l.container} offset ${l.offset}`).join('');
  return `segments ${e.first}-${e.first + e.count - 1} ${segmentStateName(e.state)}${loc}${legs}${owner}`;
}
