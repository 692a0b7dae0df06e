import { expect } from 'chai';
import { MappingTable, SegmentState, TableBuilder, checkRuns, tableRuns, toExtents } from '../../../src/table/index.js';

const A = 'aaaaaaaa-0000-4000-8000-000000000001';
const B = 'bbbbbbbb-0000-4000-8000-000000000002';

/** 10 segments: 0-3 normal A@10.., 4 zero, 5 normal B@0, 6 normal B@7, 7-9 invalid. */
function sample(): MappingTable {
  const t = new MappingTable({ segmentCount: 10, segmentSize: 1 << 20, blockSize: 512, version: 3, name: 'd' });
  t.setRange(0, 4, { state: SegmentState.Normal, container: A, offset: 10 });
  t.set(5, { state: SegmentState.Normal, container: B, offset: 0 });
  t.set(6, { state: SegmentState.Normal, container: B, offset: 7 });
  t.setStateRange(7, 3, SegmentState.Invalid);
  return t;
}

describe('table runs (TableFull run form)', () => {
  it('lists the runs with 1-based container indices, cut into pieces of at most maxRuns', () => {
    const t = sample();
    expect(t.containers).to.deep.equal([A, B]);
    const pieces = [...tableRuns(t, 2)];
    // Written out by hand from sample().
    expect(pieces).to.deep.equal([
      { firstSegment: 0, counts: [4, 1], states: [SegmentState.Normal, SegmentState.Zero], containers: [1, 0], offsets: [10, 0] },
      { firstSegment: 5, counts: [1, 1], states: [SegmentState.Normal, SegmentState.Normal], containers: [2, 2], offsets: [0, 7] },
      { firstSegment: 7, counts: [3], states: [SegmentState.Invalid], containers: [0], offsets: [0] },
    ]);
  });

  it('rebuilds the same table from the pieces', () => {
    const t = sample();
    const b = new TableBuilder(t.meta, 'd');
    for (const r of tableRuns(t, 2)) {
      expect(b.nextSegment).to.equal(r.firstSegment);
      checkRuns(r, t.containers.length);
      r.counts.forEach((c, i) => {
        const ci = r.containers[i] as number;
        b.addRun(c, r.states[i] as SegmentState, ci === 0 ? null : (t.containers[ci - 1] as string), r.offsets[i] as number);
      });
    }
    const u = b.finish();
    expect(u.version).to.equal(3);
    expect(u.equals(t)).to.equal(true);
  });

  it('builds from extents and refuses gaps, bad entries and an incomplete table', () => {
    const t = sample();
    const b = new TableBuilder(t.meta);
    b.addExtents(toExtents(t));
    expect(b.finish().equals(t)).to.equal(true);

    const gap = new TableBuilder(t.meta);
    expect(() => gap.addExtents([{ first: 1, count: 2, state: SegmentState.Zero, container: null, offset: 0 }])).to.throw(RangeError, /starts at segment 1/);
    const noLoc = new TableBuilder(t.meta);
    expect(() => noLoc.addRun(2, SegmentState.Normal, null, 0)).to.throw(RangeError);
    const short = new TableBuilder(t.meta);
    short.addRun(9, SegmentState.Zero, null, 0);
    expect(() => short.finish()).to.throw(RangeError, /covers segments 0-8 but has 10/);
    expect(() => short.addRun(2, SegmentState.Zero, null, 0)).to.throw(RangeError);
  });

  it('checkRuns refuses arrays of different lengths and unknown container indices', () => {
    expect(() => checkRuns({ firstSegment: 0, counts: [1, 2], states: [0], containers: [0, 0], offsets: [0, 0] }, 1)).to.throw(RangeError, /must be equal/);
    expect(() => checkRuns({ firstSegment: 0, counts: [1], states: [1], containers: [2], offsets: [0] }, 1)).to.throw(RangeError, /container 2 of 1/);
  });
});
