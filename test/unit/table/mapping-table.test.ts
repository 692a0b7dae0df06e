import { expect } from 'chai';
import { MappingTable, normalizeEntry, type IoPiece, type PieceCallback } from '../../../src/table/mapping-table.js';
import { SegmentState } from '../../../src/table/segment-state.js';
import { C1, C2, C3, int, naiveSplit, randomModel, rng, tableFromModel, type ModelEntry } from './helpers.js';

const MiB = 1 << 20;

describe('table/mapping-table', () => {
  describe('construction', () => {
    it('defaults to 1 MiB segments, 512-byte blocks, version 0, all zero', () => {
      const t = new MappingTable({ segmentCount: 8 });
      expect(t.segmentSize).to.equal(MiB);
      expect(t.blockSize).to.equal(512);
      expect(t.blocksPerSegment).to.equal(2048);
      expect(t.blockCount).to.equal(8 * 2048);
      expect(t.sizeBytes).to.equal(8 * MiB);
      expect(t.version).to.equal(0);
      for (let s = 0; s < 8; s++) expect(t.get(s)).to.deep.equal({ state: SegmentState.Zero, container: null, offset: 0 });
      expect(t.meta).to.deep.equal({ segmentSize: MiB, blockSize: 512, segmentCount: 8, version: 0 });
    });

    it('rejects bad geometry with the reason', () => {
      expect(() => new MappingTable({ segmentCount: 1, segmentSize: 32 << 10 })).to.throw(RangeError, /segment size 32768 invalid/);
      expect(() => new MappingTable({ segmentCount: 1, segmentSize: 3 * MiB })).to.throw(RangeError, /power of two/);
      expect(() => new MappingTable({ segmentCount: 1, segmentSize: 2 << 30 })).to.throw(RangeError, /segment size/);
      expect(() => new MappingTable({ segmentCount: 1, blockSize: 1024 })).to.throw(RangeError, /block size 1024 invalid/);
      expect(() => new MappingTable({ segmentCount: -1 })).to.throw(RangeError, /segment count -1/);
      expect(() => new MappingTable({ segmentCount: 1.5 })).to.throw(RangeError, /segment count 1.5/);
      expect(() => new MappingTable({ segmentCount: 1, version: -2 })).to.throw(RangeError, /version -2/);
      expect(new MappingTable({ segmentCount: 0, segmentSize: 64 << 10, blockSize: 4096 }).blocksPerSegment).to.equal(16);
    });
  });

  describe('entries', () => {
    it('sets and gets entries of every state', () => {
      const t = new MappingTable({ segmentCount: 6 });
      t.set(0, { state: SegmentState.Normal, container: C1, offset: 42 });
      t.set(1, { state: SegmentState.NoWrite, container: C2, offset: 0 });
      t.set(2, { state: SegmentState.Error, container: C1, offset: 9 });
      t.set(3, { state: SegmentState.Error });
      t.set(4, { state: SegmentState.Invalid, container: C1, offset: 5 }); // location dropped
      expect(t.get(0)).to.deep.equal({ state: SegmentState.Normal, container: C1, offset: 42 });
      expect(t.get(1)).to.deep.equal({ state: SegmentState.NoWrite, container: C2, offset: 0 });
      expect(t.get(2)).to.deep.equal({ state: SegmentState.Error, container: C1, offset: 9 });
      expect(t.get(3)).to.deep.equal({ state: SegmentState.Error, container: null, offset: 0 });
      expect(t.get(4)).to.deep.equal({ state: SegmentState.Invalid, container: null, offset: 0 });
      expect(t.get(5)).to.deep.equal({ state: SegmentState.Zero, container: null, offset: 0 });
      expect(t.stateOf(1)).to.equal(SegmentState.NoWrite);
      expect(t.containerOf(1)).to.equal(C2);
      expect(t.containerOf(5)).to.equal(null);
      expect(t.containerOffsetOf(0)).to.equal(42);
      expect(t.containers).to.deep.equal([C1, C2]);
      expect(t.slotOf(0)).to.equal(0);
      expect(t.slotOf(1)).to.equal(1);
      expect(t.slotOf(3)).to.equal(-1);
      expect(t.segmentByteOffset(0)).to.equal(42 * MiB);
      expect(t.segmentByteOffset(5)).to.equal(-1);
    });

    it('rejects bad entries and segments with context', () => {
      const t = new MappingTable({ segmentCount: 4, name: 'disk0' });
      expect(() => t.get(4)).to.throw(RangeError, 'vdisk disk0 segment 4 out of range (table has 4 segments)');
      expect(() => t.stateOf(-1)).to.throw(RangeError, /segment -1 out of range/);
      expect(() => t.stateOf(1.5)).to.throw(RangeError, /segment 1.5 out of range/);
      expect(() => t.set(1, { state: SegmentState.Normal })).to.throw(RangeError, /vdisk disk0 segment 1: a normal entry needs a container/);
      expect(() => t.set(1, { state: SegmentState.NoWrite, container: C1 })).to.throw(RangeError, /container offset undefined invalid/);
      expect(() => t.set(1, { state: SegmentState.Normal, container: C1, offset: -1 })).to.throw(RangeError, /offset -1/);
      expect(() => t.set(1, { state: SegmentState.Normal, container: C1, offset: 2 ** 32 })).to.throw(RangeError, /offset 4294967296/);
      expect(() => t.set(1, { state: SegmentState.Error, offset: 3 })).to.throw(RangeError, /offset 3 given without a container/);
      expect(() => t.set(1, { state: 8 as SegmentState })).to.throw(RangeError, /unknown state 8/);
      expect(() => t.setRange(2, 3, { state: SegmentState.Zero })).to.throw(RangeError, /segments 2\+3 out of range/);
      expect(() => t.setRange(0, 2, { state: SegmentState.Normal, container: C1, offset: 2 ** 32 - 1 })).to.throw(
        RangeError,
        /container offset 4294967296 exceeds/,
      );
      expect(() => t.setRange(0, 2, { state: SegmentState.Normal, container: C1, offset: 0 }, -1)).to.throw(RangeError, /offset step -1/);
      // Nothing above changed the table or registered a container.
      expect(t.counts().zero).to.equal(4);
      expect(t.containers).to.deep.equal([]);
    });

    it('setRange advances offsets by the step', () => {
      const t = new MappingTable({ segmentCount: 10 });
      t.setRange(2, 4, { state: SegmentState.Normal, container: C1, offset: 100 });
      t.setRange(6, 3, { state: SegmentState.NoWrite, container: C2, offset: 7 }, 0);
      t.setRange(0, 0, { state: SegmentState.Invalid });
      expect([2, 3, 4, 5].map((s) => t.containerOffsetOf(s))).to.deep.equal([100, 101, 102, 103]);
      expect([6, 7, 8].map((s) => t.get(s))).to.deep.equal([
        { state: SegmentState.NoWrite, container: C2, offset: 7 },
        { state: SegmentState.NoWrite, container: C2, offset: 7 },
        { state: SegmentState.NoWrite, container: C2, offset: 7 },
      ]);
      expect(t.stateOf(0)).to.equal(SegmentState.Zero);
      t.setRange(3, 2, { state: SegmentState.Zero, container: C1, offset: 5 });
      expect(t.get(3)).to.deep.equal({ state: SegmentState.Zero, container: null, offset: 0 });
      expect(t.get(5)).to.deep.equal({ state: SegmentState.Normal, container: C1, offset: 103 });
    });

    it('setStateRange keeps locations and refuses normal without one', () => {
      const t = new MappingTable({ segmentCount: 4 });
      t.setRange(0, 3, { state: SegmentState.Normal, container: C1, offset: 10 });
      t.setStateRange(0, 3, SegmentState.NoWrite);
      expect(t.get(1)).to.deep.equal({ state: SegmentState.NoWrite, container: C1, offset: 11 });
      t.setState(2, SegmentState.Error);
      expect(t.get(2)).to.deep.equal({ state: SegmentState.Error, container: C1, offset: 12 });
      t.setState(0, SegmentState.Invalid);
      expect(t.get(0)).to.deep.equal({ state: SegmentState.Invalid, container: null, offset: 0 });
      expect(() => t.setStateRange(0, 4, SegmentState.Normal)).to.throw(RangeError, /segment 0: cannot become normal without a container/);
      t.setStateRange(1, 1, SegmentState.Normal);
      expect(t.stateOf(1)).to.equal(SegmentState.Normal);
    });

    it('runEnd finds where a run breaks', () => {
      const t = new MappingTable({ segmentCount: 10 });
      t.setRange(0, 4, { state: SegmentState.Normal, container: C1, offset: 0 });
      t.setRange(4, 2, { state: SegmentState.Normal, container: C1, offset: 10 });
      t.setRange(6, 2, { state: SegmentState.Invalid });
      expect(t.runEnd(0)).to.equal(4);
      expect(t.runEnd(1, 3)).to.equal(3);
      expect(t.runEnd(4)).to.equal(6);
      expect(t.runEnd(6)).to.equal(8);
      expect(t.runEnd(8)).to.equal(10);
      expect(() => t.runEnd(0, 11)).to.throw(RangeError, /run limit 11/);
    });

    it('normalizeEntry reports with the given context', () => {
      expect(normalizeEntry({ state: SegmentState.Zero, container: C1, offset: 3 })).to.deep.equal({
        state: SegmentState.Zero,
        container: null,
        offset: 0,
      });
      expect(() => normalizeEntry({ state: SegmentState.Normal }, 1, 1, 'fault on disk0')).to.throw(
        RangeError,
        'fault on disk0: a normal entry needs a container',
      );
    });

    it('counts segments by state', () => {
      const t = new MappingTable({ segmentCount: 10 });
      t.setRange(0, 3, { state: SegmentState.Normal, container: C1, offset: 0 });
      t.set(3, { state: SegmentState.NoWrite, container: C1, offset: 3 });
      t.set(4, { state: SegmentState.Error, container: C2, offset: 0 });
      t.set(5, { state: SegmentState.Error });
      t.setRange(6, 2, { state: SegmentState.Invalid });
      expect(t.counts()).to.deep.equal({ normal: 3, zero: 2, noWrite: 1, invalid: 2, error: 2, allocated: 5 });
    });
  });

  describe('versions', () => {
    it('only moves forward', () => {
      const t = new MappingTable({ segmentCount: 1, version: 5 });
      expect(t.bumpVersion()).to.equal(6);
      t.setVersion(6);
      t.setVersion(10);
      expect(t.version).to.equal(10);
      expect(() => t.setVersion(9)).to.throw(RangeError, /version 9 is older than current version 10/);
      expect(() => t.setVersion(1.5)).to.throw(RangeError, /version 1.5/);
    });
  });

  describe('locate', () => {
    it('maps an LBA to its container byte offset', () => {
      const t = new MappingTable({ segmentCount: 4, segmentSize: 64 << 10, blockSize: 512 }); // 128 blocks per segment
      t.set(1, { state: SegmentState.Normal, container: C1, offset: 3 });
      expect(t.locate(128)).to.deep.equal({ seg: 1, state: SegmentState.Normal, containerId: C1, byteOffset: 3 * 65536 });
      expect(t.locate(255)).to.deep.equal({ seg: 1, state: SegmentState.Normal, containerId: C1, byteOffset: 3 * 65536 + 127 * 512 });
      expect(t.locate(0)).to.deep.equal({ seg: 0, state: SegmentState.Zero, containerId: null, byteOffset: -1 });
      expect(t.locate(511).seg).to.equal(3);
      expect(() => t.locate(512)).to.throw(RangeError, /lba 512 out of range \(512 blocks\)/);
      expect(() => t.locate(-1)).to.throw(RangeError, /lba -1/);
    });

    it('works with 4096-byte blocks', () => {
      const t = new MappingTable({ segmentCount: 2, blockSize: 4096 }); // 256 blocks per segment
      t.set(1, { state: SegmentState.NoWrite, container: C2, offset: 1000 });
      expect(t.segmentOf(255)).to.equal(0);
      expect(t.segmentOf(256)).to.equal(1);
      expect(t.locate(300)).to.deep.equal({ seg: 1, state: SegmentState.NoWrite, containerId: C2, byteOffset: 1000 * MiB + 44 * 4096 });
    });

    it('keeps large container offsets exact', () => {
      const t = new MappingTable({ segmentCount: 1 });
      t.set(0, { state: SegmentState.Normal, container: C1, offset: 0xffffffff });
      // 0xffffffff MiB + one block, computed with BigInt.
      const expected = Number(0xffffffffn * 1048576n + 512n);
      expect(t.locate(1).byteOffset).to.equal(expected);
    });
  });

  describe('split', () => {
    const collect = (t: MappingTable, lba: number, blocks: number): { viaCallback: IoPiece[]; viaIterator: IoPiece[]; n: number } => {
      const viaCallback: IoPiece[] = [];
      const fn: PieceCallback = (seg, l, b, bufferOffset) => viaCallback.push({ seg, lba: l, blocks: b, bufferOffset });
      const n = t.forEachPiece(lba, blocks, fn);
      return { viaCallback, viaIterator: [...t.pieces(lba, blocks)], n };
    };

    for (const blockSize of [512, 4096]) {
      describe(`${blockSize}-byte blocks, 64 KiB segments`, () => {
        const t = new MappingTable({ segmentCount: 16, segmentSize: 64 << 10, blockSize });
        const bps = (64 << 10) / blockSize;

        it('an I/O inside one segment is one piece', () => {
          expect(t.split(3, 2)).to.deep.equal([{ seg: 0, lba: 3, blocks: 2, bufferOffset: 0 }]);
          expect(t.split(bps + 1, 1)).to.deep.equal([{ seg: 1, lba: bps + 1, blocks: 1, bufferOffset: 0 }]);
        });

        it('first and last block of a segment', () => {
          expect(t.split(bps - 1, 1)).to.deep.equal([{ seg: 0, lba: bps - 1, blocks: 1, bufferOffset: 0 }]);
          expect(t.split(bps, 1)).to.deep.equal([{ seg: 1, lba: bps, blocks: 1, bufferOffset: 0 }]);
          expect(t.split(bps - 1, 2)).to.deep.equal([
            { seg: 0, lba: bps - 1, blocks: 1, bufferOffset: 0 },
            { seg: 1, lba: bps, blocks: 1, bufferOffset: blockSize },
          ]);
          expect(t.split(16 * bps - 1, 1)).to.deep.equal([{ seg: 15, lba: 16 * bps - 1, blocks: 1, bufferOffset: 0 }]);
        });

        it('exactly one segment, aligned', () => {
          expect(t.split(2 * bps, bps)).to.deep.equal([{ seg: 2, lba: 2 * bps, blocks: bps, bufferOffset: 0 }]);
          expect(t.pieceCount(2 * bps, bps)).to.equal(1);
        });

        it('one segment long but unaligned is two pieces', () => {
          expect(t.split(bps / 2, bps)).to.deep.equal([
            { seg: 0, lba: bps / 2, blocks: bps / 2, bufferOffset: 0 },
            { seg: 1, lba: bps, blocks: bps / 2, bufferOffset: (bps / 2) * blockSize },
          ]);
        });

        it('many segments, the whole device, and zero length', () => {
          expect(t.split(0, 16 * bps)).to.deep.equal(naiveSplit(0, 16 * bps, blockSize, 64 << 10));
          expect(t.split(5, 5 * bps)).to.deep.equal(naiveSplit(5, 5 * bps, blockSize, 64 << 10));
          expect(t.split(7, 0)).to.deep.equal([]);
          expect(t.forEachPiece(7, 0, () => expect.fail('no pieces'))).to.equal(0);
        });

        it('matches a block-by-block reference on random I/Os, in all three forms', () => {
          const r = rng(blockSize);
          for (let i = 0; i < 300; i++) {
            const lba = int(r, 0, 16 * bps - 1);
            const blocks = int(r, 0, Math.min(16 * bps - lba, 4 * bps));
            const want = naiveSplit(lba, blocks, blockSize, 64 << 10);
            expect(t.split(lba, blocks)).to.deep.equal(want);
            const { viaCallback, viaIterator, n } = collect(t, lba, blocks);
            expect(viaCallback).to.deep.equal(want);
            expect(viaIterator).to.deep.equal(want);
            expect(n).to.equal(want.length);
            expect(t.pieceCount(lba, blocks)).to.equal(want.length);
          }
        });

        it('rejects I/O beyond the end or malformed', () => {
          expect(() => t.split(16 * bps - 1, 2)).to.throw(RangeError, new RegExp(`lba ${16 * bps - 1} len 2 out of range`));
          expect(() => t.split(-1, 1)).to.throw(RangeError, /lba -1/);
          expect(() => t.split(0, -1)).to.throw(RangeError, /len -1/);
          expect(() => t.split(0.5, 1)).to.throw(RangeError);
          expect(() => [...t.pieces(16 * bps, 1)]).to.throw(RangeError);
          expect(() => t.forEachPiece(0, 16 * bps + 1, () => undefined)).to.throw(RangeError);
        });
      });
    }

    it('default 1 MiB segments with 512-byte blocks', () => {
      const t = new MappingTable({ segmentCount: 4 });
      expect(t.split(2047, 2050)).to.deep.equal([
        { seg: 0, lba: 2047, blocks: 1, bufferOffset: 0 },
        { seg: 1, lba: 2048, blocks: 2048, bufferOffset: 512 },
        { seg: 2, lba: 4096, blocks: 1, bufferOffset: 512 + 2048 * 512 },
      ]);
    });
  });

  describe('resize and clone', () => {
    it('grows with zero segments and shrinks keeping the prefix', () => {
      const t = new MappingTable({ segmentCount: 3 });
      t.setRange(0, 3, { state: SegmentState.Normal, container: C1, offset: 0 });
      t.resize(5);
      expect(t.segmentCount).to.equal(5);
      expect(t.blockCount).to.equal(5 * 2048);
      expect(t.get(2)).to.deep.equal({ state: SegmentState.Normal, container: C1, offset: 2 });
      expect(t.get(3)).to.deep.equal({ state: SegmentState.Zero, container: null, offset: 0 });
      expect(t.get(4)).to.deep.equal({ state: SegmentState.Zero, container: null, offset: 0 });
      t.resize(2);
      expect(t.segmentCount).to.equal(2);
      expect(() => t.get(2)).to.throw(RangeError, /segment 2 out of range/);
      expect(t.get(1)).to.deep.equal({ state: SegmentState.Normal, container: C1, offset: 1 });
      t.resize(4);
      expect(t.get(2)).to.deep.equal({ state: SegmentState.Zero, container: null, offset: 0 });
      t.resize(0);
      expect(t.split(0, 0)).to.deep.equal([]);
      expect(() => t.resize(-3)).to.throw(RangeError, /segment count -3/);
    });

    it('clones deeply', () => {
      const t = new MappingTable({ segmentCount: 4, version: 3, name: 'd' });
      t.set(1, { state: SegmentState.Normal, container: C1, offset: 8 });
      const c = t.clone();
      expect(c.equals(t)).to.equal(true);
      expect(c.name).to.equal('d');
      c.set(1, { state: SegmentState.Normal, container: C2, offset: 8 });
      c.bumpVersion();
      c.resize(6);
      expect(t.get(1)).to.deep.equal({ state: SegmentState.Normal, container: C1, offset: 8 });
      expect(t.containers).to.deep.equal([C1]);
      expect(t.version).to.equal(3);
      expect(t.segmentCount).to.equal(4);
    });

    it('compares by container id, not slot', () => {
      const a = new MappingTable({ segmentCount: 2 });
      const b = new MappingTable({ segmentCount: 2 });
      a.set(0, { state: SegmentState.Normal, container: C1, offset: 1 });
      a.set(1, { state: SegmentState.Normal, container: C2, offset: 1 });
      b.set(1, { state: SegmentState.Normal, container: C2, offset: 1 });
      b.set(0, { state: SegmentState.Normal, container: C1, offset: 1 });
      expect(a.containers).to.not.deep.equal(b.containers);
      expect(a.equals(b)).to.equal(true);
      b.set(0, { state: SegmentState.Normal, container: C1, offset: 2 });
      expect(a.equals(b)).to.equal(false);
      expect(a.firstDifference(b)).to.equal(0);
    });

    it('prunes containers no segment uses', () => {
      const t = new MappingTable({ segmentCount: 3 });
      t.set(0, { state: SegmentState.Normal, container: C1, offset: 0 });
      t.set(1, { state: SegmentState.Normal, container: C2, offset: 0 });
      const before = t.clone();
      t.set(0, { state: SegmentState.Zero });
      expect(t.pruneContainers()).to.equal(1);
      expect(t.containers).to.deep.equal([C2]);
      expect(t.get(1)).to.deep.equal({ state: SegmentState.Normal, container: C2, offset: 0 });
      expect(t.slotOf(1)).to.equal(0);
      expect(t.pruneContainers()).to.equal(0);
      expect(before.containers).to.deep.equal([C1, C2]);
    });
  });
  describe('changedRuns', () => {
    /** Naive reference: per-segment comparison of the models; growth counts only non-zero entries. */
    function naiveRuns(older: readonly ModelEntry[], newer: readonly ModelEntry[]): [number, number][] {
      const out: [number, number][] = [];
      newer.forEach((e, s) => {
        const o = older[s];
        const changed = o === undefined ? e.state !== SegmentState.Zero : o.state !== e.state || o.container !== e.container || o.offset !== e.offset;
        if (!changed) return;
        const last = out[out.length - 1];
        if (last !== undefined && last[1] === s) last[1] = s + 1;
        else out.push([s, s + 1]);
      });
      return out;
    }

    it('finds the differing runs, comparing containers by id whatever their slots', () => {
      const older = new MappingTable({ segmentCount: 6 });
      older.setRange(0, 6, { state: SegmentState.Normal, container: C1, offset: 0 });
      older.set(5, { state: SegmentState.Normal, container: C2, offset: 9 });
      // C2 interned first here: slots differ, entries of segments 0-3 do not.
      const newer = new MappingTable({ segmentCount: 9 });
      newer.set(5, { state: SegmentState.Normal, container: C2, offset: 9 });
      newer.setRange(0, 5, { state: SegmentState.Normal, container: C1, offset: 0 });
      newer.set(4, { state: SegmentState.NoWrite, container: C1, offset: 4 });
      newer.set(6, { state: SegmentState.Invalid });
      newer.set(8, { state: SegmentState.Normal, container: C3, offset: 1 });
      expect(newer.changedRuns(older)).to.deep.equal([
        [4, 5],
        [6, 7],
        [8, 9],
      ]);
      expect(older.changedRuns(older.clone())).to.deep.equal([]);
    });

    it('joins a changed last segment with non-zero growth into one run', () => {
      const older = new MappingTable({ segmentCount: 3 });
      const newer = new MappingTable({ segmentCount: 5 });
      newer.setRange(2, 3, { state: SegmentState.Invalid });
      expect(newer.changedRuns(older)).to.deep.equal([[2, 5]]);
    });

    it('matches a naive comparison on random tables', () => {
      const r = rng(7);
      for (let i = 0; i < 200; i++) {
        const a = randomModel(r, int(r, 1, 40));
        const b = r() < 0.3 ? randomModel(r, int(r, 1, 40)) : a.map((e) => (r() < 0.2 ? (randomModel(r, 1)[0] as ModelEntry) : e));
        expect(tableFromModel(b).changedRuns(tableFromModel(a)), `case ${i}`).to.deep.equal(naiveRuns(a, b));
      }
    });
  });
});
