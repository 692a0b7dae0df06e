// The mapping table of one vdisk: for each segment, its state and where it
// lives (container, segment offset in that container). Kept in parallel typed
// arrays (7 bytes per segment) so a 1 M-segment table is 7 MiB and every
// lookup is O(1); shared by the controller and the agent, so no I/O here.
// Write owners (the agent that alone may write a segment of a vdisk exported
// on several agents, docs/architecture.md) are few, so they live in a side
// map and cost nothing per segment. Extra legs of mirrored vdisks (copies
// 2 and 3) live in parallel slot/offset arrays allocated only when a table
// first holds one, so a one-copy table stays at 7 bytes per segment (13 with
// two legs, 19 with three).

import {
  SegmentState,
  isSegmentState,
  segmentStateName,
  stateHasLocation,
  stateNeedsLocation,
} from './segment-state.js';

export const DEFAULT_SEGMENT_SIZE = 1 << 20;
export const MIN_SEGMENT_SIZE = 64 << 10;
/** Keeps container byte offsets (offset × segmentSize) exact in a double for any realistic container. */
export const MAX_SEGMENT_SIZE = 1 << 30;
export const DEFAULT_BLOCK_SIZE = 512;
export const BLOCK_SIZES: readonly number[] = [512, 4096];
/** Segment indices travel as uint32. */
export const MAX_SEGMENT_COUNT = 0xffffffff;
/** Container segment offsets are stored as uint32. */
export const MAX_CONTAINER_OFFSET = 0xffffffff;
/** Slots are stored +1 in a Uint16Array (0 = no container). */
export const MAX_CONTAINERS = 0xffff;
/** Owners travel as uint32; 0 means none. */
export const NO_OWNER = 0;
export const MAX_OWNER = 0xffffffff;

/** Most locations (legs) a segment may have: leg 0 (the primary) and up to two extra legs. */
export const MAX_COPIES = 3;

const NO_SLOT = 0;

/** One location of a segment: a container and the offset in it, in segments. */
export interface LegLocation {
  readonly container: string;
  readonly offset: number;
}

/** Shared by every entry without extra legs (never mutated). */
const NO_LEGS: readonly LegLocation[] = Object.freeze([]);

export interface TableGeometry {
  /** Bytes per segment: a power of two, 64 KiB .. 1 GiB. */
  readonly segmentSize: number;
  /** Logical block size in bytes: 512 or 4096. */
  readonly blockSize: number;
  readonly segmentCount: number;
}

export interface TableMeta extends TableGeometry {
  readonly version: number;
}

export interface TableOptions {
  segmentCount: number;
  segmentSize?: number;
  blockSize?: number;
  version?: number;
  /** vdisk name, used only in error messages. */
  name?: string;
}

/** One segment's entry. `container` is null and `offset` 0 when the state has no location. */
export interface SegmentEntry {
  readonly state: SegmentState;
  readonly container: string | null;
  /** Offset in the container, in segments. */
  readonly offset: number;
  /**
   * Extra legs (copies 2.., leg 1 first) of a mirrored segment; absent when
   * it has none, so a one-copy entry is exactly what it was before mirrors.
   */
  readonly legs?: readonly LegLocation[];
}

/**
 * What to store. Normal and no-write need a container and offset; error may
 * have one (the failed location) or not; zero and invalid never do, so their
 * container and offset are dropped.
 */
export interface EntryInput {
  readonly state: SegmentState;
  readonly container?: string | null;
  readonly offset?: number;
  /** Write owner of every segment set (agent number); absent or 0: none. */
  readonly owner?: number;
  /**
   * Extra legs (leg 1 first, at most MAX_COPIES - 1), only with a container;
   * every leg's container distinct. With setRange each leg's offset advances
   * by offsetStep like the primary's. Absent or empty: none (a set replaces
   * the whole entry, so the segment's previous extra legs go). States
   * without a location drop them.
   */
  readonly legs?: readonly LegLocation[];
}

/** One segment's share of an I/O. `bufferOffset` is in bytes from the start of the I/O's buffer. */
export interface IoPiece {
  seg: number;
  lba: number;
  blocks: number;
  bufferOffset: number;
}

export type PieceCallback = (seg: number, lba: number, blocks: number, bufferOffset: number) => void;

export interface Location {
  seg: number;
  state: SegmentState;
  /** null when the segment has no location (zero, invalid, error without one). */
  containerId: string | null;
  /** Byte offset of the LBA in the container's data area; -1 when there is no location. */
  byteOffset: number;
}

export interface StateCounts {
  normal: number;
  zero: number;
  noWrite: number;
  invalid: number;
  error: number;
  /** Segments that point at a container segment, whatever their state. */
  allocated: number;
  /**
   * Only in a table that has held extra legs (maxLegs > 1): byLegs[k] is the
   * number of segments with k legs (k = 0 .. maxLegs).
   */
  byLegs?: number[];
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

/** Throws unless the geometry is one a vdisk may have. */
export function checkGeometry(g: TableGeometry): void {
  if (!isPowerOfTwo(g.segmentSize) || g.segmentSize < MIN_SEGMENT_SIZE || g.segmentSize > MAX_SEGMENT_SIZE) {
    throw new RangeError(
      `segment size ${g.segmentSize} invalid: must be a power of two from ${MIN_SEGMENT_SIZE} to ${MAX_SEGMENT_SIZE} bytes`,
    );
  }
  if (!BLOCK_SIZES.includes(g.blockSize)) {
    throw new RangeError(`block size ${g.blockSize} invalid: must be one of ${BLOCK_SIZES.join(', ')}`);
  }
  checkSegmentCount(g.segmentCount);
}

function checkSegmentCount(n: number): void {
  if (!Number.isInteger(n) || n < 0 || n > MAX_SEGMENT_COUNT) {
    throw new RangeError(`segment count ${n} invalid: must be an integer from 0 to ${MAX_SEGMENT_COUNT}`);
  }
}

function checkVersion(v: number): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`table version ${v} invalid: must be a non-negative integer`);
}

/** An entry with its container and offset dropped where the state has none. */
export interface NormalEntry {
  state: SegmentState;
  container: string | null;
  offset: number;
  /** Extra legs, checked; absent when none. */
  legs?: readonly LegLocation[];
}

function checkOwner(owner: number): void {
  if (owner >>> 0 !== owner) throw new RangeError(`owner ${owner} invalid: must be an integer from 0 to ${MAX_OWNER}`);
}

/** `runs` (sorted, disjoint [first, end)) with the segments `extra` added, still sorted and disjoint; all below `count`. */
function mergeRuns(runs: readonly [number, number][], extra: readonly number[], count: number): [number, number][] {
  const marks: [number, number][] = [...runs, ...extra.filter((s) => s < count).map((s): [number, number] => [s, s + 1])];
  marks.sort((x, y) => x[0] - y[0]);
  const out: [number, number][] = [];
  for (const [a, b] of marks) {
    const last = out[out.length - 1];
    if (last !== undefined && a <= last[1]) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

function bad(what: string): never {
  throw new RangeError(what);
}

/**
 * normalizeEntry without context: throws a bare RangeError that callers
 * prefix. Context strings are built only on failure, so bulk loads (a
 * fragmented table is a million of these) stay cheap.
 */
export function checkEntry(entry: EntryInput, count: number, offsetStep: number): NormalEntry {
  const { state } = entry;
  if (!isSegmentState(state)) bad(`unknown state ${String(state)}`);
  if (!Number.isInteger(offsetStep) || offsetStep < 0) bad(`offset step ${offsetStep} invalid: must be a non-negative integer`);
  if (!stateHasLocation(state)) return { state, container: null, offset: 0 };
  const container = entry.container === '' || entry.container === undefined ? null : entry.container;
  if (container === null) {
    if (stateNeedsLocation(state)) bad(`a ${segmentStateName(state)} entry needs a container`);
    if (entry.offset !== undefined && entry.offset !== 0) bad(`offset ${entry.offset} given without a container`);
    if (entry.legs !== undefined && entry.legs.length > 0) bad('legs given without a container');
    return { state, container: null, offset: 0 };
  }
  if (typeof container !== 'string') bad('container id must be a string');
  const offset = entry.offset;
  if (offset === undefined || !Number.isInteger(offset) || offset < 0 || offset > MAX_CONTAINER_OFFSET) {
    bad(`container offset ${String(offset)} invalid: must be an integer from 0 to ${MAX_CONTAINER_OFFSET}`);
  }
  const last = offset + Math.max(0, count - 1) * offsetStep;
  if (last > MAX_CONTAINER_OFFSET) bad(`container offset ${last} exceeds ${MAX_CONTAINER_OFFSET}`);
  const legs = entry.legs;
  if (legs === undefined || legs.length === 0) return { state, container, offset };
  checkLegs(container, legs, count, offsetStep);
  return { state, container, offset, legs };
}

/** Extra legs: at most MAX_COPIES - 1, each a container distinct from the primary and the others, offsets in range. */
function checkLegs(primary: string, legs: readonly LegLocation[], count: number, offsetStep: number): void {
  if (!Array.isArray(legs)) bad('legs must be an array');
  if (legs.length > MAX_COPIES - 1) bad(`${legs.length + 1} legs: a segment has at most ${MAX_COPIES}`);
  for (let i = 0; i < legs.length; i++) {
    const leg = legs[i] as LegLocation;
    const c = leg.container;
    if (typeof c !== 'string' || c === '') bad(`leg ${i + 1} has no container`);
    if (c === primary) bad(`leg ${i + 1} is on container ${c}, as leg 0 is`);
    for (let j = 0; j < i; j++) if ((legs[j] as LegLocation).container === c) bad(`leg ${i + 1} is on container ${c}, as leg ${j + 1} is`);
    const o = leg.offset;
    if (!Number.isInteger(o) || o < 0 || o > MAX_CONTAINER_OFFSET) {
      bad(`leg ${i + 1} container offset ${String(o)} invalid: must be an integer from 0 to ${MAX_CONTAINER_OFFSET}`);
    }
    const last = o + Math.max(0, count - 1) * offsetStep;
    if (last > MAX_CONTAINER_OFFSET) bad(`leg ${i + 1} container offset ${last} exceeds ${MAX_CONTAINER_OFFSET}`);
  }
}

/** A RangeError from checkEntry with `where` put in front, for the caller to throw; other errors unchanged. */
export function withContext(err: unknown, where: string): unknown {
  return err instanceof RangeError ? new RangeError(`${where}: ${err.message}`) : err;
}

/**
 * Checks an entry meant for `count` segments (offsets advancing by
 * `offsetStep`) and returns it normalized; throws with `where` as context.
 * An empty container id counts as none (protobuf's default string).
 */
export function normalizeEntry(entry: EntryInput, count = 1, offsetStep = 1, where = 'segment'): NormalEntry {
  try {
    return checkEntry(entry, count, offsetStep);
  } catch (err) {
    throw withContext(err, where);
  }
}

/** Fills [first, end) of a slot/offset pair: offsets advance by `step` from `offset` (0 without a slot). */
function fillLocation(slots: Uint16Array, offsets: Uint32Array, first: number, end: number, slot: number, offset: number, step: number): void {
  slots.fill(slot, first, end);
  if (slot === NO_SLOT || step === 0) {
    offsets.fill(slot === NO_SLOT ? 0 : offset, first, end);
  } else {
    let o = offset;
    for (let s = first; s < end; s++, o += step) offsets[s] = o;
  }
}

/** Where in (seg, end] an extra leg stops continuing seg's: same slot, offsets advancing by one (or none). */
function legRunEnd(slots: Uint16Array, offsets: Uint32Array, seg: number, end: number): number {
  const slot = slots[seg];
  let s = seg + 1;
  if (slot === NO_SLOT) {
    while (s < end && slots[s] === NO_SLOT) s++;
  } else {
    let next = (offsets[seg] as number) + 1;
    while (s < end && slots[s] === slot && offsets[s] === next) {
      s++;
      next++;
    }
  }
  return s;
}

interface LegArrays {
  slots: Uint16Array;
  offsets: Uint32Array;
}

/** First segment below `end` where leg arrays differ (`map` translates a's slots to b's; null arrays hold no leg), or -1. */
function firstLegDifference(a: LegArrays | null, b: LegArrays | null, map: Int32Array, end: number): number {
  for (let s = 0; s < end; s++) {
    const sa = a === null ? NO_SLOT : (a.slots[s] as number);
    const sb = b === null ? NO_SLOT : (b.slots[s] as number);
    if (map[sa] !== sb || (sa !== NO_SLOT && (a as LegArrays).offsets[s] !== (b as LegArrays).offsets[s])) return s;
  }
  return -1;
}

/** Sets differs[s] where leg arrays differ (`map` translates a's slots to b's). */
function markLegDifferences(a: LegArrays | null, b: LegArrays | null, map: Int32Array, differs: Uint8Array): void {
  for (let s = 0; s < differs.length; s++) {
    const sa = a === null ? NO_SLOT : (a.slots[s] as number);
    const sb = b === null ? NO_SLOT : (b.slots[s] as number);
    if (map[sa] !== sb || (sa !== NO_SLOT && (a as LegArrays).offsets[s] !== (b as LegArrays).offsets[s])) differs[s] = 1;
  }
}

export class MappingTable {
  readonly segmentSize: number;
  readonly blockSize: number;
  readonly blocksPerSegment: number;
  /** vdisk name for error messages ('' when unknown). */
  readonly name: string;

  #segmentCount: number;
  #version: number;
  #states: Uint8Array;
  #slots: Uint16Array;
  #offsets: Uint32Array;
  /** Extra legs: #legSlots[k - 1] and #legOffsets[k - 1] hold leg k; allocated on first use. Packed: no leg k+1 without leg k. */
  #legSlots: Uint16Array[] = [];
  #legOffsets: Uint32Array[] = [];
  /** setRange's extra-leg slots, reused (no allocation per entry). */
  readonly #scratchSlots = new Uint16Array(MAX_COPIES - 1);
  #containers: string[] = [];
  #slotById = new Map<string, number>();
  /** Write owners by segment (owned segments only). */
  #owners = new Map<number, number>();
  /** #owners' keys sorted, rebuilt on demand after a change (runEnd looks up the next owned segment). */
  #ownedSorted: number[] | null = null;

  /** A table of `segmentCount` zero segments. */
  constructor(opts: TableOptions) {
    const segmentSize = opts.segmentSize ?? DEFAULT_SEGMENT_SIZE;
    const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
    checkGeometry({ segmentSize, blockSize, segmentCount: opts.segmentCount });
    const version = opts.version ?? 0;
    checkVersion(version);
    this.segmentSize = segmentSize;
    this.blockSize = blockSize;
    this.blocksPerSegment = segmentSize / blockSize;
    this.name = opts.name ?? '';
    this.#segmentCount = opts.segmentCount;
    this.#version = version;
    this.#states = new Uint8Array(opts.segmentCount).fill(SegmentState.Zero);
    this.#slots = new Uint16Array(opts.segmentCount);
    this.#offsets = new Uint32Array(opts.segmentCount);
  }

  get segmentCount(): number {
    return this.#segmentCount;
  }

  get version(): number {
    return this.#version;
  }

  /** Capacity in logical blocks. */
  get blockCount(): number {
    return this.#segmentCount * this.blocksPerSegment;
  }

  get sizeBytes(): number {
    return this.#segmentCount * this.segmentSize;
  }

  get meta(): TableMeta {
    return {
      segmentSize: this.segmentSize,
      blockSize: this.blockSize,
      segmentCount: this.#segmentCount,
      version: this.#version,
    };
  }

  /** Container UUIDs indexed by slot. May hold ids no segment uses any more (see pruneContainers). */
  get containers(): readonly string[] {
    return this.#containers;
  }

  /** Versions only move forward. */
  setVersion(v: number): void {
    checkVersion(v);
    if (v < this.#version) throw new RangeError(`${this.#vdisk()}: version ${v} is older than current version ${this.#version}`);
    this.#version = v;
  }

  bumpVersion(): number {
    this.setVersion(this.#version + 1);
    return this.#version;
  }

  /**
   * Legs a segment may have in this table: 1 until an entry with extra legs
   * is set, then 2 or 3 (it shrinks only in pruneContainers).
   */
  get maxLegs(): number {
    return 1 + this.#legSlots.length;
  }

  // ---- per-segment lookups (hot path: no allocation) ----

  /** Locations of the segment: 0 without one, else 1 + its extra legs. */
  legCountOf(seg: number): number {
    this.#checkSeg(seg);
    if (this.#slots[seg] === NO_SLOT) return 0;
    const extra = this.#legSlots;
    let n = 1;
    while (n <= extra.length && (extra[n - 1] as Uint16Array)[seg] !== NO_SLOT) n++;
    return n;
  }

  /** Index into `containers` of the segment's leg `leg` (0 = slotOf), or -1 when it has no such leg. */
  legSlotOf(seg: number, leg: number): number {
    this.#checkSeg(seg);
    if (leg === 0) return (this.#slots[seg] as number) - 1;
    this.#checkLeg(leg);
    const a = this.#legSlots[leg - 1];
    return a === undefined ? -1 : (a[seg] as number) - 1;
  }

  /** Container offset in segments of the segment's leg `leg` (0 = containerOffsetOf), 0 when it has no such leg. */
  legOffsetOf(seg: number, leg: number): number {
    this.#checkSeg(seg);
    if (leg === 0) return this.#offsets[seg] as number;
    this.#checkLeg(leg);
    const a = this.#legOffsets[leg - 1];
    return a === undefined ? 0 : (a[seg] as number);
  }

  /** Container id of the segment's leg `leg`, or null when it has no such leg. */
  legContainerOf(seg: number, leg: number): string | null {
    const slot = this.legSlotOf(seg, leg);
    return slot < 0 ? null : (this.#containers[slot] as string);
  }

  /** Every location of the segment, leg 0 first; [] without one. */
  locationsOf(seg: number): LegLocation[] {
    const n = this.legCountOf(seg);
    const out: LegLocation[] = [];
    for (let leg = 0; leg < n; leg++) {
      out.push({ container: this.#containers[this.legSlotOf(seg, leg)] as string, offset: this.legOffsetOf(seg, leg) });
    }
    return out;
  }

  stateOf(seg: number): SegmentState {
    this.#checkSeg(seg);
    return this.#states[seg] as SegmentState;
  }

  /** Index into `containers`, or -1 when the segment has no location. */
  slotOf(seg: number): number {
    this.#checkSeg(seg);
    return (this.#slots[seg] as number) - 1;
  }

  containerOf(seg: number): string | null {
    this.#checkSeg(seg);
    const slot = this.#slots[seg] as number;
    return slot === NO_SLOT ? null : (this.#containers[slot - 1] as string);
  }

  /** Offset in the container, in segments (0 when the segment has no location). */
  containerOffsetOf(seg: number): number {
    this.#checkSeg(seg);
    return this.#offsets[seg] as number;
  }

  /** Byte offset of the segment's start in its container's data area, or -1 without a location. */
  segmentByteOffset(seg: number): number {
    this.#checkSeg(seg);
    return this.#slots[seg] === NO_SLOT ? -1 : (this.#offsets[seg] as number) * this.segmentSize;
  }

  /** The segment's write owner (agent number), 0 for none. */
  ownerOf(seg: number): number {
    this.#checkSeg(seg);
    return this.#owners.size === 0 ? NO_OWNER : (this.#owners.get(seg) ?? NO_OWNER);
  }

  /** Number of owned segments. */
  get ownedCount(): number {
    return this.#owners.size;
  }

  /** Owned segments and their owners, in segment order. */
  owned(): [seg: number, owner: number][] {
    return this.#sortedOwned().map((s) => [s, this.#owners.get(s) as number]);
  }

  /** Sets (or with 0 clears) one segment's write owner, keeping its entry. */
  setOwner(seg: number, owner: number): void {
    this.#checkSeg(seg);
    checkOwner(owner);
    this.#putOwner(seg, owner);
  }

  get(seg: number): SegmentEntry {
    this.#checkSeg(seg);
    const e = { state: this.#states[seg] as SegmentState, container: this.containerOf(seg), offset: this.#offsets[seg] as number };
    if (this.#legSlots.length === 0 || this.legCountOf(seg) < 2) return e;
    return { ...e, legs: this.locationsOf(seg).slice(1) };
  }

  segmentOf(lba: number): number {
    this.#checkLba(lba);
    return Math.floor(lba / this.blocksPerSegment);
  }

  locate(lba: number): Location {
    const seg = this.segmentOf(lba);
    const slot = this.#slots[seg] as number;
    const state = this.#states[seg] as SegmentState;
    if (slot === NO_SLOT) return { seg, state, containerId: null, byteOffset: -1 };
    const within = (lba - seg * this.blocksPerSegment) * this.blockSize;
    return {
      seg,
      state,
      containerId: this.#containers[slot - 1] as string,
      byteOffset: (this.#offsets[seg] as number) * this.segmentSize + within,
    };
  }

  // ---- splitting an I/O into per-segment pieces ----

  /** Number of segments the range [lba, lba+blocks) touches. */
  pieceCount(lba: number, blocks: number): number {
    this.#checkRange(lba, blocks);
    if (blocks === 0) return 0;
    const bps = this.blocksPerSegment;
    return Math.floor((lba + blocks - 1) / bps) - Math.floor(lba / bps) + 1;
  }

  /** Calls `fn` once per segment piece, in LBA order, without allocating; returns the piece count. */
  forEachPiece(lba: number, blocks: number, fn: PieceCallback): number {
    this.#checkRange(lba, blocks);
    const bps = this.blocksPerSegment;
    const bs = this.blockSize;
    let seg = Math.floor(lba / bps);
    let cur = lba;
    let left = blocks;
    let bufferOffset = 0;
    let n = 0;
    while (left > 0) {
      const take = Math.min(left, (seg + 1) * bps - cur);
      fn(seg, cur, take, bufferOffset);
      cur += take;
      left -= take;
      bufferOffset += take * bs;
      seg++;
      n++;
    }
    return n;
  }

  /** The pieces as an array sized exactly to the piece count. */
  split(lba: number, blocks: number): IoPiece[] {
    const out = new Array<IoPiece>(this.pieceCount(lba, blocks));
    let i = 0;
    this.forEachPiece(lba, blocks, (seg, l, b, bufferOffset) => {
      out[i++] = { seg, lba: l, blocks: b, bufferOffset };
    });
    return out;
  }

  *pieces(lba: number, blocks: number): IterableIterator<IoPiece> {
    this.#checkRange(lba, blocks);
    const bps = this.blocksPerSegment;
    let seg = Math.floor(lba / bps);
    let cur = lba;
    let left = blocks;
    let bufferOffset = 0;
    while (left > 0) {
      const take = Math.min(left, (seg + 1) * bps - cur);
      yield { seg, lba: cur, blocks: take, bufferOffset };
      cur += take;
      left -= take;
      bufferOffset += take * this.blockSize;
      seg++;
    }
  }

  // ---- changes ----

  set(seg: number, entry: EntryInput): void {
    this.#checkSeg(seg);
    this.setRange(seg, 1, entry, 0);
  }

  /**
   * Sets `count` segments from `first`. For entries with a location, segment
   * first+i maps to container offset `entry.offset + i * offsetStep`
   * (offsetStep 1: a contiguous run; 0: every segment at the same offset).
   */
  setRange(first: number, count: number, entry: EntryInput, offsetStep = 1): void {
    this.#checkSegRange(first, count);
    let n: NormalEntry;
    try {
      n = checkEntry(entry, count, offsetStep);
    } catch (err) {
      throw withContext(err, count === 1 ? `${this.#vdisk()} segment ${first}` : `${this.#vdisk()} segments ${first}-${first + count - 1}`);
    }
    const { state, container, offset } = n;
    if (count === 0) return;
    const owner = entry.owner ?? NO_OWNER;
    if (owner !== NO_OWNER || this.#owners.size > 0) {
      checkOwner(owner);
      this.#setOwnerRange(first, count, owner);
    }
    const slot = container === null ? NO_SLOT : this.#intern(container);
    const legs = n.legs ?? NO_LEGS;
    // Every container interned before anything is written (interning may throw).
    const legSlots = this.#scratchSlots;
    for (let k = 0; k < legs.length; k++) legSlots[k] = this.#intern((legs[k] as LegLocation).container);
    if (legs.length > 0) this.#growLegs(legs.length + 1);
    if (count === 1) {
      // Typed-array fill costs more than a store for one element; decoding
      // a fragmented table is mostly these.
      this.#states[first] = state;
      this.#slots[first] = slot;
      this.#offsets[first] = offset;
      for (let k = 0; k < this.#legSlots.length; k++) {
        const has = k < legs.length;
        (this.#legSlots[k] as Uint16Array)[first] = has ? (legSlots[k] as number) : NO_SLOT;
        (this.#legOffsets[k] as Uint32Array)[first] = has ? (legs[k] as LegLocation).offset : 0;
      }
      return;
    }
    const end = first + count;
    this.#states.fill(state, first, end);
    fillLocation(this.#slots, this.#offsets, first, end, slot, offset, offsetStep);
    for (let k = 0; k < this.#legSlots.length; k++) {
      const has = k < legs.length;
      const ls = has ? (legSlots[k] as number) : NO_SLOT;
      fillLocation(this.#legSlots[k] as Uint16Array, this.#legOffsets[k] as Uint32Array, first, end, ls, has ? (legs[k] as LegLocation).offset : 0, offsetStep);
    }
  }

  /**
   * Changes only the state of a range, keeping locations (normal to no-write
   * for a snapshot, to error on a failure). Zero and invalid drop locations;
   * normal and no-write need every segment to have one.
   */
  setStateRange(first: number, count: number, state: SegmentState): void {
    this.#checkSegRange(first, count);
    if (!isSegmentState(state)) throw new RangeError(`${this.#vdisk()} segment ${first}: unknown state ${String(state)}`);
    const end = first + count;
    if (stateNeedsLocation(state)) {
      const at = this.#slots.subarray(first, end).indexOf(NO_SLOT);
      if (at >= 0) {
        throw new RangeError(
          `${this.#vdisk()} segment ${first + at}: cannot become ${segmentStateName(state)} without a container location`,
        );
      }
    }
    this.#states.fill(state, first, end);
    if (!stateHasLocation(state)) {
      this.#slots.fill(NO_SLOT, first, end);
      this.#offsets.fill(0, first, end);
      for (let k = 0; k < this.#legSlots.length; k++) {
        (this.#legSlots[k] as Uint16Array).fill(NO_SLOT, first, end);
        (this.#legOffsets[k] as Uint32Array).fill(0, first, end);
      }
    }
  }

  setState(seg: number, state: SegmentState): void {
    this.#checkSeg(seg);
    this.setStateRange(seg, 1, state);
  }

  /** Grows (new segments zero) or shrinks the table. The version is the caller's to bump. */
  resize(newSegmentCount: number): void {
    checkSegmentCount(newSegmentCount);
    const old = this.#segmentCount;
    if (newSegmentCount === old) return;
    const keep = Math.min(old, newSegmentCount);
    const states = new Uint8Array(newSegmentCount);
    const slots = new Uint16Array(newSegmentCount);
    const offsets = new Uint32Array(newSegmentCount);
    states.set(this.#states.subarray(0, keep));
    slots.set(this.#slots.subarray(0, keep));
    offsets.set(this.#offsets.subarray(0, keep));
    states.fill(SegmentState.Zero, keep);
    if (newSegmentCount < old && this.#owners.size > 0) this.#setOwnerRange(newSegmentCount, old - newSegmentCount, NO_OWNER);
    this.#states = states;
    this.#slots = slots;
    this.#offsets = offsets;
    this.#legSlots = this.#legSlots.map((a) => {
      const b = new Uint16Array(newSegmentCount);
      b.set(a.subarray(0, keep));
      return b;
    });
    this.#legOffsets = this.#legOffsets.map((a) => {
      const b = new Uint32Array(newSegmentCount);
      b.set(a.subarray(0, keep));
      return b;
    });
    this.#segmentCount = newSegmentCount;
  }

  clone(): MappingTable {
    const t = new MappingTable({
      segmentCount: 0,
      segmentSize: this.segmentSize,
      blockSize: this.blockSize,
      version: this.#version,
      name: this.name,
    });
    t.#segmentCount = this.#segmentCount;
    t.#states = this.#states.slice();
    t.#slots = this.#slots.slice();
    t.#offsets = this.#offsets.slice();
    t.#legSlots = this.#legSlots.map((a) => a.slice());
    t.#legOffsets = this.#legOffsets.map((a) => a.slice());
    t.#containers = this.#containers.slice();
    t.#slotById = new Map(this.#slotById);
    t.#owners = new Map(this.#owners);
    return t;
  }

  /**
   * Drops container ids no segment refers to, renumbering slots, and the
   * arrays of extra legs no segment has any more (maxLegs goes down: a table
   * whose copies went back to one costs 7 B/segment again); returns how many
   * container ids were dropped.
   */
  pruneContainers(): number {
    while (this.#legSlots.length > 0 && (this.#legSlots[this.#legSlots.length - 1] as Uint16Array).every((v) => v === NO_SLOT)) {
      this.#legSlots.pop();
      this.#legOffsets.pop();
    }
    const used = new Uint8Array(this.#containers.length + 1);
    const slots = this.#slots;
    for (let s = 0; s < this.#segmentCount; s++) used[slots[s] as number] = 1;
    for (const a of this.#legSlots) for (let s = 0; s < this.#segmentCount; s++) used[a[s] as number] = 1;
    const remap = new Uint16Array(this.#containers.length + 1);
    const kept: string[] = [];
    for (let i = 0; i < this.#containers.length; i++) {
      if (used[i + 1]) {
        kept.push(this.#containers[i] as string);
        remap[i + 1] = kept.length;
      }
    }
    const dropped = this.#containers.length - kept.length;
    if (dropped === 0) return 0;
    for (let s = 0; s < this.#segmentCount; s++) slots[s] = remap[slots[s] as number] as number;
    for (const a of this.#legSlots) for (let s = 0; s < this.#segmentCount; s++) a[s] = remap[a[s] as number] as number;
    this.#containers = kept;
    this.#slotById = new Map(kept.map((id, i) => [id, i + 1]));
    return dropped;
  }

  // ---- whole-table views ----

  /**
   * End (exclusive, at most `limit`) of the run starting at `seg`: the
   * segments that share its state and container and whose container offsets
   * advance by one, and the same for every extra leg. One extent of the
   * run-length encoding.
   */
  runEnd(seg: number, limit: number = this.#segmentCount): number {
    this.#checkSeg(seg);
    if (!Number.isInteger(limit) || limit > this.#segmentCount) {
      throw new RangeError(`${this.#vdisk()} run limit ${limit} out of range (table has ${this.#segmentCount} segments)`);
    }
    const states = this.#states;
    const slots = this.#slots;
    const offsets = this.#offsets;
    const state = states[seg];
    const slot = slots[seg];
    // An owned segment is a run of its own; other runs stop before one.
    if (this.#owners.size > 0) limit = this.#ownerBoundary(seg, limit);
    let s = seg + 1;
    if (slot === NO_SLOT) {
      while (s < limit && states[s] === state && slots[s] === NO_SLOT) s++;
    } else {
      let next = (offsets[seg] as number) + 1;
      while (s < limit && states[s] === state && slots[s] === slot && offsets[s] === next) {
        s++;
        next++;
      }
      // Extra legs can only cut the run shorter.
      for (let k = 0; k < this.#legSlots.length && s > seg + 1; k++) s = legRunEnd(this.#legSlots[k] as Uint16Array, this.#legOffsets[k] as Uint32Array, seg, s);
    }
    return s;
  }

  counts(): StateCounts {
    const byState = [0, 0, 0, 0, 0];
    let allocated = 0;
    const states = this.#states;
    const slots = this.#slots;
    for (let s = 0; s < this.#segmentCount; s++) {
      (byState[states[s] as number] as number)++;
      if (slots[s] !== NO_SLOT) allocated++;
    }
    const byLegs = this.#legSlots.length === 0 ? undefined : this.#legHistogram(allocated);
    return {
      normal: byState[SegmentState.Normal] as number,
      zero: byState[SegmentState.Zero] as number,
      noWrite: byState[SegmentState.NoWrite] as number,
      invalid: byState[SegmentState.Invalid] as number,
      error: byState[SegmentState.Error] as number,
      allocated,
      ...(byLegs === undefined ? {} : { byLegs }),
    };
  }

  /** Segments by number of legs; `allocated` have at least one. */
  #legHistogram(allocated: number): number[] {
    const out = new Array<number>(this.#legSlots.length + 2).fill(0);
    out[0] = this.#segmentCount - allocated;
    // Legs are packed: a segment with leg k has legs 0..k-1 too, so the count with at least k+1 legs is the count of leg k.
    const atLeast = [allocated];
    for (const a of this.#legSlots) {
      let n = 0;
      for (let s = 0; s < this.#segmentCount; s++) if (a[s] !== NO_SLOT) n++;
      atLeast.push(n);
    }
    atLeast.push(0);
    for (let k = 1; k < out.length; k++) out[k] = (atLeast[k - 1] as number) - (atLeast[k] as number);
    return out;
  }

  /** Same geometry, version and entries (container ids compared by value, not slot). */
  equals(other: MappingTable): boolean {
    if (
      other.segmentSize !== this.segmentSize ||
      other.blockSize !== this.blockSize ||
      other.#segmentCount !== this.#segmentCount ||
      other.#version !== this.#version
    ) {
      return false;
    }
    return this.firstDifference(other) < 0;
  }

  /** First segment (below both counts) whose entries differ, or -1. Ignores geometry and version. */
  firstDifference(other: MappingTable): number {
    const n = Math.min(this.#segmentCount, other.#segmentCount);
    const slotMap = this.#slotTranslation(other);
    const a = this.#states;
    const b = other.#states;
    const as = this.#slots;
    const bs = other.#slots;
    const ao = this.#offsets;
    const bo = other.#offsets;
    let first = -1;
    for (let s = 0; s < n; s++) {
      if (a[s] !== b[s] || slotMap[as[s] as number] !== bs[s] || ao[s] !== bo[s]) {
        first = s;
        break;
      }
    }
    const legs = Math.max(this.#legSlots.length, other.#legSlots.length);
    for (let k = 0; k < legs; k++) {
      const end = first < 0 ? n : first;
      const d = firstLegDifference(this.#legArrays(k), other.#legArrays(k), slotMap, end);
      if (d >= 0) first = d;
    }
    for (const s of this.#ownerDifferences(other)) {
      if (s < n && (first < 0 || s < first)) first = s;
    }
    return first;
  }

  /**
   * Segments whose entries differ from `older` (container ids compared by
   * value), as sorted, disjoint [first, end) runs; segments beyond `older`'s
   * count count as changed unless zero (growth adds zero segments). One
   * typed-array pass: a 16 M-segment install diffs in tens of milliseconds.
   */
  changedRuns(older: MappingTable): [number, number][] {
    const out: [number, number][] = [];
    const n = Math.min(this.#segmentCount, older.#segmentCount);
    const slotMap = older.#slotTranslation(this);
    const a = older.#states;
    const b = this.#states;
    const as = older.#slots;
    const bs = this.#slots;
    const ao = older.#offsets;
    const bo = this.#offsets;
    let s = 0;
    const legs = Math.max(this.#legSlots.length, older.#legSlots.length);
    if (legs === 0) {
      while (s < n) {
        while (s < n && a[s] === b[s] && slotMap[as[s] as number] === bs[s] && ao[s] === bo[s]) s++;
        if (s === n) break;
        const first = s;
        while (s < n && !(a[s] === b[s] && slotMap[as[s] as number] === bs[s] && ao[s] === bo[s])) s++;
        out.push([first, s]);
      }
    } else {
      // Mirrored: mark differing segments leg by leg, then cut the marks into runs.
      const differs = new Uint8Array(n);
      for (let t = 0; t < n; t++) if (a[t] !== b[t] || slotMap[as[t] as number] !== bs[t] || ao[t] !== bo[t]) differs[t] = 1;
      for (let k = 0; k < legs; k++) markLegDifferences(older.#legArrays(k), this.#legArrays(k), slotMap, differs);
      while (s < n) {
        while (s < n && differs[s] === 0) s++;
        if (s === n) break;
        const first = s;
        while (s < n && differs[s] === 1) s++;
        out.push([first, s]);
      }
    }
    for (let t = n; t < this.#segmentCount; ) {
      while (t < this.#segmentCount && b[t] === SegmentState.Zero) t++;
      if (t === this.#segmentCount) break;
      const first = t;
      while (t < this.#segmentCount && b[t] !== SegmentState.Zero) t++;
      const last = out[out.length - 1];
      if (last !== undefined && last[1] === first) last[1] = t;
      else out.push([first, t]);
    }
    const owners = this.#ownerDifferences(older);
    return owners.length === 0 ? out : mergeRuns(out, owners, this.#segmentCount);
  }

  /** Segments whose owners differ between this table and `other`, unsorted. */
  #ownerDifferences(other: MappingTable): number[] {
    if (this.#owners.size === 0 && other.#owners.size === 0) return [];
    const out: number[] = [];
    for (const [s, o] of this.#owners) if (other.#owners.get(s) !== o) out.push(s);
    for (const s of other.#owners.keys()) if (!this.#owners.has(s)) out.push(s);
    return out;
  }

  /**
   * For each of this table's +1-encoded slots (index 0 = none), the matching
   * +1-encoded slot in `other`, or -1 when `other` has no such container.
   */
  #slotTranslation(other: MappingTable): Int32Array {
    const map = new Int32Array(this.#containers.length + 1);
    for (let i = 0; i < this.#containers.length; i++) {
      map[i + 1] = other.#slotById.get(this.#containers[i] as string) ?? -1;
    }
    return map;
  }

  // ---- internals ----

  /** Leg k+1's arrays, or null when this table never held one. */
  #legArrays(k: number): LegArrays | null {
    const slots = this.#legSlots[k];
    return slots === undefined ? null : { slots, offsets: this.#legOffsets[k] as Uint32Array };
  }

  /** Allocates extra-leg arrays so that segments may have `legs` legs. */
  #growLegs(legs: number): void {
    while (this.#legSlots.length < legs - 1) {
      this.#legSlots.push(new Uint16Array(this.#segmentCount));
      this.#legOffsets.push(new Uint32Array(this.#segmentCount));
    }
  }

  #checkLeg(leg: number): void {
    if (leg >>> 0 !== leg || leg >= MAX_COPIES) throw new RangeError(`leg ${leg} invalid: must be an integer from 0 to ${MAX_COPIES - 1}`);
  }

  #putOwner(seg: number, owner: number): void {
    if (owner === NO_OWNER) {
      if (this.#owners.delete(seg)) this.#ownedSorted = null;
    } else if (this.#owners.get(seg) !== owner) {
      if (!this.#owners.has(seg)) this.#ownedSorted = null;
      this.#owners.set(seg, owner);
    }
  }

  #setOwnerRange(first: number, count: number, owner: number): void {
    if (owner === NO_OWNER && count > 1) {
      // Clearing a long range: visit the few owned segments, not the range.
      for (const s of [...this.#owners.keys()]) if (s >= first && s < first + count) this.#putOwner(s, NO_OWNER);
      return;
    }
    for (let s = first; s < first + count; s++) this.#putOwner(s, owner);
  }

  #sortedOwned(): number[] {
    this.#ownedSorted ??= [...this.#owners.keys()].sort((x, y) => x - y);
    return this.#ownedSorted;
  }

  /** Where a run from `seg` must stop for owners: right after it when owned, else at the next owned segment. */
  #ownerBoundary(seg: number, limit: number): number {
    if (this.#owners.has(seg)) return Math.min(limit, seg + 1);
    const sorted = this.#sortedOwned();
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((sorted[mid] as number) <= seg) lo = mid + 1;
      else hi = mid;
    }
    const next = sorted[lo];
    return next === undefined ? limit : Math.min(limit, next);
  }

  #intern(id: string): number {
    let slot = this.#slotById.get(id);
    if (slot === undefined) {
      if (this.#containers.length >= MAX_CONTAINERS) {
        throw new RangeError(`${this.#vdisk()}: more than ${MAX_CONTAINERS} containers in one table`);
      }
      this.#containers.push(id);
      slot = this.#containers.length;
      this.#slotById.set(id, slot);
    }
    return slot;
  }

  #vdisk(): string {
    return this.name ? `vdisk ${this.name}` : 'vdisk';
  }

  #checkSeg(seg: number): void {
    // seg >>> 0 === seg: an integer in uint32 range, checked in one step.
    if (seg >>> 0 !== seg || seg >= this.#segmentCount) {
      throw new RangeError(`${this.#vdisk()} segment ${seg} out of range (table has ${this.#segmentCount} segments)`);
    }
  }

  #checkSegRange(first: number, count: number): void {
    if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < 0 || first + count > this.#segmentCount) {
      throw new RangeError(
        `${this.#vdisk()} segments ${first}+${count} out of range (table has ${this.#segmentCount} segments)`,
      );
    }
  }

  #checkLba(lba: number): void {
    if (!Number.isInteger(lba) || lba < 0 || lba >= this.blockCount) {
      throw new RangeError(`${this.#vdisk()} lba ${lba} out of range (${this.blockCount} blocks)`);
    }
  }

  #checkRange(lba: number, blocks: number): void {
    if (!Number.isInteger(lba) || !Number.isInteger(blocks) || lba < 0 || blocks < 0 || lba + blocks > this.blockCount) {
      throw new RangeError(`${this.#vdisk()} lba ${lba} len ${blocks} out of range (${this.blockCount} blocks)`);
    }
  }
}
