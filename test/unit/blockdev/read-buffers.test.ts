import { expect } from 'chai';
import { MAX_PIECE_BYTES, SLAB_BYTES, readBuffer } from '../../../src/blockdev/read-buffers.js';

function overlaps(a: Buffer, b: Buffer): boolean {
  if (a.buffer !== b.buffer) return false;
  return a.byteOffset < b.byteOffset + b.length && b.byteOffset < a.byteOffset + a.length;
}

describe('blockdev/readBuffer', () => {
  it('carves small reads from a shared slab, 8-byte aligned, never overlapping', () => {
    const pieces = [512, 4096, 520, 4096, 8192, 4096].map((n) => readBuffer(n));
    expect(pieces.map((p) => p.length)).to.deep.equal([512, 4096, 520, 4096, 8192, 4096]);
    for (const p of pieces) expect(p.byteOffset % 8).to.equal(0);
    // They share slabs (that is the point) ...
    expect(new Set(pieces.map((p) => p.buffer)).size).to.be.lessThan(pieces.length);
    // ... and writing one never shows in another.
    for (let i = 0; i < pieces.length; i++) pieces[i]!.fill(i + 1);
    for (let i = 0; i < pieces.length; i++) {
      expect(pieces[i]!.every((b) => b === i + 1), `piece ${i}`).to.equal(true);
      for (let j = i + 1; j < pieces.length; j++) expect(overlaps(pieces[i]!, pieces[j]!), `${i} and ${j}`).to.equal(false);
    }
  });

  it('starts a new slab when a piece does not fit the rest of the current one', () => {
    const all: Buffer[] = [];
    for (let used = 0; used <= 2 * SLAB_BYTES; used += MAX_PIECE_BYTES) all.push(readBuffer(MAX_PIECE_BYTES));
    expect(new Set(all.map((p) => p.buffer)).size).to.be.greaterThanOrEqual(2);
    for (const p of all) expect(p.byteOffset + p.length).to.be.at.most(SLAB_BYTES);
  });

  it('gives larger reads (and empty ones) a buffer of their own', () => {
    const big = readBuffer(MAX_PIECE_BYTES + 512);
    expect(big.length).to.equal(MAX_PIECE_BYTES + 512);
    const small = readBuffer(512);
    expect(big.buffer).to.not.equal(small.buffer);
    expect(readBuffer(0).length).to.equal(0);
  });
});
