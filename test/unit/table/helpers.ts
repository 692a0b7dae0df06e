// Test helpers kept independent of src/table: a seeded PRNG, a plain
// per-segment model of a table, and naive reference computations.

import { MappingTable } from '../../../src/table/mapping-table.js';
import { SegmentState } from '../../../src/table/segment-state.js';

/** The shared seeded PRNG (mulberry32). */
export { prng as rng } from '../../support/prng.js';

export function int(r: () => number, lo: number, hi: number): number {
  return lo + Math.floor(r() * (hi - lo + 1));
}

export interface ModelEntry {
  state: SegmentState;
  container: string | null;
  offset: number;
}

export const C1 = '11111111-aaaa-4bbb-8ccc-000000000001';
export const C2 = '22222222-aaaa-4bbb-8ccc-000000000002';
export const C3 = '33333333-aaaa-4bbb-8ccc-000000000003';

const ZERO: ModelEntry = { state: SegmentState.Zero, container: null, offset: 0 };

/** A random per-segment model built in runs, so that some neighbours merge and some almost do. */
export function randomModel(r: () => number, n: number): ModelEntry[] {
  const out: ModelEntry[] = [];
  const containers = [C1, C2, C3];
  while (out.length < n) {
    const len = Math.min(n - out.length, int(r, 1, 6));
    const state = int(r, 0, 4) as SegmentState;
    const located = state === SegmentState.Normal || state === SegmentState.NoWrite || (state === SegmentState.Error && r() < 0.5);
    const container = located ? (containers[int(r, 0, 2)] as string) : null;
    const start = located ? int(r, 0, 20) : 0;
    const contiguous = r() < 0.7;
    for (let i = 0; i < len; i++) {
      out.push({ state, container, offset: located ? (contiguous ? start + i : int(r, 0, 20)) : 0 });
    }
  }
  return out;
}

export function tableFromModel(model: readonly ModelEntry[], version = 1, segmentSize = 1 << 20): MappingTable {
  const t = new MappingTable({ segmentCount: model.length, version, segmentSize });
  model.forEach((e, s) => t.set(s, e));
  return t;
}

export function modelOf(table: MappingTable): ModelEntry[] {
  const out: ModelEntry[] = [];
  for (let s = 0; s < table.segmentCount; s++) out.push({ ...table.get(s) });
  return out;
}

/** Expands extents naively into per-segment entries over `base` (or zeros). */
export function expand(
  extents: readonly { first: number; count: number; state: SegmentState; container: string | null; offset: number }[],
  n: number,
  base?: readonly ModelEntry[],
): ModelEntry[] {
  const out: ModelEntry[] = [];
  for (let s = 0; s < n; s++) out.push(base && s < base.length ? { ...(base[s] as ModelEntry) } : { ...ZERO });
  for (const e of extents) {
    for (let i = 0; i < e.count; i++) {
      out[e.first + i] = { state: e.state, container: e.container, offset: e.container === null ? 0 : e.offset + i };
    }
  }
  return out;
}

/** Reference split: walk block by block and group by segment. */
export function naiveSplit(
  lba: number,
  blocks: number,
  blockSize: number,
  segmentSize: number,
): { seg: number; lba: number; blocks: number; bufferOffset: number }[] {
  const out: { seg: number; lba: number; blocks: number; bufferOffset: number }[] = [];
  for (let b = 0; b < blocks; b++) {
    const seg = Math.floor(((lba + b) * blockSize) / segmentSize);
    const last = out[out.length - 1];
    if (last && last.seg === seg) last.blocks++;
    else out.push({ seg, lba: lba + b, blocks: 1, bufferOffset: b * blockSize });
  }
  return out;
}
