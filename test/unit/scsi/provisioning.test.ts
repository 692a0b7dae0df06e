import { expect } from 'chai';
import { be32, be64, cdb, expectGood, expectSense, fixture } from './helpers.js';

function unmapList(ranges: Array<[bigint, number]>): Buffer {
  const body = ranges.flatMap(([lba, n]) => [...be64(lba), ...be32(n), 0, 0, 0, 0]);
  const len = 8 + body.length;
  return Buffer.from([((len - 2) >> 8) & 0xff, (len - 2) & 0xff, (body.length >> 8) & 0xff, body.length & 0xff, 0, 0, 0, 0, ...body]);
}

/** GET LBA STATUS descriptors as [lba, blocks, status]. */
function statuses(d: Buffer): Array<[number, number, number]> {
  const out: Array<[number, number, number]> = [];
  for (let off = 8; off + 16 <= d.length; off += 16) out.push([Number(d.readBigUInt64BE(off)), d.readUInt32BE(off + 8), d[off + 12]!]);
  return out;
}

describe('UNMAP and GET LBA STATUS', () => {
  it('unmaps ranges and reports mapped / deallocated extents', async () => {
    const f = fixture(64);
    expectGood(await f.run(cdb.write10(0, 16), { dataOut: Buffer.alloc(16 * 512, 7) }));
    const list = unmapList([
      [2n, 3],
      [10n, 1],
    ]);
    expectGood(await f.run(cdb.unmap(list.length), { dataOut: list }));
    const r = await f.run(cdb.getLbaStatus(0n));
    expectGood(r);
    const d = r.dataIn!;
    expect(d.readUInt32BE(0)).to.equal(d.length - 4);
    expect(statuses(d)).to.deep.equal([
      [0, 2, 0],
      [2, 3, 1],
      [5, 5, 0],
      [10, 1, 1],
      [11, 5, 0],
      [16, 48, 1],
    ]);
    const z = (await f.run(cdb.read10(2, 1))).dataIn!;
    expect(z.every((x) => x === 0)).to.equal(true);
    expectSense(await f.run(cdb.getLbaStatus(64n)), 0x5, 0x21, 0x00);
    expect((await f.run(cdb.getLbaStatus(0n, 24))).dataIn!.length).to.equal(24);
  });

  it('validates the parameter list: length, range, descriptor count, ANCHOR', async () => {
    const f = fixture(64);
    expectGood(await f.run(cdb.unmap(0)));
    expectGood(await f.run(cdb.unmap(8), { dataOut: unmapList([]) }));
    expectSense(await f.run(cdb.unmap(4), { dataOut: Buffer.alloc(4) }), 0x5, 0x1a, 0x00);
    const beyond = unmapList([[60n, 5]]);
    expectSense(await f.run(cdb.unmap(beyond.length), { dataOut: beyond }), 0x5, 0x21, 0x00);
    const many = unmapList(Array.from({ length: 257 }, (_, i) => [BigInt(i % 64), 0] as [bigint, number]));
    expectSense(await f.run(cdb.unmap(many.length), { dataOut: many }), 0x5, 0x26, 0x00);
    const ok = unmapList([[0n, 1]]);
    expectSense(await f.run([0x42, 0x01, 0, 0, 0, 0, 0, 0, ok.length, 0], { dataOut: ok }), 0x5, 0x24, 0x00);
  });

  it('is not offered on a fully provisioned LU', async () => {
    const f = fixture(64, { thin: false });
    const list = unmapList([[0n, 1]]);
    expectSense(await f.run(cdb.unmap(list.length), { dataOut: list }), 0x5, 0x20, 0x00);
  });
});

describe('WRITE SAME', () => {
  it('repeats a pattern, or writes zeros / unmaps for a zero block', async () => {
    const f = fixture(64);
    expectGood(await f.run(cdb.writeSame10(4, 3), { dataOut: Buffer.alloc(512, 0x5a) }));
    const d = (await f.run(cdb.read10(3, 5))).dataIn!;
    expect([d[0], d[512], d[1024], d[1535], d[2048]]).to.deep.equal([0, 0x5a, 0x5a, 0x5a, 0]);
    expectGood(await f.run(cdb.writeSame16(4n, 2, 0x08), { dataOut: Buffer.alloc(512) }));
    expect(statuses((await f.run(cdb.getLbaStatus(4n, 24))).dataIn!)[0]).to.deep.equal([4, 2, 1]);
    expect((await f.run(cdb.read10(6, 1))).dataIn![0]).to.equal(0x5a);
    // NDOB: no Data-Out, zeros
    expectGood(await f.run(cdb.writeSame16(6n, 1, 0x09), { dataOut: null, expectedLength: 0 }));
    expect((await f.run(cdb.read10(6, 1))).dataIn![0]).to.equal(0);
  });

  it('with zero blocks writes from the LBA to the end of the medium (WSNZ=0)', async () => {
    const f = fixture(64);
    const pattern = Buffer.alloc(512, 0x3c);
    expectGood(await f.run(cdb.writeSame10(60, 0), { dataOut: pattern }));
    const tail = (await f.run([0x28, 0, 0, 0, 0, 56, 0, 0, 8, 0], { expectedLength: 8 * 512 })).dataIn!;
    expect(tail.subarray(0, 4 * 512).every((b) => b === 0)).to.equal(true);
    expect(tail.subarray(4 * 512).every((b) => b === 0x3c)).to.equal(true);
  });

  it('with UNMAP on a thin LU deallocates even when the pattern is not zero (LBPRZ: reads zeros)', async () => {
    const f = fixture(64, { thin: true });
    expectGood(await f.run([0x2a, 0, 0, 0, 0, 60, 0, 0, 4, 0], { dataOut: Buffer.alloc(4 * 512, 0xff) }));
    expectGood(await f.run([0x41, 0x08, 0, 0, 0, 60, 0, 0, 0, 0], { dataOut: Buffer.alloc(512, 0xff) }));
    const tail = (await f.run([0x28, 0, 0, 0, 0, 60, 0, 0, 4, 0], { expectedLength: 4 * 512 })).dataIn!;
    expect(tail.every((b) => b === 0)).to.equal(true);
  });

  it('rejects bad Data-Out sizes, ANCHOR and ranges beyond the end', async () => {
    const f = fixture(64);
    expectSense(await f.run(cdb.writeSame10(65, 0), { dataOut: Buffer.alloc(512) }), 0x5, 0x21, 0x00);
    expectSense(await f.run(cdb.writeSame10(0xffffffff, 0), { dataOut: Buffer.alloc(512) }), 0x5, 0x21, 0x00);
    expectSense(await f.run(cdb.writeSame10(60, 8), { dataOut: Buffer.alloc(512) }), 0x5, 0x21, 0x00);
    expectSense(await f.run(cdb.writeSame10(0, 1, true), { dataOut: Buffer.alloc(256) }), 0x5, 0x24, 0x00);
    expectSense(await f.run(cdb.writeSame10(0, 1, true), { dataOut: Buffer.alloc(1024) }), 0x5, 0x24, 0x00);
    expectSense(await f.run([0x41, 0x18, 0, 0, 0, 0, 0, 0, 1, 0], { dataOut: Buffer.alloc(512) }), 0x5, 0x24, 0x00);
  });
});
