import { expect } from 'chai';
import { MappingTable } from '../../../src/table/mapping-table.js';
import { VersionGapError, applyDelta, diff, type TableDelta } from '../../../src/table/delta.js';
import { SegmentState } from '../../../src/table/segment-state.js';
import { C1, C2, C3, expand, int, modelOf, randomModel, rng, tableFromModel } from './helpers.js';

describe('table/delta', () => {
  it('carries only the changed segments', () => {
    const a = new MappingTable({ segmentCount: 8, version: 1 });
    a.setRange(0, 8, { state: SegmentState.Normal, container: C1, offset: 0 });
    const b = a.clone();
    b.setStateRange(2, 3, SegmentState.NoWrite);
    b.set(6, { state: SegmentState.Normal, container: C2, offset: 6 });
    b.setVersion(3);
    const d = diff(a, b);
    expect(d).to.deep.equal({
      fromVersion: 1,
      toVersion: 3,
      segmentCount: 8,
      extents: [
        { first: 2, count: 3, state: SegmentState.NoWrite, container: C1, offset: 2 },
        { first: 6, count: 1, state: SegmentState.Normal, container: C2, offset: 6 },
      ],
    });
    const c = applyDelta(a.clone(), d);
    expect(c.equals(b)).to.equal(true);
  });

  it('an unchanged table gives an empty delta that still moves the version', () => {
    const a = new MappingTable({ segmentCount: 4, version: 2 });
    const b = a.clone();
    b.bumpVersion();
    const d = diff(a, b);
    expect(d.extents).to.deep.equal([]);
    expect(applyDelta(a, d).version).to.equal(3);
  });

  it('growth sends only non-zero new segments; shrink sends none', () => {
    const a = new MappingTable({ segmentCount: 4, version: 1 });
    a.setRange(0, 4, { state: SegmentState.Normal, container: C1, offset: 0 });
    const grown = a.clone();
    grown.resize(10);
    grown.set(8, { state: SegmentState.Invalid });
    grown.setVersion(2);
    const dg = diff(a, grown);
    expect(dg.segmentCount).to.equal(10);
    expect(dg.extents).to.deep.equal([{ first: 8, count: 1, state: SegmentState.Invalid, container: null, offset: 0 }]);
    expect(applyDelta(a.clone(), dg).equals(grown)).to.equal(true);

    const shrunk = a.clone();
    shrunk.resize(2);
    shrunk.setVersion(2);
    const ds = diff(a, shrunk);
    expect(ds).to.deep.equal({ fromVersion: 1, toVersion: 2, segmentCount: 2, extents: [] });
    expect(applyDelta(a.clone(), ds).equals(shrunk)).to.equal(true);
  });

  it('detects container changes even when slots coincide', () => {
    const a = new MappingTable({ segmentCount: 2, version: 1 });
    a.set(0, { state: SegmentState.Normal, container: C1, offset: 0 });
    const b = new MappingTable({ segmentCount: 2, version: 2 });
    b.set(0, { state: SegmentState.Normal, container: C3, offset: 0 }); // slot 0 in both tables
    expect(diff(a, b).extents).to.deep.equal([{ first: 0, count: 1, state: SegmentState.Normal, container: C3, offset: 0 }]);
  });

  it('round-trips random version chains', () => {
    const r = rng(42);
    for (let i = 0; i < 150; i++) {
      const n1 = int(r, 0, 40);
      const older = tableFromModel(randomModel(r, n1 || 1).slice(0, n1), int(r, 0, 50));
      const newerModel = randomModel(r, int(r, 0, 40));
      // Keep part of the old table so deltas are partial, as in real use.
      const keep = Math.min(n1, newerModel.length, int(r, 0, 40));
      for (let s = 0; s < keep; s++) if (r() < 0.7) newerModel[s] = modelOf(older)[s]!;
      const newer = tableFromModel(newerModel, older.version + int(r, 1, 5));
      const d = diff(older, newer);
      // The delta, expanded over the old entries naively, is the new table.
      expect(expand(d.extents, d.segmentCount, modelOf(older))).to.deep.equal(newerModel);
      const applied = applyDelta(older.clone(), d);
      expect(applied.equals(newer)).to.equal(true);
    }
  });

  it('refuses a version gap with a typed error and leaves the table alone', () => {
    const t = new MappingTable({ segmentCount: 4, version: 5, name: 'disk0' });
    const d: TableDelta = {
      fromVersion: 6,
      toVersion: 7,
      segmentCount: 4,
      extents: [{ first: 0, count: 1, state: SegmentState.Invalid, container: null, offset: 0 }],
    };
    let caught: unknown;
    try {
      applyDelta(t, d);
    } catch (e) {
      caught = e;
    }
    expect(caught).to.be.instanceOf(VersionGapError);
    const gap = caught as VersionGapError;
    expect(gap.tableVersion).to.equal(5);
    expect(gap.fromVersion).to.equal(6);
    expect(gap.toVersion).to.equal(7);
    expect(gap.message).to.equal('vdisk disk0: delta 6->7 does not apply to table version 5');
    expect(() => applyDelta(t, { ...d, fromVersion: 4, toVersion: 5 })).to.throw(VersionGapError);
    expect(t.version).to.equal(5);
    expect(t.stateOf(0)).to.equal(SegmentState.Zero);
  });

  it('rejects malformed deltas before changing anything', () => {
    const t = new MappingTable({ segmentCount: 4, version: 1 });
    const ok = { fromVersion: 1, toVersion: 2, segmentCount: 4, extents: [] };
    expect(() => applyDelta(t, { ...ok, toVersion: 1 })).to.throw(RangeError, /target version must be newer/);
    expect(() => applyDelta(t, { ...ok, segmentCount: -1 })).to.throw(RangeError, /segment count -1/);
    expect(() =>
      applyDelta(t, {
        ...ok,
        extents: [
          { first: 0, count: 1, state: SegmentState.Invalid, container: null, offset: 0 },
          { first: 3, count: 2, state: SegmentState.Invalid, container: null, offset: 0 },
        ],
      }),
    ).to.throw(RangeError, /extent 1 .*beyond the end/);
    expect(() =>
      applyDelta(t, { ...ok, extents: [{ first: 1, count: 1, state: SegmentState.NoWrite, container: null, offset: 0 }] }),
    ).to.throw(RangeError, /needs a container/);
    expect(t.version).to.equal(1);
    expect(t.counts().zero).to.equal(4);
  });

  it('diff refuses mismatched geometry or versions that do not move forward', () => {
    const a = new MappingTable({ segmentCount: 2, version: 3 });
    expect(() => diff(a, new MappingTable({ segmentCount: 2, version: 4, blockSize: 4096 }))).to.throw(RangeError, /geometry/);
    expect(() => diff(a, new MappingTable({ segmentCount: 2, version: 3 }))).to.throw(RangeError, /version 3 to version 3/);
  });
});
