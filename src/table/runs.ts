// The run form of a whole table (TableFull's run_* fields in
// proto/tabula.proto): the runs of the run-length encoding as four parallel
// number arrays, the container named by a 1-based index into the table's
// container list instead of its UUID. Cheap to encode (packed varints, no
// object per run) and to decode, and cut into pieces of a bounded number of
// runs so that a table of any size travels in messages of bounded size.
// TableBuilder rebuilds a table from such pieces (or from extents) one piece
// at a time, checking that they continue each other and cover the table.
// Extra legs of mirrored vdisks ride in three more arrays that stay empty
// (absent) for a one-copy table, so its pieces are as before.

import { MAX_COPIES, MappingTable, withContext, type LegLocation, type TableMeta } from './mapping-table.js';
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
  /**
   * Extra legs of each run (0 .. MAX_COPIES - 1); absent (or empty) when no
   * run of the piece has any. The legs themselves are flattened over the
   * runs in run order, leg 1 first, in legContainers (1-based index into
   * the container list, never 0) and legOffsets (container offset of the
   * run's first segment).
   */
  legCounts?: number[];
  legContainers?: number[];
  legOffsets?: number[];
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
    const mirrored = table.maxLegs > 1;
    const legCounts: number[] = [];
    const legContainers: number[] = [];
    const legOffsets: number[] = [];
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
      if (mirrored) {
        const legs = Math.max(0, table.legCountOf(s) - 1);
        legCounts.push(legs);
        for (let k = 1; k <= legs; k++) {
          legContainers.push(table.legSlotOf(s, k) + 1);
          legOffsets.push(table.legOffsetOf(s, k));
        }
      }
      s = end;
    }
    if (anyOwner) piece.owners = owners;
    if (legContainers.length > 0) {
      piece.legCounts = legCounts;
      piece.legContainers = legContainers;
      piece.legOffsets = legOffsets;
    }
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
  addRun(count: number, state: SegmentState, container: string | null, offset: number, owner = 0, legs?: readonly LegLocation[]): void {
    if (!Number.isInteger(count) || count < 1) throw new RangeError(`${this.#where()}: run of ${count} segments (must be at least 1)`);
    const entry = owner === 0 ? { state, container, offset, legs } : { state, container, offset, owner, legs };
    this.table.setRange(this.#next, count, entry, 1);
    this.#next += count;
  }

  /** Adds extents that continue the table in order (as toExtents makes them). */
  addExtents(extents: readonly Extent[]): void {
    for (let i = 0; i < extents.length; i++) {
      const e = extents[i] as Extent;
      if (e.first !== this.#next) throw new RangeError(`${this.#where()}: extent ${i} starts at segment ${e.first}`);
      try {
        this.addRun(e.count, e.state, e.container, e.offset, e.owner ?? 0, e.legs);
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
  checkRunLegs(r, containerCount);
}

/** The leg arrays of a run piece: lengths that add up, a known container (never none) per leg, no container twice in a run. */
function checkRunLegs(r: TableRuns, containerCount: number): void {
  const counts = r.legCounts ?? [];
  const containers = r.legContainers ?? [];
  const offsets = r.legOffsets ?? [];
  const where = `runs from segment ${r.firstSegment}`;
  if (counts.length === 0) {
    if (containers.length !== 0 || offsets.length !== 0) throw new RangeError(`${where}: leg containers or offsets without leg counts`);
    return;
  }
  if (counts.length !== r.counts.length) throw new RangeError(`${where}: ${r.counts.length} counts, ${counts.length} leg counts (must be equal, or no leg counts)`);
  let total = 0;
  for (let i = 0; i < counts.length; i++) {
    const k = counts[i] as number;
    if (!Number.isInteger(k) || k < 0 || k > MAX_COPIES - 1) throw new RangeError(`${where}: run ${i} has ${k} extra legs (at most ${MAX_COPIES - 1})`);
    if (k > 0 && r.containers[i] === 0) throw new RangeError(`${where}: run ${i} has extra legs but no container`);
    for (let j = total; j < total + k && j < containers.length; j++) {
      const c = containers[j] as number;
      if (!Number.isInteger(c) || c < 1 || c > containerCount) {
        throw new RangeError(`${where}: run ${i} leg ${j - total + 1} names container ${c} of ${containerCount}`);
      }
      if (c === r.containers[i]) throw new RangeError(`${where}: run ${i} leg ${j - total + 1} is on the container of leg 0`);
      for (let p = total; p < j; p++) {
        if (containers[p] === c) throw new RangeError(`${where}: run ${i} leg ${j - total + 1} is on the container of leg ${p - total + 1}`);
      }
    }
    total += k;
  }
  if (containers.length !== total || offsets.length !== total) {
    throw new RangeError(`${where}: ${total} extra legs counted, ${containers.length} leg containers, ${offsets.length} leg offsets (must be equal)`);
  }
}

/**
 * Cursor over a checked run piece's extra legs: `next(i)` returns run i's
 * legs (runs visited in order), undefined for a run without any.
 */
export class RunLegs {
  readonly #counts: readonly number[];
  readonly #legContainers: readonly number[];
  readonly #legOffsets: readonly number[];
  readonly #containers: readonly string[];
  #at = 0;

  constructor(runs: TableRuns, containers: readonly string[]) {
    this.#counts = runs.legCounts ?? [];
    this.#legContainers = runs.legContainers ?? [];
    this.#legOffsets = runs.legOffsets ?? [];
    this.#containers = containers;
  }

  next(i: number): LegLocation[] | undefined {
    const k = this.#counts[i] ?? 0;
    if (k === 0) return undefined;
    const out: LegLocation[] = [];
    for (let j = 0; j < k; j++, this.#at++) {
      out.push({
        container: this.#containers[(this.#legContainers[this.#at] as number) - 1] as string,
        offset: this.#legOffsets[this.#at] as number,
      });
    }
    return out;
  }
}
