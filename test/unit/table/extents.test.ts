import { expect } from 'chai';
import { MappingTable } from '../../../src/table/mapping-table.js';
import { checkExtents, extentsIn, fromExtents, toExtents, type Extent } from '../../../src/table/extents.js';
import { SegmentState } from '../../../src/table/segment-state.js';
import { C1, C2, expand, int, modelOf, randomModel, rng, tableFromModel, type ModelEntry } from './helpers.js';

/** Two neighbouring extents that toExtents should have merged (checked without the code under test). */
function mergeable(a: Extent, b: Extent): boolean {
  return (
    a.first + a.count === b.first &&
    a.state === b.state &&
    a.container === b.container &&
    (a.container === null || a.offset + a.count === b.offset)
  );
}

describe('table/extents', () => {
  it('encodes runs by state, container and contiguous offsets', () => {
    const t = new MappingTable({ segmentCount: 12, version: 4 });
    t.setRange(0, 3, { state: SegmentState.Normal, container: C1, offset: 10 });
    t.setRange(3, 2, { state: SegmentState.Normal, container: C1, offset: 20 }); // offset jump
    t.setRange(5, 1, { state: SegmentState.Normal, container: C2, offset: 22 }); // container change
    t.setRange(6, 1, { state: SegmentState.NoWrite, container: C2, offset: 23 }); // state change
    t.setRange(7, 2, { state: SegmentState.Invalid });
    t.set(9, { state: SegmentState.Error });
    t.set(10, { state: SegmentState.Error });
    expect(toExtents(t)).to.deep.equal([
      { first: 0, count: 3, state: SegmentState.Normal, container: C1, offset: 10 },
      { first: 3, count: 2, state: SegmentState.Normal, container: C1, offset: 20 },
      { first: 5, count: 1, state: SegmentState.Normal, container: C2, offset: 22 },
      { first: 6, count: 1, state: SegmentState.NoWrite, container: C2, offset: 23 },
      { first: 7, count: 2, state: SegmentState.Invalid, container: null, offset: 0 },
      { first: 9, count: 2, state: SegmentState.Error, container: null, offset: 0 },
      { first: 11, count: 1, state: SegmentState.Zero, container: null, offset: 0 },
    ]);
    const back = fromExtents(t.meta, toExtents(t));
    expect(back.equals(t)).to.equal(true);
    expect(back.version).to.equal(4);
  });

  it('same offset repeated does not merge', () => {
    const t = new MappingTable({ segmentCount: 2 });
    t.setRange(0, 2, { state: SegmentState.NoWrite, container: C1, offset: 5 }, 0);
    expect(toExtents(t)).to.have.length(2);
  });

  it('an empty table has no extents', () => {
    const t = new MappingTable({ segmentCount: 0 });
    expect(toExtents(t)).to.deep.equal([]);
    expect(fromExtents(t.meta, []).segmentCount).to.equal(0);
  });

  it('round-trips random tables, with maximal extents', () => {
    const r = rng(7);
    for (let i = 0; i < 200; i++) {
      const n = int(r, 1, 60);
      const model = randomModel(r, n);
      const t = tableFromModel(model, int(r, 0, 1000));
      const ext = toExtents(t);
      expect(expand(ext, n)).to.deep.equal(model);
      for (let k = 1; k < ext.length; k++) expect(mergeable(ext[k - 1] as Extent, ext[k] as Extent), `extents ${k - 1},${k}`).to.equal(false);
      const back = fromExtents(t.meta, ext);
      expect(back.equals(t)).to.equal(true);
      expect(modelOf(back)).to.deep.equal(model);
    }
  });

  it('extentsIn honours the range and the filter', () => {
    const model: ModelEntry[] = Array.from({ length: 8 }, (_, s) => ({ state: SegmentState.Normal, container: C1, offset: s }));
    const t = tableFromModel(model);
    expect(extentsIn(t, 2, 6)).to.deep.equal([{ first: 2, count: 4, state: SegmentState.Normal, container: C1, offset: 2 }]);
    expect(extentsIn(t, 0, 8, (s) => s !== 3)).to.deep.equal([
      { first: 0, count: 3, state: SegmentState.Normal, container: C1, offset: 0 },
      { first: 4, count: 4, state: SegmentState.Normal, container: C1, offset: 4 },
    ]);
    expect(() => extentsIn(t, 0, 9)).to.throw(RangeError, /out of range/);
  });

  it('rejects extents that do not describe the table', () => {
    const meta = { segmentSize: 1 << 20, blockSize: 512, segmentCount: 4, version: 1 };
    const z = (first: number, count: number): Extent => ({ first, count, state: SegmentState.Zero, container: null, offset: 0 });
    expect(() => fromExtents(meta, [z(0, 3)])).to.throw(RangeError, /cover segments 0-2 but the table has 4/);
    expect(() => fromExtents(meta, [z(0, 2), z(3, 1)])).to.throw(RangeError, /extent 1 .*gap at segments 2-2/);
    expect(() => fromExtents(meta, [z(0, 3), z(2, 2)])).to.throw(RangeError, /extent 1 .*overlaps/);
    expect(() => fromExtents(meta, [z(0, 5)])).to.throw(RangeError, /beyond the end/);
    expect(() => fromExtents(meta, [z(0, 4), z(4, 0)])).to.throw(RangeError, /count at least 1/);
    expect(() =>
      fromExtents(meta, [{ first: 0, count: 4, state: SegmentState.Normal, container: null, offset: 0 }]),
    ).to.throw(RangeError, /extent 0 .*needs a container/);
    expect(() => fromExtents({ ...meta, blockSize: 520 }, [z(0, 4)])).to.throw(RangeError, /block size 520/);
    // Protobuf's empty string means no container.
    const t = fromExtents(meta, [{ first: 0, count: 4, state: SegmentState.Error, container: '', offset: 0 }]);
    expect(t.get(3)).to.deep.equal({ state: SegmentState.Error, container: null, offset: 0 });
    expect(() => checkExtents([z(1, 1)], 4, false)).to.not.throw();
  });

  it('a 1 M-segment (1 TiB) table, allocated contiguously, is a handful of extents', () => {
    const n = 1 << 20;
    const t = new MappingTable({ segmentCount: n, version: 9 });
    t.setRange(0, n / 2, { state: SegmentState.Normal, container: C1, offset: 0 });
    t.setRange(n / 2, n / 2, { state: SegmentState.Normal, container: C2, offset: 4096 });
    t.setRange(1000, 24, { state: SegmentState.Zero });
    const ext = toExtents(t);
    expect(ext).to.have.length(4);
    const back = fromExtents(t.meta, ext);
    expect(back.equals(t)).to.equal(true);
    expect(back.counts()).to.deep.equal({ normal: n - 24, zero: 24, noWrite: 0, invalid: 0, error: 0, allocated: n - 24 });
  });

  it('a table where every segment differs is one extent per segment', () => {
    const n = 1 << 18;
    const t = new MappingTable({ segmentCount: n });
    for (let s = 0; s < n; s++) t.set(s, { state: SegmentState.Normal, container: s % 2 ? C1 : C2, offset: s });
    const ext = toExtents(t);
    expect(ext).to.have.length(n);
    expect(fromExtents(t.meta, ext).equals(t)).to.equal(true);
  });
});
