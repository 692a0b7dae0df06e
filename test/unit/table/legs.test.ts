import { expect } from 'chai';
import { MAX_COPIES, MappingTable, SegmentState } from '../../../src/table/index.js';
import { C1, C2, C3 } from './helpers.js';

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
