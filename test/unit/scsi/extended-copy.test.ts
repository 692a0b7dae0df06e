import { expect } from 'chai';
import { MemoryBlockDevice } from '../../../src/blockdev/memory-device.js';
import { extendedCopy, receiveCopyResults, thirdPartyCopyVpd } from '../../../src/scsi/extended-copy.js';
import { Reservations } from '../../../src/scsi/reservations.js';
import { FakeLu, FakeTarget, exec, nexus, spec } from './fake-lu.js';

const XCOPY = spec('EXTENDED COPY', extendedCopy, 'write', true);
const RCR = spec('RECEIVE COPY RESULTS', receiveCopyResults);
const i1 = nexus('iqn.2007-10.test:one', 1);
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

// Parameter list builders written from SPC-4 6.4 (as libiscsi's test-tool lays them out).
function cscd(lu: FakeLu, opts: { luIdType?: number; nul?: boolean; type?: number; blockSize?: number } = {}): Buffer {
  const d = Buffer.alloc(32);
  d[0] = opts.type ?? 0xe4;
  d[1] = ((opts.luIdType ?? 0) << 6) | (opts.nul ? 0x20 : 0);
  d[4] = 0x01; // binary code set
  d[5] = 0x03; // association LU, designator type NAA
  d[7] = 16;
  lu.identity.naa.copy(d, 8);
  d.writeUIntBE(opts.blockSize ?? lu.device.blockSize, 29, 3);
  return d;
}

function b2b(src: number, dst: number, blocks: number, srcLba: number, dstLba: number): Buffer {
  const d = Buffer.alloc(28);
  d[0] = 0x02;
  d.writeUInt16BE(0x18, 2);
  d.writeUInt16BE(src, 4);
  d.writeUInt16BE(dst, 6);
  d.writeUInt16BE(blocks, 10);
  d.writeBigUInt64BE(BigInt(srcLba), 12);
  d.writeBigUInt64BE(BigInt(dstLba), 20);
  return d;
}

function segHeader(type: number, len: number): Buffer {
  const d = Buffer.alloc(len);
  d[0] = type;
  d.writeUInt16BE(len - 4, 2);
  return d;
}

function paramList(listId: number, usage: number, cscds: Buffer[], segs: Buffer[]): Buffer {
  const t = Buffer.concat(cscds);
  const s = Buffer.concat(segs);
  const h = Buffer.alloc(16);
  h[0] = listId;
  h[1] = usage << 3;
  h.writeUInt16BE(t.length, 2);
  h.writeUInt32BE(s.length, 8);
  return Buffer.concat([h, t, s]);
}

function xcopyCdb(len: number): Buffer {
  const c = Buffer.alloc(16);
  c[0] = 0x83;
  c.writeUInt32BE(len, 10);
  return c;
}

function rcrCdb(sa: number, listId: number, alloc = 1024): Buffer {
  const c = Buffer.alloc(16);
  c[0] = 0x84;
  c[1] = sa;
  c[2] = listId;
  c.writeUInt32BE(alloc, 10);
  return c;
}

describe('EXTENDED COPY (LID1)', () => {
  let target: FakeTarget;
  let lu: FakeLu;
  const N = 8192;
  beforeEach(() => {
    target = new FakeTarget();
    lu = new FakeLu(target, 0, new MemoryBlockDevice(N));
  });
  const run = (p: Buffer, len = p.length) => exec(lu, i1, xcopyCdb(len), XCOPY, p.subarray(0, len));

  it('copies 2048 blocks from the start to the end of the LUN (libiscsi ExtendedCopy.Simple)', async () => {
    const a = Buffer.alloc(2048 * 512, 'A');
    await lu.device.write(0, a);
    const r = await run(paramList(1, 2, [cscd(lu)], [b2b(0, 0, 2048, 0, N - 2048)]));
    expect(r.status).to.equal(0);
    expect((await lu.device.read(N - 2048, 2048)).equals(a)).to.equal(true);
    // LIST ID USAGE 10b: nothing is held for RECEIVE COPY RESULTS
    expect((await exec(lu, i1, rcrCdb(0, 1), RCR)).sense).to.deep.include({ key: 5, asc: 0x24, ascq: 0 });
  });

  it('copies between two LUs of the target found by NAA designator', async () => {
    const other = new FakeLu(target, 1, new MemoryBlockDevice(N));
    const data = Buffer.alloc(16 * 512);
    for (let i = 0; i < data.length; i++) data[i] = i % 251;
    await lu.device.write(100, data);
    const r = await run(paramList(0, 3, [cscd(lu), cscd(other)], [b2b(0, 1, 16, 100, 7)]));
    expect(r.status).to.equal(0);
    expect((await other.device.read(7, 16)).equals(data)).to.equal(true);
  });

  it('copies overlapping ranges on one LU as if through a buffer', async () => {
    const data = Buffer.alloc(3000 * 512);
    for (let i = 0; i < 3000; i++) data.fill(i & 0xff, i * 512, (i + 1) * 512);
    await lu.device.write(0, data);
    expect((await run(paramList(0, 3, [cscd(lu)], [b2b(0, 0, 3000, 0, 1000)]))).status).to.equal(0);
    expect((await lu.device.read(1000, 3000)).equals(data)).to.equal(true);
  });

  it('checks the parameter list length (libiscsi ExtendedCopy.ParamHdr)', async () => {
    const p = paramList(1, 0, [cscd(lu)], [b2b(0, 0, 2048, 0, N - 2048)]);
    expect((await run(p, 16 + 32 - 1)).sense).to.deep.include({ key: 5, asc: 0x1a, ascq: 0 });
    expect((await run(p, 16 + 32 + 28 - 1)).sense).to.deep.include({ key: 5, asc: 0x1a, ascq: 0 });
    expect((await exec(lu, i1, xcopyCdb(0), XCOPY, null)).status).to.equal(0);
    expect((await run(p, 8)).sense).to.deep.include({ key: 5, asc: 0x1a });
  });

  it('enforces the descriptor limits it reports (libiscsi ExtendedCopy.DescrLimits)', async () => {
    const op = (await exec(lu, i1, rcrCdb(3, 0), RCR)).data!;
    const maxT = op.readUInt16BE(8);
    const maxS = op.readUInt16BE(10);
    const maxLen = op.readUInt32BE(12);
    const tooManyT = paramList(1, 0, Array.from({ length: maxT + 1 }, () => cscd(lu)), [b2b(0, 0, 1, 0, 1)]);
    expect((await run(tooManyT)).sense).to.deep.include({ key: 5, asc: 0x26, ascq: 0x06 });
    const tooManyS = paramList(2, 0, [cscd(lu)], Array.from({ length: maxS + 1 }, () => b2b(0, 0, 1, 0, 1)));
    expect((await run(tooManyS)).sense).to.deep.include({ key: 5, asc: 0x26, ascq: 0x08 });
    const both = paramList(3, 0, Array.from({ length: maxT + 1 }, () => cscd(lu)), Array.from({ length: maxS + 1 }, () => b2b(0, 0, 1, 0, 1)));
    expect(both.length - 16).to.be.greaterThan(maxLen);
    expect((await run(both)).sense).to.deep.include({ key: 5, asc: 0x1a, ascq: 0 });
  });

  it('rejects unsupported descriptor types (libiscsi ExtendedCopy.DescrType)', async () => {
    expect((await run(paramList(1, 0, [cscd(lu, { type: 0xe0 })], [b2b(0, 0, 1, 0, 1)]))).sense).to.deep.include({ key: 5, asc: 0x26, ascq: 0x07 });
    expect((await run(paramList(1, 0, [cscd(lu)], [segHeader(0x03, 0x14)]))).sense).to.deep.include({ key: 5, asc: 0x26, ascq: 0x09 });
  });

  it('validates CSCD descriptors (libiscsi ExtendedCopy.ValidTgtDescr)', async () => {
    // A reserved LU ID TYPE is ignored (SPC-4): the copy runs.
    expect((await run(paramList(1, 0, [cscd(lu, { luIdType: 2 })], [b2b(0, 0, 1, 0, 1)]))).status).to.equal(0);
    expect((await run(paramList(1, 0, [cscd(lu, { nul: true })], [b2b(0, 0, 1, 0, 1)]))).sense).to.deep.include({ key: 0x0a, asc: 0x08, ascq: 0x04 });
    expect((await run(paramList(1, 0, [cscd(lu, { blockSize: 4096 })], [b2b(0, 0, 1, 0, 1)]))).sense).to.deep.include({ key: 5, asc: 0x26 });
    const stranger = new FakeLu(new FakeTarget(), 5);
    expect((await run(paramList(1, 0, [cscd(stranger)], [b2b(0, 0, 1, 0, 1)]))).sense).to.deep.include({ key: 0x0a, asc: 0x08, ascq: 0x04 });
  });

  it('validates segment descriptors before moving data (libiscsi ExtendedCopy.ValidSegDescr)', async () => {
    expect((await run(paramList(1, 0, [cscd(lu)], [b2b(0, 1, 2048, 0, N - 2048)]))).sense).to.deep.include({ key: 0x0a, asc: 0x08, ascq: 0x04 });
    await lu.device.write(0, Buffer.alloc(512, 1));
    const r = await run(paramList(1, 0, [cscd(lu)], [b2b(0, 0, 1, 0, 0), b2b(0, 0, 2048, 0, N - 1)]));
    expect(r.sense).to.deep.include({ key: 0x0a, asc: 0x0d, ascq: 0x02 });
    // nothing was held for a list that never started
    expect((await exec(lu, i1, rcrCdb(0, 1), RCR)).sense).to.deep.include({ key: 5, asc: 0x24 });
  });

  it('reports COPY STATUS for a held list identifier (libiscsi ReceiveCopyResults.CopyStatus)', async () => {
    expect((await exec(lu, i1, rcrCdb(0, 1), RCR)).sense).to.deep.include({ key: 5, asc: 0x24, ascq: 0 });
    expect((await run(paramList(1, 0, [cscd(lu)], [b2b(0, 0, 2048, 0, N - 2048)]))).status).to.equal(0);
    const r = await exec(lu, i1, rcrCdb(0, 1), RCR);
    expect(r.data).to.deep.equal(hex('00000008 01 0001 00 00100000'));
    // list identifiers are per I_T nexus
    expect((await exec(lu, nexus('iqn.2007-10.test:two', 2), rcrCdb(0, 1), RCR)).sense).to.deep.include({ key: 5, asc: 0x24 });
    expect((await exec(lu, i1, rcrCdb(4, 1), RCR)).data).to.deep.equal(Buffer.concat([hex('00000038'), Buffer.alloc(56)]));
  });

  it('ends with COPY ABORTED on a device error and keeps the failed segment details', async () => {
    const dev = new MemoryBlockDevice(N);
    lu = new FakeLu(target, 0, dev);
    dev.injectFault('read', 'read-error', 12);
    const r = await run(paramList(9, 0, [cscd(lu)], [b2b(0, 0, 8, 0, 100)]));
    expect(r.sense).to.deep.include({ key: 0x0a, asc: 0x0d, ascq: 0x01 });
    expect((await exec(lu, i1, rcrCdb(0, 9), RCR)).data).to.deep.equal(hex('00000008 02 0000 00 00000000'));
    const fsd = (await exec(lu, i1, rcrCdb(4, 9), RCR)).data!;
    expect(fsd[56]).to.equal(0x02);
    expect(fsd.readUInt16BE(58)).to.equal(18);
    expect([fsd[60 + 2], fsd[60 + 12], fsd[60 + 13]]).to.deep.equal([0x0a, 0x0d, 0x01]);
  });

  it('respects reservations and write protection of the other LU', async () => {
    const other = new FakeLu(target, 1, new MemoryBlockDevice(N), new Reservations());
    other.reservations.onReset();
    // another nexus holds an SPC-2 reservation on the destination
    (other.reservations as Reservations).reserveSpc2(nexus('iqn.2007-10.test:two', 2));
    expect((await run(paramList(0, 3, [cscd(lu), cscd(other)], [b2b(0, 1, 1, 0, 0)]))).status).to.equal(0x18);
    other.reservations.onReset();
    other.readOnly = true;
    expect((await run(paramList(0, 3, [cscd(lu), cscd(other)], [b2b(0, 1, 1, 0, 0)]))).sense).to.deep.include({ key: 0x0a, asc: 0x27 });
  });

  it('rejects LID4 and unknown RECEIVE COPY RESULTS service actions', async () => {
    const c = xcopyCdb(0);
    c[1] = 0x01;
    expect((await exec(lu, i1, c, XCOPY)).sense).to.deep.include({ key: 5, asc: 0x24 });
    expect((await exec(lu, i1, rcrCdb(0x01, 0), RCR)).sense).to.deep.include({ key: 5, asc: 0x24 });
    expect((await exec(lu, i1, rcrCdb(0x07, 0), RCR)).sense).to.deep.include({ key: 5, asc: 0x24 });
  });

  it('reports OPERATING PARAMETERS', async () => {
    const r = await exec(lu, i1, rcrCdb(3, 0), RCR);
    expect(r.data).to.deep.equal(
      hex(`0000002a 01 000000 0008 0040 00000800 10000000 00000000 00000000 00000000 0000 0010 10 09 00 00 000000 02 02e4`),
    );
    expect((await exec(lu, i1, rcrCdb(3, 0, 8), RCR)).data).to.deep.equal(hex('0000002a 01000000'));
  });

  it('builds VPD page 0x8F with the LID1 descriptors', () => {
    expect(thirdPartyCopyVpd(lu)).to.deep.equal(
      hex(
        '00 8f 0064' +
          // supported commands: 0x83 {00}, 0x84 {00 03 04}
          '0000 000c 08 83 01 00 84 03 00 03 04 000000' +
          // parameter data
          '0004 001c 00000000 0008 0040 00000800 00000000 000000000000000000000000' +
          // supported descriptors: block-to-block, identification CSCD
          '0008 0004 02 02 e4 00' +
          // supported CSCD IDs: none
          '000c 0004 0000 0000' +
          // general copy operations
          '8001 0020 00000010 00000010 10000000 09 00 000000000000000000000000000000000000',
      ),
    );
  });
});
