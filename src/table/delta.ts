// Table deltas: what the controller pushes after an agent holds a whole
// table. A delta from version V to V+k carries the new size and the changed
// segments as extents; it applies only to a table at exactly version V, and
// an agent that sees anything else asks for the whole table again.

import { MappingTable } from './mapping-table.js';
import { applyExtents, checkExtents, extentsIn, type Extent } from './extents.js';

export interface TableDelta {
  fromVersion: number;
  toVersion: number;
  /** Segment count after the delta; growth adds zero segments before the extents apply. */
  segmentCount: number;
  /** Changed segments, with their new entries. */
  extents: Extent[];
}

/** The delta does not start at the table's version: the agent needs the whole table. */
export class VersionGapError extends Error {
  constructor(
    readonly tableVersion: number,
    readonly fromVersion: number,
    readonly toVersion: number,
    vdisk = '',
  ) {
    super(
      `${vdisk ? `vdisk ${vdisk}` : 'vdisk'}: delta ${fromVersion}->${toVersion} does not apply to table version ${tableVersion}`,
    );
    this.name = 'VersionGapError';
  }
}

/** The delta that turns `older` into `newer` (same geometry, newer version). */
export function diff(older: MappingTable, newer: MappingTable): TableDelta {
  if (older.segmentSize !== newer.segmentSize || older.blockSize !== newer.blockSize) {
    throw new RangeError(
      `cannot diff tables of different geometry (segment size ${older.segmentSize}/${newer.segmentSize}, block size ${older.blockSize}/${newer.blockSize})`,
    );
  }
  if (newer.version <= older.version) {
    throw new RangeError(`cannot diff version ${older.version} to version ${newer.version}: versions only move forward`);
  }
  return {
    fromVersion: older.version,
    toVersion: newer.version,
    segmentCount: newer.segmentCount,
    extents: newer.changedRuns(older).flatMap(([first, end]) => extentsIn(newer, first, end)),
  };
}

/**
 * Applies a delta in place and moves the table to `delta.toVersion`. Throws
 * VersionGapError unless the table is at `delta.fromVersion`; a malformed
 * delta throws a RangeError before anything changes.
 */
export function applyDelta(table: MappingTable, delta: TableDelta): MappingTable {
  if (delta.fromVersion !== table.version) {
    throw new VersionGapError(table.version, delta.fromVersion, delta.toVersion, table.name);
  }
  if (!Number.isSafeInteger(delta.toVersion) || delta.toVersion <= delta.fromVersion) {
    throw new RangeError(`delta ${delta.fromVersion}->${delta.toVersion}: the target version must be newer`);
  }
  if (!Number.isInteger(delta.segmentCount) || delta.segmentCount < 0) {
    throw new RangeError(`delta ${delta.fromVersion}->${delta.toVersion}: segment count ${delta.segmentCount} invalid`);
  }
  checkExtents(delta.extents, delta.segmentCount, false);
  return applyCheckedDelta(table, delta);
}

/**
 * applyDelta without its checks, for a caller that has made them (the
 * agent's device checks before it holds any I/O): the extents once, not twice.
 */
export function applyCheckedDelta(table: MappingTable, delta: TableDelta): MappingTable {
  table.resize(delta.segmentCount);
  applyExtents(table, delta.extents);
  table.setVersion(delta.toVersion);
  return table;
}
