import { expect } from 'chai';
import { COMMANDS } from '../../../src/scsi/commands.js';
import { cdb, expectGood, expectSense, fixture } from './helpers.js';

describe('REPORT SUPPORTED OPERATION CODES', () => {
  it('lists every command (option 0), with timeout descriptors under RCTD', async () => {
    const f = fixture();
    const r = await f.run(cdb.rsoc(0));
    expectGood(r);
    const d = r.dataIn!;
    expect(d.readUInt32BE(0)).to.equal(d.length - 4);
    expect((d.length - 4) / 8).to.equal(COMMANDS.length);
    // READ(10): opcode 28h, no service action, CDB length 10
    const at = [...Array(COMMANDS.length).keys()].map((i) => 4 + i * 8).find((o) => d[o] === 0x28)!;
    expect([...d.subarray(at, at + 8)]).to.deep.equal([0x28, 0, 0, 0, 0, 0x00, 0, 10]);
    // READ CAPACITY(16): SERVACTV
    const rc = [...Array(COMMANDS.length).keys()].map((i) => 4 + i * 8).find((o) => d[o] === 0x9e && d[o + 3] === 0x10)!;
    expect(d[rc + 5]).to.equal(0x01);

    const t = (await f.run(cdb.rsoc(0, 0, 0, true))).dataIn!;
    expect((t.length - 4) / 20).to.equal(COMMANDS.length);
    for (let off = 4; off < t.length; off += 20) {
      expect(t[off + 5]! & 0x02).to.equal(0x02); // CTDP
      expect(t.readUInt16BE(off + 8)).to.equal(0x0a);
    }
  });

  it('reports one command (options 1-3) with its CDB usage data', async () => {
    const f = fixture();
    const r = (await f.run(cdb.rsoc(1, 0x28))).dataIn!;
    expect([...r]).to.deep.equal([0, 0x03, 0, 10, 0x28, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x00]);
    const sa = (await f.run(cdb.rsoc(2, 0x9e, 0x10))).dataIn!;
    expect([sa[1], sa.readUInt16BE(2), sa[4], sa[5]]).to.deep.equal([0x03, 16, 0x9e, 0x10]);
    expectSense(await f.run(cdb.rsoc(1, 0x9e)), 0x5, 0x24, 0x00);
    expectSense(await f.run(cdb.rsoc(2, 0x28)), 0x5, 0x24, 0x00);
    expect([...(await f.run(cdb.rsoc(1, 0xc5))).dataIn!]).to.deep.equal([0, 0x01, 0, 0]);
    expect((await f.run(cdb.rsoc(3, 0x28))).dataIn![1]).to.equal(0x03);
    const withTimeouts = (await f.run(cdb.rsoc(1, 0x28, 0, true))).dataIn!;
    expect(withTimeouts.length).to.equal(4 + 10 + 12);
    expect(withTimeouts[1]).to.equal(0x83);
  });

  it('every row has CDB usage data starting with its opcode', () => {
    for (const c of COMMANDS) {
      expect(c.cdbUsage.length, c.name).to.equal(c.cdbLength);
      expect(c.cdbUsage[0], c.name).to.equal(c.opcode);
      if (c.serviceAction !== undefined) expect(c.cdbUsage[1]! & 0x1f, c.name).to.equal(c.serviceAction);
    }
  });
});

describe('REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS / REPORT TARGET PORT GROUPS / READ DEFECT DATA', () => {
  it('reports ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LUN RESET, TARGET RESET', async () => {
    const f = fixture();
    expect([...(await f.run(cdb.rstmf(false))).dataIn!]).to.deep.equal([0xda, 0, 0, 0]);
    const ext = (await f.run(cdb.rstmf(true))).dataIn!;
    expect(ext.length).to.equal(16);
    expect([ext[0], ext[3]]).to.deep.equal([0xda, 0x0c]);
  });

  it('reports the configured port group as active/optimized', async () => {
    const f = fixture();
    const r = (await f.run(cdb.rtpg(false))).dataIn!;
    expect([...r]).to.deep.equal([0, 0, 0, 12, 0x80, 0x01, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
    const e = (await f.run(cdb.rtpg(true))).dataIn!;
    expect([...e.subarray(0, 8)]).to.deep.equal([0, 0, 0, 16, 0x10, 0, 0, 0]);
  });

  it('returns an empty defect list', async () => {
    const f = fixture();
    expect([...(await f.run([0x37, 0, 0x0d, 0, 0, 0, 0, 0, 4, 0])).dataIn!]).to.deep.equal([0, 0x0d, 0, 0]);
    expect([...(await f.run([0xb7, 0x0d, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0])).dataIn!]).to.deep.equal([0, 0x0d, 0, 0, 0, 0, 0, 0]);
  });

  it('REPORT LUNS checks SELECT REPORT and the allocation length', async () => {
    const f = fixture();
    expectSense(await f.run(cdb.reportLuns(8)), 0x5, 0x24, 0x00);
    expectSense(await f.run(cdb.reportLuns(16, 7)), 0x5, 0x24, 0x00);
    expect([...(await f.run(cdb.reportLuns(16, 1))).dataIn!]).to.deep.equal([0, 0, 0, 0, 0, 0, 0, 0]);
  });
});

describe('what the command table tells the transport and the target', () => {
  it('only WRITE(10/12/16) hand their Data-Out buffer back (the transport pools those)', () => {
    const f = fixture();
    expect(COMMANDS.filter((c) => c.releasesDataOut).map((c) => c.opcode)).to.have.members([0x2a, 0xaa, 0x8a]);
    expect(f.target.releasesDataOut(Buffer.from([0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0]))).to.equal(true);
    expect(f.target.releasesDataOut(Buffer.from([0x0a, 0, 0, 0, 8, 0]))).to.equal(false);
    expect(f.target.releasesDataOut(Buffer.from([0x48, 0x01, 0, 0, 0, 0, 0, 0, 8, 0]))).to.equal(false);
    expect(f.target.releasesDataOut(Buffer.from([0xc5]))).to.equal(false);
  });

  it('only INQUIRY, REPORT LUNS and REQUEST SENSE are answered for a LUN that does not exist', () => {
    expect(COMMANDS.filter((c) => c.noLun).map((c) => c.opcode)).to.have.members([0x03, 0x12, 0xa0]);
  });
});
