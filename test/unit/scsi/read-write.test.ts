import { expect } from 'chai';
import { cdb, expectGood, expectSense, fixture, senseOf } from './helpers.js';

const block = (fill: number, n = 1) => Buffer.alloc(512 * n, fill);

describe('READ / WRITE', () => {
  it('writes and reads back through every CDB size', async () => {
    const f = fixture();
    expectGood(await f.run(cdb.write10(10, 2), { dataOut: Buffer.concat([block(0xa1), block(0xa2)]) }));
    expectGood(await f.run([0x0a, 0, 0, 12, 1, 0], { dataOut: block(0xa3) })); // WRITE(6)
    expectGood(await f.run([0xaa, 0, 0, 0, 0, 13, 0, 0, 0, 1, 0, 0], { dataOut: block(0xa4) })); // WRITE(12)
    expectGood(await f.run(cdb.write16(14n, 1), { dataOut: block(0xa5) }));
    const r10 = await f.run(cdb.read10(10, 5));
    expectGood(r10);
    expect([0, 1, 2, 3, 4].map((i) => r10.dataIn![i * 512])).to.deep.equal([0xa1, 0xa2, 0xa3, 0xa4, 0xa5]);
    const r6 = await f.run(cdb.read6(12, 1));
    expect(r6.dataIn![511]).to.equal(0xa3);
    const r12 = await f.run([0xa8, 0, 0, 0, 0, 13, 0, 0, 0, 1, 0, 0]);
    expect(r12.dataIn![0]).to.equal(0xa4);
    const r16 = await f.run(cdb.read16(14n, 1));
    expect(r16.dataIn![0]).to.equal(0xa5);
  });

  it('READ(6) with length 0 transfers 256 blocks; READ(10) with 0 transfers nothing', async () => {
    const f = fixture();
    const r6 = await f.run(cdb.read6(0, 0));
    expectGood(r6);
    expect(r6.dataIn!.length).to.equal(256 * 512);
    const r10 = await f.run(cdb.read10(0, 0));
    expectGood(r10);
    expect(r10.dataIn).to.equal(undefined);
  });

  it('checks LBA ranges, including 64-bit overflow', async () => {
    const f = fixture(2048);
    expectGood(await f.run(cdb.read10(2047, 1)));
    expectSense(await f.run(cdb.read10(2047, 2)), 0x5, 0x21, 0x00);
    expectSense(await f.run(cdb.read10(2049, 0)), 0x5, 0x21, 0x00);
    expectSense(await f.run(cdb.read10(0xffffffff, 1)), 0x5, 0x21, 0x00);
    expectSense(await f.run(cdb.read16(0xffffffffffffffffn, 1)), 0x5, 0x21, 0x00);
    expectSense(await f.run(cdb.read16(0x8000000000000000n, 1)), 0x5, 0x21, 0x00);
    expectSense(await f.run(cdb.write16(0xffffffffffffffffn, 1), { dataOut: block(1) }), 0x5, 0x21, 0x00);
    expectSense(await f.run(cdb.read6(2040, 16)), 0x5, 0x21, 0x00);
  });

  it('rejects a transfer beyond the maximum transfer length and protection fields', async () => {
    const f = fixture(1 << 17);
    expectSense(await f.run(cdb.read16(0n, 65537)), 0x5, 0x24, 0x00);
    expectSense(await f.run(cdb.read10(0, 1, 0x20)), 0x5, 0x24, 0x00); // RDPROTECT=1
    expectSense(await f.run(cdb.write10(0, 1, 0x20), { dataOut: block(1) }), 0x5, 0x24, 0x00);
    expectGood(await f.run(cdb.read10(0, 1, 0x18))); // DPO + FUA accepted
  });

  it('writes only the whole blocks received when Data-Out is short, and reports the CDB length', async () => {
    const f = fixture();
    expectGood(await f.run(cdb.write10(0, 2), { dataOut: block(0x61, 2) }));
    const r = await f.run(cdb.write10(0, 2), { dataOut: block(0x62, 1), expectedLength: 512 });
    expectGood(r);
    expect(r.dataOutLength).to.equal(1024);
    const back = (await f.run(cdb.read10(0, 2))).dataIn!;
    expect([back[0], back[511], back[512], back[1023]]).to.deep.equal([0x62, 0x62, 0x61, 0x61]);
    // less than one block: nothing written
    const r2 = await f.run(cdb.write10(1, 1), { dataOut: Buffer.alloc(200, 0x63), expectedLength: 200 });
    expectGood(r2);
    expect((await f.run(cdb.read10(1, 1))).dataIn![0]).to.equal(0x61);
    // no Data-Out at all
    expectGood(await f.run(cdb.write10(1, 1), { dataOut: null, expectedLength: 0 }));
    // more than asked for: only the CDB's blocks
    expectGood(await f.run(cdb.write10(0, 1), { dataOut: block(0x64, 2) }));
    const back2 = (await f.run(cdb.read10(0, 2))).dataIn!;
    expect([back2[0], back2[512]]).to.deep.equal([0x64, 0x61]);
  });

  it('FUA, and WCE=0, make writes durable before status', async () => {
    const f = fixture();
    await f.run(cdb.write10(0, 1), { dataOut: block(1) });
    expect(f.dev.stats.fuaWrites).to.equal(0);
    await f.run(cdb.write10(0, 1, 0x08), { dataOut: block(1) });
    expect(f.dev.stats.fuaWrites).to.equal(1);
    f.target.lu(0)!.mode.setWriteCache(false);
    await f.run(cdb.write10(0, 1), { dataOut: block(1) });
    expect(f.dev.stats.fuaWrites).to.equal(2);
  });

  it('SYNCHRONIZE CACHE flushes; PRE-FETCH checks the range', async () => {
    const f = fixture(100);
    expectGood(await f.run([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    expect(f.dev.stats.flushes).to.equal(1);
    expectSense(await f.run([0x35, 0, 0, 0, 0, 200, 0, 0, 1, 0]), 0x5, 0x21, 0x00);
    expectGood(await f.run([0x34, 0, 0, 0, 0, 10, 0, 0, 10, 0]));
    expectSense(await f.run([0x34, 0, 0, 0, 0, 99, 0, 0, 2, 0]), 0x5, 0x21, 0x00);
  });
});

describe('VERIFY / WRITE AND VERIFY', () => {
  it('BYTCHK=1 reports a miscompare with the byte offset in INFORMATION', async () => {
    const f = fixture();
    await f.run(cdb.write10(4, 2), { dataOut: block(0x11, 2) });
    expectGood(await f.run(cdb.verify10(4, 2, 1), { dataOut: block(0x11, 2) }));
    const wrong = block(0x11, 2);
    wrong[700] = 0x12;
    const r = await f.run(cdb.verify10(4, 2, 1), { dataOut: wrong });
    expectSense(r, 0xe, 0x1d, 0x00);
    expect(senseOf(r).info).to.equal(700n);
  });

  it('BYTCHK=3 compares one block against every block; BYTCHK=0 only reads', async () => {
    const f = fixture();
    await f.run(cdb.write10(0, 3), { dataOut: block(0x22, 3) });
    expectGood(await f.run(cdb.verify10(0, 3, 3), { dataOut: block(0x22) }));
    await f.run(cdb.write10(2, 1), { dataOut: block(0x23) });
    const r = await f.run(cdb.verify10(0, 3, 3), { dataOut: block(0x22) });
    expect(senseOf(r).info).to.equal(1024n);
    expectGood(await f.run(cdb.verify10(0, 3, 0)));
    expectSense(await f.run(cdb.verify10(0, 3, 2)), 0x5, 0x24, 0x00);
  });

  it('WRITE AND VERIFY writes with FUA', async () => {
    const f = fixture();
    expectGood(await f.run([0x2e, 0x02, 0, 0, 0, 5, 0, 0, 1, 0], { dataOut: block(0x33) }));
    expect(f.dev.stats.fuaWrites).to.equal(1);
    expect((await f.run(cdb.read10(5, 1))).dataIn![0]).to.equal(0x33);
  });
});

describe('COMPARE AND WRITE / ORWRITE / WRITE ATOMIC', () => {
  it('writes on a match and reports the miscompare offset otherwise', async () => {
    const f = fixture();
    await f.run(cdb.write10(8, 1), { dataOut: block(0x41) });
    expectGood(await f.run(cdb.caw(8n, 1), { dataOut: Buffer.concat([block(0x41), block(0x42)]) }));
    expect((await f.run(cdb.read10(8, 1))).dataIn![0]).to.equal(0x42);
    const verifyPart = block(0x42);
    verifyPart[37] = 0;
    const r = await f.run(cdb.caw(8n, 1), { dataOut: Buffer.concat([verifyPart, block(0x43)]) });
    expectSense(r, 0xe, 0x1d, 0x00);
    expect(senseOf(r).info).to.equal(37n);
    expect((await f.run(cdb.read10(8, 1))).dataIn![0]).to.equal(0x42);
  });

  it('rejects Data-Out that is not exactly two halves, and lengths above the VPD limit', async () => {
    const f = fixture();
    expectSense(await f.run(cdb.caw(0n, 1), { dataOut: block(0, 4) }), 0x5, 0x24, 0x00);
    expectSense(await f.run(cdb.caw(0n, 3), { dataOut: block(0, 4) }), 0x5, 0x24, 0x00);
    expectSense(await f.run(cdb.caw(0n, 65), { dataOut: block(0, 130) }), 0x5, 0x24, 0x00);
    expectSense(await f.run(cdb.caw(2048n, 1), { dataOut: block(0, 2) }), 0x5, 0x21, 0x00);
    // NUMBER OF LOGICAL BLOCKS 0 (e.g. 256 truncated to a byte) with Data-Out attached
    expectSense(await f.run(cdb.caw(0n, 0), { dataOut: block(0, 512) }), 0x5, 0x24, 0x00);
    expectGood(await f.run(cdb.caw(0n, 0), { dataOut: null, expectedLength: 0 }));
  });

  it('ORWRITE ors the data into the medium', async () => {
    const f = fixture();
    await f.run(cdb.write10(3, 1), { dataOut: block(0x0f) });
    expectGood(await f.run([0x8b, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0], { dataOut: block(0xf0) }));
    expect((await f.run(cdb.read10(3, 1))).dataIn![100]).to.equal(0xff);
  });

  it('WRITE ATOMIC writes within the atomic limits only', async () => {
    const f = fixture(8192);
    expectGood(await f.run([0x9c, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0], { dataOut: block(0x55) }));
    expect((await f.run(cdb.read10(7, 1))).dataIn![0]).to.equal(0x55);
    expectSense(await f.run([0x9c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x01, 0, 0], { dataOut: block(0, 2049) }), 0x5, 0x24, 0x00);
    expectSense(await f.run([0x9c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0], { dataOut: block(0) }), 0x5, 0x24, 0x00);
  });
});
