import { expect } from 'chai';
import { cdb, expectGood, expectSense, fixture, nexusA, nexusB, senseOf } from './helpers.js';

/** Find a page (page code, subpage 0) in MODE SENSE(6) data. */
function page6(data: Buffer, code: number): Buffer | undefined {
  let off = 4 + data[3]!;
  while (off < data.length) {
    const spf = (data[off]! & 0x40) !== 0;
    const len = spf ? data.readUInt16BE(off + 2) + 4 : data[off + 1]! + 2;
    if ((data[off]! & 0x3f) === code && !spf) return data.subarray(off, off + len);
    off += len;
  }
  return undefined;
}

describe('MODE SENSE', () => {
  it('(6) all pages: header, short block descriptor, pages in order', async () => {
    const f = fixture(2048);
    const r = await f.run(cdb.modeSense6(0x3f));
    expectGood(r);
    const d = r.dataIn!;
    expect(d[0]).to.equal(d.length - 1);
    expect([d[1], d[2], d[3]]).to.deep.equal([0, 0x10, 8]); // DPOFUA, descriptor length 8
    expect([...d.subarray(4, 12)]).to.deep.equal([0, 0, 0x08, 0, 0, 0, 0x02, 0]);
    const codes: number[] = [];
    for (let off = 12; off < d.length; off += d[off + 1]! + 2) codes.push(d[off]! & 0x3f);
    expect(codes).to.deep.equal([0x01, 0x08, 0x0a, 0x1c]);
    expect(page6(d, 0x08)![2]! & 0x04).to.equal(0x04); // WCE
  });

  it('(6) honours the allocation length and DBD; subpages with 0x3f/0xff', async () => {
    const f = fixture();
    expect((await f.run(cdb.modeSense6(0x3f, { alloc: 4 }))).dataIn!.length).to.equal(4);
    const noDesc = (await f.run(cdb.modeSense6(0x0a, { dbd: true }))).dataIn!;
    expect(noDesc[3]).to.equal(0);
    expect([...noDesc.subarray(4, 6)]).to.deep.equal([0x0a, 0x0a]);
    const all = (await f.run(cdb.modeSense6(0x3f, { subpage: 0xff, dbd: true }))).dataIn!;
    expect(all.includes(Buffer.from([0x4a, 0x01, 0x00, 0x1c]))).to.equal(true);
    expectSense(await f.run(cdb.modeSense6(0x05)), 0x5, 0x24, 0x00);
    expectSense(await f.run(cdb.modeSense6(0x0a, { subpage: 0x07 })), 0x5, 0x24, 0x00);
  });

  it('(10) with LLBAA returns a long block descriptor', async () => {
    const f = fixture(2048);
    const d = (await f.run(cdb.modeSense10(0x08, { llbaa: true }))).dataIn!;
    expect(d.readUInt16BE(0)).to.equal(d.length - 2);
    expect([d[3], d[4], d.readUInt16BE(6)]).to.deep.equal([0x10, 0x01, 16]);
    expect(d.readBigUInt64BE(8)).to.equal(2048n);
    expect(d.readUInt32BE(20)).to.equal(512);
    expect(d[24]).to.equal(0x08);
  });

  it('page control: changeable masks, defaults, saved values not supported', async () => {
    const f = fixture();
    const ch = (await f.run(cdb.modeSense6(0x0a, { pc: 1, dbd: true }))).dataIn!;
    expect([...ch.subarray(4, 16)]).to.deep.equal([0x0a, 0x0a, 0x04, 0, 0x08, 0, 0, 0, 0, 0, 0, 0]);
    const caching = (await f.run(cdb.modeSense6(0x08, { pc: 1, dbd: true }))).dataIn!;
    expect(caching[6]).to.equal(0x04);
    expectSense(await f.run(cdb.modeSense6(0x3f, { pc: 3 })), 0x5, 0x39, 0x00);
  });
});

describe('MODE SELECT', () => {
  async function controlPage(f: ReturnType<typeof fixture>): Promise<Buffer> {
    const d = (await f.run(cdb.modeSense6(0x0a, { dbd: true }))).dataIn!;
    return Buffer.from(d.subarray(4, 16));
  }

  it('switches D_SENSE, changes the sense format, and tells the other nexus', async () => {
    const f = fixture();
    await f.run(cdb.tur(), { nexus: nexusA });
    await f.run(cdb.tur(), { nexus: nexusB });
    const page = await controlPage(f);
    page[2] = page[2]! | 0x04;
    const list = Buffer.concat([Buffer.from([0, 0, 0, 0]), page]);
    expectGood(await f.run(cdb.modeSelect6(list.length), { dataOut: list, nexus: nexusA }));
    expect((await controlPage(f))[2]! & 0x04).to.equal(0x04);
    const r = await f.run(cdb.read16(1n << 40n, 1), { nexus: nexusA });
    expect(senseOf(r).format).to.equal('descriptor');
    expectSense(r, 0x5, 0x21, 0x00);
    expect(senseOf(r).info).to.equal(1n << 40n);
    // B: MODE PARAMETERS CHANGED once, in descriptor format now
    const ua = await f.run(cdb.tur(), { nexus: nexusB });
    expectSense(ua, 0x6, 0x2a, 0x01);
    expect(senseOf(ua).format).to.equal('descriptor');
    expectGood(await f.run(cdb.tur(), { nexus: nexusB }));
    // back to fixed
    page[2] = page[2]! & ~0x04;
    expectGood(await f.run(cdb.modeSelect6(list.length), { dataOut: Buffer.concat([Buffer.from([0, 0, 0, 0]), page]), nexus: nexusA }));
    expect(senseOf(await f.run(cdb.read16(1n << 40n, 1))).format).to.equal('fixed');
  });

  it('SWP write-protects the medium for every nexus until cleared', async () => {
    const f = fixture();
    const page = await controlPage(f);
    page[4] = page[4]! | 0x08;
    expectGood(await f.run(cdb.modeSelect6(16), { dataOut: Buffer.concat([Buffer.from([0, 0, 0, 0]), page]), nexus: nexusB }));
    expectSense(await f.run(cdb.tur()), 0x6, 0x2a, 0x01); // A learns of B's change
    expect((await f.run(cdb.modeSense6(0x0a, { dbd: true }))).dataIn![2]! & 0x80).to.equal(0x80); // WP
    expectGood(await f.run(cdb.read10(0, 1)));
    expectSense(await f.run(cdb.write10(0, 1), { dataOut: Buffer.alloc(512) }), 0x7, 0x27, 0x02);
    page[4] = page[4]! & ~0x08;
    expectGood(await f.run(cdb.modeSelect6(16), { dataOut: Buffer.concat([Buffer.from([0, 0, 0, 0]), page]), nexus: nexusB }));
    expectSense(await f.run(cdb.write10(0, 1), { dataOut: Buffer.alloc(512) }), 0x6, 0x2a, 0x01);
    expectGood(await f.run(cdb.write10(0, 1), { dataOut: Buffer.alloc(512) }));
  });

  it('turns the write cache off (writes become FUA)', async () => {
    const f = fixture();
    const d = (await f.run(cdb.modeSense6(0x08, { dbd: true }))).dataIn!;
    const page = Buffer.from(d.subarray(4));
    page[2] = page[2]! & ~0x04;
    const list = Buffer.concat([Buffer.from([0, 0, 0, 0]), page]);
    expectGood(await f.run(cdb.modeSelect6(list.length), { dataOut: list }));
    await f.run(cdb.write10(0, 1), { dataOut: Buffer.alloc(512) });
    expect(f.dev.stats.fuaWrites).to.equal(1);
  });

  it('validates PF, SP, changeable bits, page lengths, block descriptors and list length', async () => {
    const f = fixture();
    const page = await controlPage(f);
    const list = (p: Buffer, hdr = [0, 0, 0, 0]) => Buffer.concat([Buffer.from(hdr), p]);
    expectSense(await f.run(cdb.modeSelect6(16, false), { dataOut: list(page) }), 0x5, 0x24, 0x00);
    expectSense(await f.run([0x15, 0x11, 0, 0, 16, 0], { dataOut: list(page) }), 0x5, 0x24, 0x00);
    const tas = Buffer.from(page);
    tas[5] = 0x40; // TAS is not changeable
    const r = await f.run(cdb.modeSelect6(16), { dataOut: list(tas) });
    expectSense(r, 0x5, 0x26, 0x00);
    expect(senseOf(r).sks).to.deep.equal([0x80 | 0x08 | 6, 0, 9]); // parameter list byte 9 bit 6
    const badLen = Buffer.from(page);
    badLen[1] = 0x0b;
    expectSense(await f.run(cdb.modeSelect6(16), { dataOut: list(badLen) }), 0x5, 0x26, 0x00);
    const ps = Buffer.from(page);
    ps[0] = 0x8a;
    expectSense(await f.run(cdb.modeSelect6(16), { dataOut: list(ps) }), 0x5, 0x26, 0x00);
    expectSense(await f.run(cdb.modeSelect6(40), { dataOut: list(page) }), 0x5, 0x1a, 0x00);
    const desc = Buffer.from([0, 0, 0, 0, 0, 0, 0x10, 0]); // block length 4096
    expectSense(await f.run(cdb.modeSelect6(24), { dataOut: Buffer.concat([Buffer.from([0, 0, 0, 8]), desc, page]) }), 0x5, 0x26, 0x00);
    expectGood(await f.run(cdb.modeSelect6(0)));
  });
});
