// The soak's model of what each block may hold: an acknowledged write is the
// only content allowed; a write that was not acknowledged leaves each of its
// blocks old or new, independently; anything else (another write's block,
// the right write at the wrong offset, a flipped byte) is a mismatch.
import { expect } from 'chai';
import { BLOCK, UNIT, VdiskModel, ZERO, describeBlock, fillBlocks, fillContent, writerContent } from './model.js';

const SIZE = 64 * UNIT;

describe('soak model', () => {
  it('a fresh vdisk reads zeros; anything else is a mismatch naming what was found', () => {
    const m = new VdiskModel('v', SIZE);
    expect(m.verify(0, Buffer.alloc(SIZE))).to.deep.equal([]);
    const w = fillBlocks(writerContent(7, 3), UNIT, UNIT);
    const bad = m.verify(UNIT, w);
    expect(bad).to.have.lengthOf(UNIT / BLOCK);
    expect(bad[0]).to.deep.include({ vdisk: 'v', offset: UNIT, allowed: 'fill 0x00' });
    expect(bad[0]?.found).to.equal(`writer block: seq 7 of vdisk tag 3 for offset ${UNIT}`);
  });

  it('an acknowledged write is the one content allowed, at its own offset only', () => {
    const m = new VdiskModel('v', SIZE);
    const c = writerContent(1, 0);
    m.acked(2, 2, c);
    expect(m.allowed(2)).to.deep.equal([c]);
    expect(m.verify(2 * UNIT, fillBlocks(c, 2 * UNIT, 2 * UNIT))).to.deep.equal([]);
    // The same write's blocks one unit off, and zeros, are both wrong.
    expect(m.verify(2 * UNIT, fillBlocks(c, 3 * UNIT, UNIT))).to.have.lengthOf(UNIT / BLOCK);
    expect(m.verify(2 * UNIT, Buffer.alloc(UNIT))).to.have.lengthOf(UNIT / BLOCK);
    // One flipped byte is one bad block.
    const flipped = fillBlocks(c, 2 * UNIT, UNIT);
    flipped[BLOCK + 100] = (flipped[BLOCK + 100] ?? 0) ^ 1;
    expect(m.verify(2 * UNIT, flipped).map((x) => x.offset)).to.deep.equal([2 * UNIT + BLOCK]);
  });

  it('a write not acknowledged leaves each block old or new, block by block, until a later acknowledged write', () => {
    const m = new VdiskModel('v', SIZE);
    const old = fillContent(0xaa);
    const lost = writerContent(2, 0);
    m.acked(0, 1, old);
    m.maybe(0, 1, lost);
    expect(m.allowed(0)).to.deep.equal([old, lost]);
    expect(m.uncertainUnits).to.equal(1);
    // A torn write: the first half new, the rest old.
    const torn = Buffer.concat([fillBlocks(lost, 0, UNIT / 2), Buffer.alloc(UNIT / 2, 0xaa)]);
    expect(m.verify(0, torn)).to.deep.equal([]);
    expect(m.verify(0, Buffer.alloc(UNIT, 0xbb))).to.have.lengthOf(UNIT / BLOCK);
    const next = writerContent(3, 0);
    m.acked(0, 1, next);
    expect(m.allowed(0)).to.deep.equal([next]);
    expect(m.uncertainUnits).to.equal(0);
    expect(m.verify(0, torn)).to.have.lengthOf(UNIT / BLOCK);
  });

  it('a copy (snapshot, clone) keeps the contents and then goes its own way', () => {
    const m = new VdiskModel('v', SIZE);
    m.acked(0, 1, fillContent(1));
    m.maybe(1, 1, fillContent(2));
    const s = m.copy('s');
    m.acked(0, 2, fillContent(3));
    expect(s.allowed(0)).to.deep.equal([fillContent(1)]);
    expect(s.allowed(1)).to.deep.equal([ZERO, fillContent(2)]);
    expect(s.verify(0, Buffer.concat([Buffer.alloc(UNIT, 1), Buffer.alloc(UNIT, 2)]))).to.deep.equal([]);
    expect(m.verify(0, Buffer.alloc(2 * UNIT, 3))).to.deep.equal([]);
  });

  it('describes fills and unknown bytes', () => {
    expect(describeBlock(Buffer.alloc(BLOCK, 0x5a))).to.equal('fill 0x5a');
    const b = Buffer.alloc(BLOCK);
    b[3] = 1;
    expect(describeBlock(b)).to.match(/^bytes 00000001/);
  });
});
