// One whole table being built from TableFull messages (proto/tabula.proto):
// the extents form in one message, or the run form in pieces (`more`). The
// building is sliced: after about SLICE_SEGMENTS segments written (or
// SLICE_ENTRIES runs) it yields to the event loop, so that a 16 M-segment
// table does not stop I/O on the agent's other LUNs while it is built.
// Mirrored vdisks' extra legs come in the run form's run_leg_* arrays or in
// each extent's legs, and are checked like the rest (containers known and
// distinct per segment, offsets in range) as they are added.
import { RunLegs, SegmentState, TableBuilder, checkRuns, type LegLocation, type MappingTable } from '../table/index.js';
import type { TableFull } from '../wire/proto-types.js';
import { fromWireExtent } from '../wire/table-extents.js';

/** Segments written between yields (a typed-array fill of this many takes well under a millisecond). */
const SLICE_SEGMENTS = 1 << 18;
/** Runs or extents added between yields (each is a checked setRange). */
const SLICE_ENTRIES = 1 << 13;

/** Lets other I/O run: resolves after the event loop's pending I/O callbacks. */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A run-form message continues a table when it starts past segment 0. */
export function continuesTable(t: TableFull): boolean {
  return (t.firstSegment ?? 0) > 0;
}

export class TableAssembly {
  readonly version: number;
  readonly #builder: TableBuilder;
  readonly #containers: readonly string[];
  #work = 0;

  /** Starts a table from its first message (geometry checked by the caller). */
  constructor(first: TableFull, name: string) {
    this.version = first.version;
    this.#containers = first.containers;
    this.#builder = new TableBuilder(
      { segmentSize: first.segmentSize, blockSize: first.blockSize, segmentCount: first.segmentCount, version: first.version },
      name,
    );
  }

  get nextSegment(): number {
    return this.#builder.nextSegment;
  }

  get complete(): boolean {
    return this.#builder.complete;
  }

  /** Why `t` cannot be the next message of this table, or null. */
  mismatch(t: TableFull): string | null {
    const tab = this.#builder.table;
    if (t.version !== this.version) return `version ${t.version} continues version ${this.version}`;
    if (t.segmentCount !== tab.segmentCount || t.segmentSize !== tab.segmentSize || t.blockSize !== tab.blockSize) {
      return `geometry differs from the table's first message`;
    }
    if ((t.firstSegment ?? 0) !== this.nextSegment) return `starts at segment ${t.firstSegment ?? 0}, expected ${this.nextSegment}`;
    if (t.containers.length !== this.#containers.length || t.containers.some((c, i) => c !== this.#containers[i])) {
      return 'container list differs from the table\'s first message';
    }
    return null;
  }

  /** Adds one message's extents or runs, yielding to the event loop between slices. Throws RangeError when malformed. */
  async add(t: TableFull): Promise<void> {
    const counts = t.runCounts ?? [];
    if (counts.length > 0) {
      const runs = {
        firstSegment: t.firstSegment ?? 0,
        counts,
        states: t.runStates ?? [],
        containers: t.runContainers ?? [],
        offsets: t.runOffsets ?? [],
        owners: t.runOwners ?? [],
        legCounts: t.runLegCounts ?? [],
        legContainers: t.runLegContainers ?? [],
        legOffsets: t.runLegOffsets ?? [],
      };
      checkRuns(runs, this.#containers.length);
      const owners = runs.owners;
      const legs = new RunLegs(runs, this.#containers);
      for (let i = 0; i < counts.length; i++) {
        const c = runs.containers[i] as number;
        const container = c === 0 ? null : (this.#containers[c - 1] as string);
        const count = counts[i] as number;
        const runLegs = legs.next(i);
        let done = 0;
        do {
          done = this.#part(count, runs.states[i] as SegmentState, container, runs.offsets[i] as number, done, owners[i] ?? 0, runLegs);
          if (this.#work >= SLICE_SEGMENTS) await this.#yield();
        } while (done < count);
      }
      return;
    }
    for (let i = 0; i < t.extents.length; i++) {
      const e = t.extents[i];
      if (e === undefined) break;
      if (e.first !== this.nextSegment) throw new RangeError(`extent ${i} (segments ${e.first}+${e.count}) starts at ${e.first}, expected ${this.nextSegment}`);
      const x = fromWireExtent(e);
      let done = 0;
      do {
        done = this.#part(x.count, x.state, x.container, x.offset, done, x.owner ?? 0, x.legs);
        if (this.#work >= SLICE_SEGMENTS) await this.#yield();
      } while (done < e.count);
    }
  }

  /** The table, once complete. */
  finish(): MappingTable {
    return this.#builder.finish();
  }

  /**
   * Adds a run from its segment `done` on, as much as the current slice has
   * room for (a long run spans slices); returns how far it got.
   */
  #part(count: number, state: SegmentState, container: string | null, offset: number, done: number, owner: number, legs?: readonly LegLocation[]): number {
    if (!Number.isInteger(count) || count < 1) {
      this.#builder.addRun(count, state, container, offset, owner, legs); // throws, naming the run
      return count;
    }
    const n = Math.min(count - done, Math.max(1, SLICE_SEGMENTS - this.#work));
    // A later part of a long run: every leg's offset advances with the primary's.
    const partLegs = done === 0 || legs === undefined ? legs : legs.map((l) => ({ container: l.container, offset: l.offset + done }));
    this.#builder.addRun(n, state, container, container === null ? offset : offset + done, owner, partLegs);
    this.#work += n + SLICE_SEGMENTS / SLICE_ENTRIES;
    return done + n;
  }

  async #yield(): Promise<void> {
    this.#work = 0;
    await yieldToEventLoop();
  }
}
