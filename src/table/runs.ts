// The run form of a whole table (TableFull's run_* fields in
// proto/tabula.proto): the runs of the run-length encoding as four parallel
// number arrays, the container named by a 1-based index into the table's
// container list instead of its UUID. Cheap to encode (packed varints, no
// object per run) and to decode, and cut into pieces of a bounded number of
// runs so that a table of any size travels in messages of bounded size.
// TableBuilder rebuilds a table from such pieces (or from extents) one piece
// at a time, checking that they continue each other and cover the table.

import { MappingTable, withContext, type TableMeta } from './mapping-table.js';
import type { Extent } from './extents.js';
import type { SegmentState } from './segment-state.js';

/** Consecutive runs of a table from `firstSegment`. */
export interface TableRuns {
  firstSegment: number;
  counts: number[];
  states: number[];
  /** 1-based index into the table's container list; 0 for none. */
  containers: number[];
  /** Container offset of each run's first segment (0 without a container). */
  offsets: number[];
  /**
   * Write owner of each run (0: none); empty when no run of the piece is
   * owned, which is the common case (owned segments are runs of their own).
   */
  owners?: number[];
}

/**
 * The whole table's runs in pieces of at most `maxRuns` runs (the last may
 * hold fewer; a table of 0 segments gives one empty piece). Container
 * indices refer to `table.containers` (slot + 1).
 */
export function* tableRuns(table: MappingTable, maxRuns: number): Generator<TableRuns> {
  if (!Number.isInteger(maxRuns) || maxRuns < 1) throw new RangeError(`runs per piece ${maxRuns} invalid: must be a positive integer`);
  const n = table.segmentCount;
  let s = 0;
  do {
    const piece: TableRuns = { firstSegment: s, counts: [], states: [], containers: [], offsets: [] };
    const owned = table.ownedCount > 0;
    const owners: number[] = [];
    let anyOwner = false;
    while (s < n && piece.counts.length < maxRuns) {
      const end = table.runEnd(s, n);
      piece.counts.push(end - s);
      piece.states.push(table.stateOf(s));
      piece.containers.push(table.slotOf(s) + 1);
      piece.offsets.push(table.containerOffsetOf(s));
      if (owned) {
        const o = table.ownerOf(s);
        owners.push(o);
        if (o !== 0) anyOwner = true;
      }
      s = end;
    }
    if (anyOwner) piece.owners = owners;
    yield piece;
  } while (s < n);
}

/**
 * Builds a table from pieces that cover it in order: runs, extents, or
 * single runs. Every entry is checked as MappingTable.setRange checks it;
 * a piece that does not start where the previous one ended is refused.
 */
export class TableBuilder {
  readonly table: MappingTable;
  #next = 0;

  constructor(meta: TableMeta, name?: string) {
    this.table = new MappingTable({ ...meta, name });
  }

  /** The segment the next piece must start at. */
  get nextSegment(): number {
    return this.#next;
  }

  get complete(): boolean {
    return this.#next === this.table.segmentCount;
  }

  /**
   * Adds `count` segments at nextSegment, segment i at container offset
   * `offset + i`. Long runs may be added in parts (the caller advances the
   * offset).
   */
  addRun(count: number, state: SegmentState, container: string | null, offset: number, owner = 0): void {
    if (!Number.isInteger(count) || count < 1) throw new RangeError(`${this.#where()}: run of ${count} segments (must be at least 1)`);
    this.table.setRange(this.#next, count, owner === 0 ? { state, container, offset } : { state, container, offset, owner }, 1);
    this.#next += count;
  }

  /** Adds extents that continue the table in order (as toExtents makes them). */
  addExtents(extents: readonly Extent[]): void {
    for (let i = 0; i < extents.length; i++) {
      const e = extents[i] as Extent;
      if (e.first !== this.#next) throw new RangeError(`${this.#where()}: extent ${i} starts at segment ${e.first}`);
      try {
        this.addRun(e.count, e.state, e.container, e.offset, e.owner ?? 0);
      } catch (err) {
        throw withContext(err, `extent ${i}`);
      }
    }
  }

  /** The table, once every segment has been added. */
  finish(): MappingTable {
    if (!this.complete) {
      throw new RangeError(`table covers segments 0-${this.#next - 1} but has ${this.table.segmentCount} segments`);
    }
    return this.table;
  }

  #where(): string {
    return `table ${this.table.name || '(unnamed)'} at segment ${this.#next}`;
  }
}

/**
 * Checks a run piece's shape against the container list: equal lengths, a
 * known container index for every run. Entries themselves are checked when
 * added.
 */
export function checkRuns(r: TableRuns, containerCount: number): void {
  const n = r.counts.length;
  if (r.owners !== undefined && r.owners.length !== 0 && r.owners.length !== n) {
    throw new RangeError(`runs from segment ${r.firstSegment}: ${n} counts, ${r.owners.length} owners (must be equal, or no owners)`);
  }
  if (r.states.length !== n || r.containers.length !== n || r.offsets.length !== n) {
    throw new RangeError(
      `runs from segment ${r.firstSegment}: ${n} counts, ${r.states.length} states, ${r.containers.length} containers, ${r.offsets.length} offsets (must be equal)`,
    );
  }
  for (let i = 0; i < n; i++) {
    const c = r.containers[i] as number;
    if (!Number.isInteger(c) || c < 0 || c > containerCount) {
      throw new RangeError(`runs from segment ${r.firstSegment}: run ${i} names container ${c} of ${containerCount}`);
    }
  }
}
