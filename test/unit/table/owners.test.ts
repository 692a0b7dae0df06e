// Write owners in the mapping table: a side map (owned segments are few),
// each owned segment a run of its own, carried by extents, deltas and the
// run form, and seen by the diffs that drive installs.
import { expect } from 'chai';
import { MappingTable, SegmentState, TableBuilder, applyDelta, diff, extentsIn, formatTable, fromExtents, tableRuns, toExtents } from '../../../src/table/index.js';

const C = 'aaaaaaaa-0000-4000-8000-000000000001';

function thick(n = 16): MappingTable {
  const t = new MappingTable({ segmentCount: n, segmentSize: 1 << 20, version: 1, name: 't' });
  t.setRange(0, n, { state: SegmentState.Normal, container: C, offset: 0 }, 1);
  return t;
}

describe('table: segment write owners', () => {
  it('are kept apart from the entry: set, read, cleared, kept by state changes, cleared by setRange', () => {
    const t = thick();
    expect(t.ownerOf(3)).to.equal(0);
    t.setOwner(3, 5);
    expect([t.ownerOf(3), t.ownedCount, t.stateOf(3), t.containerOffsetOf(3)]).to.deep.equal([5, 1, SegmentState.Normal, 3]);
    t.setStateRange(0, 16, SegmentState.NoWrite);
    expect(t.ownerOf(3)).to.equal(5);
    t.setRange(2, 4, { state: SegmentState.Normal, container: C, offset: 2 }, 1);
    expect(t.ownerOf(3)).to.equal(0);
    t.set(4, { state: SegmentState.Normal, container: C, offset: 4, owner: 9 });
    expect(t.owned()).to.deep.equal([[4, 9]]);
    t.setOwner(4, 0);
    expect(t.ownedCount).to.equal(0);
    expect(() => t.setOwner(1, -1)).to.throw(RangeError);
    expect(() => t.setOwner(1, 2 ** 32)).to.throw(RangeError);
  });

  it('an owned segment is an extent of its own, carrying its owner; unowned extents have no owner field', () => {
    const t = thick();
    t.setOwner(5, 2);
    t.setOwner(6, 2);
    const ex = toExtents(t);
    expect(ex).to.deep.equal([
      { first: 0, count: 5, state: SegmentState.Normal, container: C, offset: 0 },
      { first: 5, count: 1, state: SegmentState.Normal, container: C, offset: 5, owner: 2 },
      { first: 6, count: 1, state: SegmentState.Normal, container: C, offset: 6, owner: 2 },
      { first: 7, count: 9, state: SegmentState.Normal, container: C, offset: 7 },
    ]);
    const back = fromExtents(t.meta, ex, 't');
    expect(back.equals(t)).to.equal(true);
    expect(formatTable(t)).to.contain('5-5 normal c=aaaaaaaa off=5 owner=2');
  });

  it('diff and applyDelta carry an ownership change as a change of that segment', () => {
    const a = thick();
    const b = a.clone();
    b.setOwner(9, 3);
    b.bumpVersion();
    expect(a.equals(b)).to.equal(false);
    expect(b.changedRuns(a)).to.deep.equal([[9, 10]]);
    const d = diff(a, b);
    expect(d.extents).to.deep.equal([{ first: 9, count: 1, state: SegmentState.Normal, container: C, offset: 9, owner: 3 }]);
    applyDelta(a, d);
    expect(a.equals(b)).to.equal(true);
    // And back to no owner.
    const c = b.clone();
    c.setOwner(9, 0);
    c.bumpVersion();
    const back = diff(b, c);
    expect(back.extents).to.deep.equal([{ first: 9, count: 1, state: SegmentState.Normal, container: C, offset: 9 }]);
    applyDelta(b, back);
    expect(b.ownedCount).to.equal(0);
    expect(extentsIn(b, 0, 16)).to.have.length(1);
  });

  it('the run form has owners only in pieces with an owned run, and rebuilds them', () => {
    const t = thick(64);
    expect([...tableRuns(t, 4)].every((p) => p.owners === undefined)).to.equal(true);
    t.setOwner(40, 7);
    const pieces = [...tableRuns(t, 2)];
    expect(pieces.map((p) => p.owners)).to.deep.equal([[0, 7], undefined]);
    const b = new TableBuilder(t.meta, 't');
    for (const p of pieces) {
      p.counts.forEach((n, i) => b.addRun(n, p.states[i]!, p.containers[i] ? C : null, p.offsets[i]!, p.owners?.[i] ?? 0));
    }
    expect(b.finish().equals(t)).to.equal(true);
  });

  it('shrinking drops owners past the end', () => {
    const t = thick();
    t.setOwner(15, 1);
    t.resize(8);
    expect(t.ownedCount).to.equal(0);
  });
});
