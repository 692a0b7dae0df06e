import { expect } from 'chai';
import { MemoryBlockDevice } from '../../../src/blockdev/memory-device.js';
import { sanitize, sanitizeInProgress, setSanitizeRate } from '../../../src/scsi/sanitize.js';
import { TaskAttribute } from '../../../src/scsi/port.js';
import { FakeLu, FakeTarget, exec, nexus, spec } from './fake-lu.js';

const SANITIZE = spec('SANITIZE', sanitize, 'write', true);
const i1 = nexus('iqn.2007-10.test:one', 1);

function cdb(sa: number, paramLen = 0, opts: { immed?: boolean; ause?: boolean } = {}): Buffer {
  const c = Buffer.alloc(10);
  c[0] = 0x48;
  c[1] = (opts.immed ? 0x80 : 0) | (opts.ause ? 0x20 : 0) | sa;
  c.writeUInt16BE(paramLen, 7);
  return c;
}

function overwriteParams(count: number, pattern: Buffer, invert = false): Buffer {
  const p = Buffer.alloc(4 + pattern.length);
  p[0] = (invert ? 0x80 : 0) | count;
  p.writeUInt16BE(pattern.length, 2);
  pattern.copy(p, 4);
  return p;
}

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

describe('SANITIZE', () => {
  let lu: FakeLu;
  let dev: MemoryBlockDevice;
  const BLOCKS = 4096;
  beforeEach(() => {
    setSanitizeRate(null);
    dev = new MemoryBlockDevice(BLOCKS);
    lu = new FakeLu(new FakeTarget(), 0, dev);
  });
  after(() => setSanitizeRate(128 << 20));
  const run = (c: Buffer, data: Buffer | null = null) => exec(lu, i1, c, SANITIZE, data);

  it('rejects reserved bits, reserved bytes and unsupported service actions (CRYPTO ERASE included)', async () => {
    for (let sa = 0; sa <= 0x1e; sa++) {
      if (sa === 1 || sa === 2) continue;
      expect((await run(cdb(sa))).sense, `sa ${sa}`).to.deep.include({ key: 5, asc: 0x24, ascq: 0 });
    }
    const c = cdb(2);
    c[1]! |= 0x40;
    expect((await run(c)).sense).to.deep.include({ key: 5, asc: 0x24 });
    for (let i = 2; i <= 6; i++) {
      const r = cdb(2);
      r[i] = i;
      expect((await run(r)).sense, `byte ${i}`).to.deep.include({ key: 5, asc: 0x24 });
    }
    expect(lu.busyHistory).to.deep.equal([]);
  });

  it('checks the OVERWRITE parameter list (libiscsi Sanitize.Overwrite)', async () => {
    const good = overwriteParams(1, Buffer.alloc(512, 0xaa));
    for (let len = 0; len < 5; len++) expect((await run(cdb(1, len), good.subarray(0, len))).sense, `len ${len}`).to.deep.include({ key: 5, asc: 0x24 });
    expect((await run(cdb(1, 512 + 5), Buffer.alloc(512 + 8))).sense).to.deep.include({ key: 5, asc: 0x24 });
    const zeroCount = overwriteParams(0, Buffer.alloc(512));
    expect((await run(cdb(1, zeroCount.length), zeroCount)).sense).to.deep.include({ key: 5, asc: 0x26 });
    const zeroLen = Buffer.alloc(516);
    zeroLen[0] = 1;
    expect((await run(cdb(1, 516), zeroLen)).sense).to.deep.include({ key: 5, asc: 0x26 });
    const tooLong = Buffer.alloc(516);
    tooLong[0] = 1;
    tooLong.writeUInt16BE(516, 2);
    expect((await run(cdb(1, 516), tooLong)).sense).to.deep.include({ key: 5, asc: 0x26 });
    expect(lu.busyHistory).to.deep.equal([]);
  });

  it('OVERWRITE writes the pattern to every block and completes when done (IMMED=0)', async () => {
    await dev.write(0, Buffer.alloc(256 * 512, 'a'));
    await dev.write(BLOCKS - 256, Buffer.alloc(256 * 512, 'a'));
    const p = overwriteParams(1, Buffer.alloc(512, 0xaa));
    expect((await run(cdb(1, p.length), p)).status).to.equal(0);
    expect((await dev.read(0, BLOCKS)).every((x) => x === 0xaa)).to.equal(true);
    expect(lu.busyHistory.length).to.equal(2);
    expect(lu.busyHistory[0]!.sense).to.deep.equal({ key: 2, asc: 0x04, ascq: 0x1b });
    expect(lu.busyHistory[1]).to.equal(null);
    expect(sanitizeInProgress(lu)).to.equal(false);
  });

  it('repeats a short pattern within each block and inverts it between passes', async () => {
    const p = overwriteParams(2, Buffer.from([0x01, 0x02, 0x03]), true);
    expect((await run(cdb(1, p.length), p)).status).to.equal(0);
    const block = await dev.read(7, 1);
    // pass 2 of 2 is inverted: 0xfe 0xfd 0xfc repeated, restarting in every block (512 = 3*170 + 2)
    const expected = Buffer.alloc(512);
    for (let i = 0; i < 512; i++) expected[i] = [0xfe, 0xfd, 0xfc][i % 3]!;
    expect(block).to.deep.equal(expected);
  });

  it('BLOCK ERASE deallocates everything (libiscsi Sanitize.BlockErase)', async () => {
    await dev.write(0, Buffer.alloc(256 * 512, 'a'));
    await dev.write(BLOCKS - 256, Buffer.alloc(256 * 512, 'a'));
    expect((await run(cdb(2))).status).to.equal(0);
    expect((await dev.read(0, BLOCKS)).every((x) => x === 0)).to.equal(true);
    expect(await dev.provisioning(0, BLOCKS)).to.deep.equal({ mapped: false, blocks: BLOCKS });
    expect((await run(cdb(2, 8), Buffer.alloc(8))).sense).to.deep.include({ key: 5, asc: 0x24 });
  });

  it('BLOCK ERASE on a thick device writes zeros', async () => {
    dev = new MemoryBlockDevice(64, { thin: false });
    lu = new FakeLu(new FakeTarget(), 0, dev);
    await dev.write(0, Buffer.alloc(64 * 512, 7));
    expect((await run(cdb(2))).status).to.equal(0);
    expect((await dev.read(0, 64)).every((x) => x === 0)).to.equal(true);
  });

  it('with IMMED=1 returns at once and keeps the LU busy, with progress, until done', async () => {
    setSanitizeRate(8 << 20); // 2 MiB at 8 MiB/s: long enough to observe
    const p = overwriteParams(1, Buffer.alloc(512, 0x33));
    expect((await run(cdb(1, p.length, { immed: true }), p)).status).to.equal(0);
    expect(sanitizeInProgress(lu)).to.equal(true);
    const busy = lu.busyState!;
    expect(busy.sense).to.deep.equal({ key: 2, asc: 0x04, ascq: 0x1b });
    // a second SANITIZE while one runs is NOT READY
    const again = await run(cdb(2));
    expect(again.sense).to.deep.include({ key: 2, asc: 0x04, ascq: 0x1b });
    expect(again.senseBytes![15]).to.equal(0x80); // SKSV: progress indication follows
    await until(() => (busy.progress() ?? 0) > 0);
    await until(() => lu.busyState === null);
    expect((await dev.read(0, BLOCKS)).every((x) => x === 0x33)).to.equal(true);
  });

  it('goes on after its task is aborted', async () => {
    setSanitizeRate(8 << 20);
    const p = overwriteParams(1, Buffer.alloc(512, 0x44));
    const req = { nexus: i1, lun: 0, cdb: cdb(1, p.length), attr: TaskAttribute.Simple, tag: 9, dataOut: p, expectedLength: p.length, aborted: false };
    const pending = Promise.resolve(SANITIZE.handler({ req, lu, spec: SANITIZE }));
    await until(() => lu.busyState !== null);
    req.aborted = true;
    expect((await pending).status).to.equal(0x40);
    expect(sanitizeInProgress(lu)).to.equal(true);
    await until(() => lu.busyState === null);
    expect((await dev.read(BLOCKS - 1, 1)).every((x) => x === 0x44)).to.equal(true);
  });

  it('refuses a read-only LU with DATA PROTECT', async () => {
    lu.readOnly = true;
    const p = overwriteParams(1, Buffer.alloc(512, 0xaa));
    expect((await run(cdb(1, p.length), p)).sense).to.deep.include({ key: 7, asc: 0x27, ascq: 0 });
    expect((await run(cdb(2))).sense).to.deep.include({ key: 7, asc: 0x27 });
  });

  it('enters failure mode when the device fails; EXIT FAILURE MODE needs AUSE', async () => {
    dev.injectFault('write', 'write-error');
    const p = overwriteParams(1, Buffer.alloc(512, 0xaa));
    expect((await run(cdb(1, p.length), p)).sense).to.deep.include({ key: 3, asc: 0x31, ascq: 0x03 });
    expect(lu.busyState!.sense).to.deep.equal({ key: 3, asc: 0x31, ascq: 0x03 });
    expect((await run(cdb(0x1f))).sense).to.deep.include({ key: 5, asc: 0x24 });
    // a failed sanitize with AUSE=1 may be left with EXIT FAILURE MODE
    expect((await run(cdb(1, p.length, { ause: true }), p)).sense).to.deep.include({ key: 3, asc: 0x31 });
    expect((await run(cdb(0x1f, 8), Buffer.alloc(8))).sense).to.deep.include({ key: 5, asc: 0x24 });
    expect((await run(cdb(0x1f))).status).to.equal(0);
    expect(lu.busyState).to.equal(null);
    dev.clearFault('write');
    // without a failure, EXIT FAILURE MODE is a no-op
    expect((await run(cdb(0x1f))).status).to.equal(0);
  });
});
