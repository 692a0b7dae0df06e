import { expect } from 'chai';
import { cdb, expectGood, expectSense, fixture, nexusA } from './helpers.js';

describe('INQUIRY', () => {
  it('returns standard data: SPC-4, HiSup, TPGS implicit, CmdQue, version descriptors', async () => {
    const f = fixture();
    const r = await f.run(cdb.inquiry(false, 0, 260));
    expectGood(r);
    const d = r.dataIn!;
    expect(d.length).to.equal(96);
    expect([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]).to.deep.equal([0x00, 0x00, 0x06, 0x12, 91, 0x18, 0x00, 0x02]); // TPGS=01b, 3PC
    expect(d.subarray(8, 16).toString('ascii')).to.equal('TABULA  ');
    expect(d.subarray(16, 32).toString('ascii')).to.equal('VDISK           ');
    expect([...d.subarray(58, 66)]).to.deep.equal([0x00, 0xa0, 0x04, 0x60, 0x04, 0xc0, 0x09, 0x60]);
  });

  it('clips to the allocation length and rejects CMDDT, page code without EVPD, unknown pages', async () => {
    const f = fixture();
    const r = await f.run(cdb.inquiry(false, 0, 5));
    expectGood(r);
    expect(r.dataIn!.length).to.equal(5);
    expectSense(await f.run([0x12, 0x02, 0, 0, 255, 0]), 0x5, 0x24, 0x00);
    expectSense(await f.run(cdb.inquiry(false, 0x80)), 0x5, 0x24, 0x00);
    expectSense(await f.run(cdb.inquiry(true, 0x42)), 0x5, 0x24, 0x00);
  });

  it('lists the supported VPD pages in order', async () => {
    const f = fixture();
    const r = await f.run(cdb.inquiry(true, 0x00));
    expectGood(r);
    expect([...r.dataIn!]).to.deep.equal([0, 0, 0, 8, 0x00, 0x80, 0x83, 0x86, 0x8f, 0xb0, 0xb1, 0xb2]);
    const tpc = await f.run(cdb.inquiry(true, 0x8f));
    expectGood(tpc);
    expect(tpc.dataIn![1]).to.equal(0x8f);
  });

  it('serial and NAA come from the LUN id and are stable', async () => {
    const a = fixture();
    const b = fixture();
    const sa = (await a.run(cdb.inquiry(true, 0x80))).dataIn!;
    const sb = (await b.run(cdb.inquiry(true, 0x80))).dataIn!;
    expect(sa.equals(sb)).to.equal(true);
    expect(sa.readUInt16BE(2)).to.equal(32);
    expect(/^[0-9a-f]{32}$/.test(sa.subarray(4).toString('ascii'))).to.equal(true);
  });

  it('VPD 0x83 names the LU (NAA 6), the target port, its relative id and group, and the target', async () => {
    const f = fixture();
    const d = (await f.run(cdb.inquiry(true, 0x83), { nexus: nexusA })).dataIn!;
    expect(d[1]).to.equal(0x83);
    expect(d.readUInt16BE(2)).to.equal(d.length - 4);
    const descs: Array<{ b0: number; b1: number; value: Buffer }> = [];
    for (let off = 4; off < d.length; off += 4 + d[off + 3]!) descs.push({ b0: d[off]!, b1: d[off + 1]!, value: d.subarray(off + 4, off + 4 + d[off + 3]!) });
    expect(descs.map((x) => [x.b0, x.b1])).to.deep.equal([
      [0x01, 0x03], // binary, LU, NAA
      [0x53, 0x98], // iSCSI UTF-8, PIV, target port, SCSI name
      [0x51, 0x94], // relative target port
      [0x51, 0x95], // target port group
      [0x53, 0xa8], // target device name
    ]);
    expect(descs[0]!.value.length).to.equal(16);
    expect(descs[0]!.value[0]! >> 4).to.equal(6);
    expect(descs[1]!.value.toString('utf8').replace(/\0+$/, '')).to.equal('iqn.2026-11.org.tabula:test,t,0x0001');
    expect(descs[1]!.value.length % 4).to.equal(0);
    expect([...descs[2]!.value]).to.deep.equal([0, 0, 0, 1]);
    expect([...descs[3]!.value]).to.deep.equal([0, 0, 0, 1]);
    expect(descs[4]!.value.toString('utf8').replace(/\0+$/, '')).to.equal('iqn.2026-11.org.tabula:test');
  });

  it('VPD 0xB0, 0xB1, 0xB2 describe a thin, non-rotating device', async () => {
    const f = fixture();
    const bl = (await f.run(cdb.inquiry(true, 0xb0, 64))).dataIn!;
    expect(bl.length).to.equal(64);
    expect(bl[3]).to.equal(0x3c);
    expect(bl[4]).to.equal(0x00); // WSNZ=0: zero blocks means to the end
    expect(bl[5]).to.equal(64); // max COMPARE AND WRITE
    expect(bl.readUInt32BE(8)).to.equal(65536); // max transfer
    expect(bl.readUInt32BE(20)).to.be.greaterThan(0).and.at.most(1 << 20); // max unmap LBA count
    expect(bl.readUInt32BE(24)).to.equal(256); // max unmap descriptors
    expect(bl.readUInt32BE(44)).to.equal((1 << 20) / 512); // max atomic transfer length
    const bdc = (await f.run(cdb.inquiry(true, 0xb1))).dataIn!;
    expect(bdc.readUInt16BE(4)).to.equal(1);
    expect(bdc[7]).to.equal(0x40); // WABEREQ=01b
    const lbp = (await f.run(cdb.inquiry(true, 0xb2))).dataIn!;
    expect([...lbp]).to.deep.equal([0, 0xb2, 0, 4, 0, 0xe4, 0x02, 0]);
  });

  it('a thick device reports no UNMAP limits and no LBPU', async () => {
    const f = fixture(64, { thin: false });
    const bl = (await f.run(cdb.inquiry(true, 0xb0, 64))).dataIn!;
    expect(bl.readUInt32BE(20)).to.equal(0);
    expect(bl.readUInt32BE(24)).to.equal(0);
    const lbp = (await f.run(cdb.inquiry(true, 0xb2))).dataIn!;
    expect(lbp[5]! & 0x80).to.equal(0);
    const rc = (await f.run(cdb.readCap16())).dataIn!;
    expect(rc[14]! & 0x80).to.equal(0);
  });
});

describe('READ CAPACITY', () => {
  it('(10) returns the last LBA and block size', async () => {
    const f = fixture(2048);
    const r = await f.run(cdb.readCap10());
    expect([...r.dataIn!]).to.deep.equal([0, 0, 0x07, 0xff, 0, 0, 0x02, 0x00]);
  });

  it('(10) reports 0xFFFFFFFF when the capacity does not fit', async () => {
    const f = fixture(16);
    f.dev.resize(0x1_0000_0001);
    await f.run(cdb.tur()); // consumes CAPACITY DATA HAS CHANGED
    const r = await f.run(cdb.readCap10());
    expectGood(r);
    expect(r.dataIn!.readUInt32BE(0)).to.equal(0xffffffff);
  });

  it('(16) reports LBPME and LBPRZ for a thin device and honours the allocation length', async () => {
    const f = fixture(2048);
    const r = await f.run(cdb.readCap16());
    expect([...r.dataIn!.subarray(0, 16)]).to.deep.equal([0, 0, 0, 0, 0, 0, 0x07, 0xff, 0, 0, 0x02, 0, 0, 0, 0xc0, 0]);
    expect((await f.run(cdb.readCap16(12))).dataIn!.length).to.equal(12);
  });
});
