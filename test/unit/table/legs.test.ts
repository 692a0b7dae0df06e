import { expect } from 'chai';
import {
  MAX_COPIES,
  MappingTable,
  RunLegs,
  SegmentState,
  TableBuilder,
  applyDelta,
  checkRuns,
  diff,
  formatTable,
  fromExtents,
  tableRuns,
  toExtents,
  type TableDelta,
} from '../../../src/table/index.js';
import { C1, C2, C3, int, rng } from './helpers.js';

const N = SegmentState.Normal;

/** 8 segments: 0-3 normal C1@10.. with leg C2@20.., 4 zero, 5 normal C1@0 with legs C2@5, C3@7. */
function mirrored(): MappingTable {
  const t = new MappingTable({ segmentCount: 8, version: 1, name: 'm' });
  t.setRange(0, 4, { state: N, container: C1, offset: 10, legs: [{ container: C2, offset: 20 }] });
  t.set(5, { state: N, container: C1, offset: 0, legs: [{ container: C2, offset: 5 }, { container: C3, offset: 7 }] });
  return t;
}

describe('mapping table: mirrored legs', () => {
  it('a one-copy table has one leg per located segment and no extra arrays', () => {
    const t = new MappingTable({ segmentCount: 4 });
    t.set(1, { state: N, container: C1, offset: 3 });
    expect(MAX_COPIES).to.equal(3);
    expect(t.maxLegs).to.equal(1);
    expect([0, 1].map((s) => t.legCountOf(s))).to.deep.equal([0, 1]);
    expect(t.legSlotOf(1, 0)).to.equal(t.slotOf(1));
    expect(t.legSlotOf(1, 1)).to.equal(-1);
    expect(t.legOffsetOf(1, 2)).to.equal(0);
    expect(t.locationsOf(1)).to.deep.equal([{ container: C1, offset: 3 }]);
    expect(t.locationsOf(0)).to.deep.equal([]);
    expect(t.get(1)).to.deep.equal({ state: N, container: C1, offset: 3 });
    expect(t.counts()).to.not.have.property('byLegs');
  });

  it('stores extra legs, their offsets advancing with the range', () => {
    const t = mirrored();
    expect(t.maxLegs).to.equal(3);
    expect([0, 1, 2, 3, 4, 5, 6].map((s) => t.legCountOf(s))).to.deep.equal([2, 2, 2, 2, 0, 3, 0]);
    expect(t.locationsOf(2)).to.deep.equal([
      { container: C1, offset: 12 },
      { container: C2, offset: 22 },
    ]);
    expect(t.get(5)).to.deep.equal({ state: N, container: C1, offset: 0, legs: [{ container: C2, offset: 5 }, { container: C3, offset: 7 }] });
    expect(t.legContainerOf(5, 2)).to.equal(C3);
    expect(t.containers[t.legSlotOf(5, 1)]).to.equal(C2);
    expect(t.legOffsetOf(5, 2)).to.equal(7);
    expect(t.counts().byLegs).to.deep.equal([3, 0, 4, 1]);
  });

  it('a set without legs drops them; states without a location drop them', () => {
    const t = mirrored();
    t.set(0, { state: N, container: C1, offset: 10 });
    expect(t.legCountOf(0)).to.equal(1);
    t.setStateRange(1, 2, SegmentState.Zero);
    expect(t.legCountOf(1)).to.equal(0);
    expect(t.legSlotOf(1, 1)).to.equal(-1);
    t.set(5, { state: SegmentState.Invalid, container: C1, offset: 0, legs: [{ container: C2, offset: 5 }] });
    expect(t.locationsOf(5)).to.deep.equal([]);
    t.setStateRange(3, 1, SegmentState.NoWrite);
    expect(t.locationsOf(3)).to.deep.equal([
      { container: C1, offset: 13 },
      { container: C2, offset: 23 },
    ]);
  });

  it('refuses bad legs with clear errors', () => {
    const t = new MappingTable({ segmentCount: 4, name: 'm' });
    const leg = (container: string, offset = 1) => ({ container, offset });
    expect(() => t.set(0, { state: N, container: C1, offset: 0, legs: [leg(C1)] })).to.throw(RangeError, /vdisk m segment 0: leg 1 is on container .*, as leg 0 is/);
    expect(() => t.set(0, { state: N, container: C1, offset: 0, legs: [leg(C2), leg(C2)] })).to.throw(RangeError, /leg 2 is on container .*, as leg 1 is/);
    expect(() => t.set(0, { state: N, container: C1, offset: 0, legs: [leg(C2), leg(C3), leg('x')] })).to.throw(RangeError, /at most 3/);
    expect(() => t.set(0, { state: N, container: C1, offset: 0, legs: [leg('')] })).to.throw(RangeError, /leg 1 has no container/);
    expect(() => t.set(0, { state: N, container: C1, offset: 0, legs: [leg(C2, -1)] })).to.throw(RangeError, /leg 1 container offset -1 invalid/);
    expect(() => t.setRange(0, 2, { state: N, container: C1, offset: 0, legs: [leg(C2, 0xffffffff)] })).to.throw(RangeError, /leg 1 container offset 4294967296 exceeds/);
    expect(() => t.set(0, { state: SegmentState.Error, legs: [leg(C2)] })).to.throw(RangeError, /legs given without a container/);
    expect(() => t.legSlotOf(0, 3)).to.throw(RangeError, /leg 3 invalid/);
    expect(t.maxLegs).to.equal(1);
  });
});

// ---- against a plain per-segment model ----

const C4 = '44444444-aaaa-4bbb-8ccc-000000000004';
const ALL = [C1, C2, C3, C4];

interface Loc {
  container: string;
  offset: number;
}
interface MEntry {
  state: SegmentState;
  /** Leg 0 first; [] without a location. */
  locs: Loc[];
}

/** Random runs: some merge, some almost do (a leg breaks the run), one to three legs. */
function randomMirrored(r: () => number, n: number): MEntry[] {
  const out: MEntry[] = [];
  while (out.length < n) {
    const len = Math.min(n - out.length, int(r, 1, 6));
    const state = int(r, 0, 4) as SegmentState;
    const located = state === N || state === SegmentState.NoWrite || (state === SegmentState.Error && r() < 0.5);
    const pool = [...ALL].sort(() => r() - 0.5);
    const legs = located ? int(r, 1, 3) : 0;
    const starts = pool.slice(0, legs).map(() => int(r, 0, 20));
    const contiguous = r() < 0.7;
    for (let i = 0; i < len; i++) {
      const locs = pool.slice(0, legs).map((container, k) => ({ container, offset: contiguous ? (starts[k] as number) + i : int(r, 0, 20) }));
      out.push({ state, locs });
    }
  }
  return out;
}

function build(model: readonly MEntry[], version = 1): MappingTable {
  const t = new MappingTable({ segmentCount: model.length, version });
  model.forEach((e, s) => {
    const [p, ...legs] = e.locs;
    t.set(s, p === undefined ? { state: e.state } : { state: e.state, container: p.container, offset: p.offset, legs });
  });
  return t;
}

function modelOfTable(t: MappingTable): MEntry[] {
  return Array.from({ length: t.segmentCount }, (_, s) => ({ state: t.stateOf(s), locs: t.locationsOf(s) }));
}

const same = (a: MEntry, b: MEntry): boolean => JSON.stringify(a) === JSON.stringify(b);

/** Naive: whether s continues the run of s - 1. */
function continues(m: readonly MEntry[], s: number): boolean {
  const a = m[s - 1] as MEntry;
  const b = m[s] as MEntry;
  return a.state === b.state && a.locs.length === b.locs.length && a.locs.every((l, k) => b.locs[k]!.container === l.container && b.locs[k]!.offset === l.offset + 1);
}

describe('mapping table: mirrored legs against a per-segment model', () => {
  it('get, locationsOf, runEnd and the extents match the model', () => {
    const r = rng(16);
    for (let round = 0; round < 20; round++) {
      const model = randomMirrored(r, int(r, 1, 120));
      const t = build(model);
      expect(modelOfTable(t)).to.deep.equal(model);
      for (let s = 0; s < model.length; s++) {
        const e = t.get(s);
        const want = model[s] as MEntry;
        expect([e.container, e.offset]).to.deep.equal(want.locs.length ? [want.locs[0]!.container, want.locs[0]!.offset] : [null, 0]);
        if (want.locs.length > 1) expect(e.legs).to.deep.equal(want.locs.slice(1));
        else expect(e).to.not.have.property('legs');
        let end = s + 1;
        while (end < model.length && continues(model, end)) end++;
        expect(t.runEnd(s), `runEnd(${s})`).to.equal(end);
      }
      const back = fromExtents(t.meta, toExtents(t));
      expect(back.equals(t)).to.equal(true);
      expect(modelOfTable(back)).to.deep.equal(model);
    }
  });

  it('changedRuns and firstDifference see leg changes, containers compared by value', () => {
    const r = rng(17);
    let legOnly = 0;
    for (let round = 0; round < 30; round++) {
      const n = int(r, 1, 80);
      const a = randomMirrored(r, n);
      const b = a.map((e) => (r() < 0.15 ? randomMirrored(r, 1)[0]! : { state: e.state, locs: e.locs.map((l) => ({ ...l })) }));
      // Sometimes only a leg moves.
      for (const e of b) if (e.locs.length > 1 && r() < 0.1) e.locs = [e.locs[0]!, { ...e.locs[1]!, offset: e.locs[1]!.offset + 1 }, ...e.locs.slice(2)];
      const ta = build(a, 1);
      // b built in another container order: slots differ.
      const tb = new MappingTable({ segmentCount: n, version: 2 });
      tb.set(0, { state: N, container: C4, offset: 0, legs: [{ container: C3, offset: 0 }, { container: C2, offset: 0 }] });
      b.forEach((e, s) => {
        const [p, ...legs] = e.locs;
        tb.set(s, p === undefined ? { state: e.state } : { state: e.state, container: p.container, offset: p.offset, legs });
      });
      const differ: number[] = [];
      for (let s = 0; s < n; s++) if (!same(a[s] as MEntry, b[s] as MEntry)) differ.push(s);
      legOnly += b.filter((e, s) => e.state === a[s]!.state && e.locs[0]?.offset === a[s]!.locs[0]?.offset && differ.includes(s)).length;
      const runs = tb.changedRuns(ta);
      expect(runs.flatMap(([x, y]) => Array.from({ length: y - x }, (_, i) => x + i))).to.deep.equal(differ);
      expect(ta.firstDifference(tb)).to.equal(differ.length ? differ[0] : -1);
      expect(tb.firstDifference(ta)).to.equal(differ.length ? differ[0] : -1);
      const d = diff(ta, tb);
      expect(applyDelta(ta.clone(), d).equals(tb)).to.equal(true);
    }
    expect(legOnly, 'segments where only a leg changed').to.be.greaterThan(5);
  });

  it('a one-copy table and a mirrored one differ where the legs are', () => {
    const one = new MappingTable({ segmentCount: 6, version: 1 });
    one.setRange(0, 6, { state: N, container: C1, offset: 0 });
    const two = one.clone();
    two.setRange(2, 2, { state: N, container: C1, offset: 2, legs: [{ container: C2, offset: 9 }] });
    expect(two.changedRuns(one)).to.deep.equal([[2, 4]]);
    expect(one.changedRuns(two)).to.deep.equal([[2, 4]]);
    expect(one.firstDifference(two)).to.equal(2);
    expect(one.equals(two)).to.equal(false);
    two.bumpVersion();
    expect(diff(one, two).extents).to.deep.equal([{ first: 2, count: 2, state: N, container: C1, offset: 2, legs: [{ container: C2, offset: 9 }] }]);
  });

  it('clone is deep, resize keeps the legs of the kept prefix, growth is zero', () => {
    const t = mirrored();
    const c = t.clone();
    expect(c.equals(t)).to.equal(true);
    c.set(0, { state: N, container: C1, offset: 10, legs: [{ container: C3, offset: 1 }] });
    expect(t.legContainerOf(0, 1)).to.equal(C2);
    t.resize(6);
    expect(t.locationsOf(5)).to.have.lengthOf(3);
    t.resize(12);
    expect([6, 7, 11].map((s) => t.legCountOf(s))).to.deep.equal([0, 0, 0]);
    expect(t.locationsOf(2)).to.deep.equal([
      { container: C1, offset: 12 },
      { container: C2, offset: 22 },
    ]);
    t.set(11, { state: N, container: C3, offset: 1, legs: [{ container: C1, offset: 2 }] });
    expect(t.legCountOf(11)).to.equal(2);
  });

  it('pruneContainers keeps containers only legs use and renumbers leg slots', () => {
    const t = new MappingTable({ segmentCount: 4 });
    t.set(0, { state: N, container: C1, offset: 0 });
    t.set(1, { state: N, container: C2, offset: 0, legs: [{ container: C3, offset: 4 }, { container: C4, offset: 5 }] });
    t.set(0, { state: SegmentState.Zero });
    expect(t.pruneContainers()).to.equal(1);
    expect(t.containers).to.deep.equal([C2, C3, C4]);
    expect(t.locationsOf(1)).to.deep.equal([
      { container: C2, offset: 0 },
      { container: C3, offset: 4 },
      { container: C4, offset: 5 },
    ]);
    t.set(1, { state: N, container: C4, offset: 5 });
    expect(t.maxLegs).to.equal(3);
    expect(t.pruneContainers()).to.equal(2);
    expect(t.containers).to.deep.equal([C4]);
    // No segment has extra legs any more: their arrays go too.
    expect(t.maxLegs).to.equal(1);
    expect(t.counts()).to.not.have.property('byLegs');
    expect(t.locationsOf(1)).to.deep.equal([{ container: C4, offset: 5 }]);
  });

  it('a delta with bad legs is refused before anything changes', () => {
    const t = mirrored();
    const before = t.clone();
    const bad = (legs: { container: string; offset: number }[]): TableDelta => ({
      fromVersion: 1,
      toVersion: 2,
      segmentCount: 8,
      extents: [
        { first: 4, count: 1, state: N, container: C3, offset: 0 },
        { first: 6, count: 2, state: N, container: C1, offset: 3, legs },
      ],
    });
    expect(() => applyDelta(t, bad([{ container: C1, offset: 0 }]))).to.throw(RangeError, /extent 1 \(segments 6\+2\): leg 1 is on container .*, as leg 0 is/);
    expect(() => applyDelta(t, bad([{ container: C2, offset: 2 ** 32 - 1 }]))).to.throw(RangeError, /leg 1 container offset 4294967296 exceeds/);
    expect(() => applyDelta(t, bad([{ container: C2, offset: 1.5 }]))).to.throw(RangeError, /leg 1 container offset 1.5 invalid/);
    expect(t.equals(before)).to.equal(true);
    applyDelta(t, bad([{ container: C2, offset: 0 }]));
    expect(t.locationsOf(7)).to.deep.equal([
      { container: C1, offset: 4 },
      { container: C2, offset: 1 },
    ]);
  });

  it('counts segments by number of legs', () => {
    const t = build(randomMirrored(rng(5), 300));
    const byLegs = [0, 0, 0, 0];
    for (let s = 0; s < t.segmentCount; s++) byLegs[t.legCountOf(s)]!++;
    expect(t.counts().byLegs).to.deep.equal(byLegs);
    expect(t.counts().allocated).to.equal(300 - byLegs[0]!);
  });

  it('run pieces carry the legs and rebuild the same table; a one-copy piece has no leg arrays', () => {
    const r = rng(18);
    for (let round = 0; round < 10; round++) {
      const t = build(randomMirrored(r, int(r, 1, 150)));
      const b = new TableBuilder(t.meta);
      for (const p of tableRuns(t, int(r, 1, 7))) {
        checkRuns(p, t.containers.length);
        const legs = new RunLegs(p, t.containers);
        p.counts.forEach((count, i) => {
          const c = p.containers[i] as number;
          b.addRun(count, p.states[i] as SegmentState, c === 0 ? null : (t.containers[c - 1] as string), p.offsets[i] as number, 0, legs.next(i));
        });
      }
      expect(b.finish().equals(t)).to.equal(true);
    }
    const one = new MappingTable({ segmentCount: 4 });
    one.setRange(0, 2, { state: N, container: C1, offset: 0 });
    expect([...tableRuns(one, 10)]).to.deep.equal([{ firstSegment: 0, counts: [2, 2], states: [N, SegmentState.Zero], containers: [1, 0], offsets: [0, 0] }]);
    // A mirrored table's piece without any leg (all one-leg runs) has none either.
    const m = mirrored();
    expect([...tableRuns(m, 1)].map((p) => p.legCounts)).to.deep.equal([[1], undefined, [2], undefined]);
  });

  it('checkRuns refuses leg arrays that do not describe legs', () => {
    const base = { firstSegment: 0, counts: [2, 1], states: [N, N], containers: [1, 2], offsets: [0, 5] };
    const ok = { ...base, legCounts: [1, 2], legContainers: [2, 1, 3], legOffsets: [7, 8, 9] };
    expect(() => checkRuns(ok, 3)).to.not.throw();
    const bad = (x: object, why: RegExp): void => {
      expect(() => checkRuns({ ...ok, ...x }, 3)).to.throw(RangeError, why);
    };
    bad({ legCounts: [1] }, /2 counts, 1 leg counts/);
    bad({ legCounts: [1, 3], legContainers: [2, 1, 3, 3], legOffsets: [1, 2, 3, 4] }, /run 1 has 3 extra legs \(at most 2\)/);
    bad({ legContainers: [2, 1, 4] }, /run 1 leg 2 names container 4 of 3/);
    bad({ legContainers: [0, 1, 3] }, /run 0 leg 1 names container 0 of 3/);
    bad({ legContainers: [1, 1, 3] }, /run 0 leg 1 is on the container of leg 0/);
    bad({ legContainers: [2, 3, 3] }, /run 1 leg 2 is on the container of leg 1/);
    bad({ legOffsets: [7, 8] }, /3 extra legs counted, 3 leg containers, 2 leg offsets/);
    bad({ legCounts: [], legContainers: [2] }, /without leg counts/);
    bad({ containers: [0, 2] }, /run 0 has extra legs but no container/);
  });

  it('a 1 TiB 2-copy table (1 M segments of 1 MiB), thick, is one run and round-trips through extents and run pieces', () => {
    const n = 1 << 20;
    const t = new MappingTable({ segmentCount: n, version: 3 });
    t.setRange(0, n, { state: N, container: C1, offset: 0, legs: [{ container: C2, offset: 4096 }] });
    const ext = toExtents(t);
    expect(ext).to.deep.equal([{ first: 0, count: n, state: N, container: C1, offset: 0, legs: [{ container: C2, offset: 4096 }] }]);
    expect(fromExtents(t.meta, ext).equals(t)).to.equal(true);
    // Fragmented: every segment its own run on both legs.
    const f = new MappingTable({ segmentCount: n, version: 3 });
    for (let s = 0; s < n; s++) f.set(s, { state: N, container: s & 1 ? C1 : C3, offset: s >> 1, legs: [{ container: C2, offset: n - s }] });
    const b = new TableBuilder(f.meta);
    for (const p of tableRuns(f, 1 << 16)) {
      const legs = new RunLegs(p, f.containers);
      p.counts.forEach((count, i) => b.addRun(count, N, f.containers[(p.containers[i] as number) - 1] as string, p.offsets[i] as number, 0, legs.next(i)));
    }
    expect(b.finish().equals(f)).to.equal(true);
    expect(f.counts().byLegs).to.deep.equal([0, 0, n]);
  });

  it('text shows the extra legs', () => {
    const t = mirrored();
    expect(formatTable(t).split('\n').slice(0, 3)).to.deep.equal([
      '0-3 normal c=11111111 off=10 legs=22222222:20',
      '4-4 zero',
      '5-5 normal c=11111111 off=0 legs=22222222:5+33333333:7',
    ]);
  });
});
