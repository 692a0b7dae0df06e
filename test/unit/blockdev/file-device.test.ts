import { expect } from 'chai';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockDeviceError } from '../../../src/blockdev/block-device.js';
import { FileBlockDevice } from '../../../src/blockdev/file-device.js';
import { rejects } from '../../support/rejects.js';

describe('FileBlockDevice', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-filedev-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('creates a sparse file of the given size', async () => {
    const path = join(dir, 'disk.img');
    const dev = await FileBlockDevice.open(path, { size: 8 << 20 });
    try {
      expect(dev.blockSize).to.equal(512);
      expect(dev.blockCount).to.equal(16384);
      expect(dev.thin).to.equal(true);
      const st = statSync(path);
      expect(st.size).to.equal(8 << 20);
      expect(st.blocks * 512).to.be.lessThan(1 << 20); // sparse
      const b = await dev.read(0, 8);
      expect(b.length).to.equal(4096);
      expect(b.every((x) => x === 0)).to.equal(true);
    } finally {
      await dev.close();
    }
  });

  it('writes and reads back, at the right file offset', async () => {
    const path = join(dir, 'disk.img');
    const dev = await FileBlockDevice.open(path, { size: 1 << 20, blockSize: 4096 });
    const data = Buffer.alloc(8192);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    await dev.write(3, data);
    await dev.write(10, Buffer.alloc(4096, 0x5a), { fua: true });
    await dev.flush();
    expect((await dev.read(3, 2)).equals(data)).to.equal(true);
    await dev.close();
    const raw = readFileSync(path);
    expect(raw.subarray(3 * 4096, 5 * 4096).equals(data)).to.equal(true);
    expect(raw.subarray(10 * 4096, 11 * 4096).every((x) => x === 0x5a)).to.equal(true);
  });

  it('uses an existing file size and extends a smaller file', async () => {
    const path = join(dir, 'disk.img');
    writeFileSync(path, Buffer.alloc(4096, 1));
    const a = await FileBlockDevice.open(path);
    expect(a.blockCount).to.equal(8);
    expect((await a.read(0, 1)).every((x) => x === 1)).to.equal(true);
    await a.close();
    const b = await FileBlockDevice.open(path, { size: 16384 });
    expect(b.blockCount).to.equal(32);
    expect((await b.read(0, 1)).every((x) => x === 1)).to.equal(true);
    await b.close();
  });

  it('rejects sizes that are not whole blocks, missing files, shrinking and empty files', async () => {
    const path = join(dir, 'odd.img');
    writeFileSync(path, Buffer.alloc(1000));
    expect((await rejects(FileBlockDevice.open(path))).message).to.match(/odd\.img.*not a multiple of the 512-byte block size/);
    expect((await rejects(FileBlockDevice.open(join(dir, 'x.img'), { size: 1000 }))).message).to.match(/not a multiple/);
    expect((await rejects(FileBlockDevice.open(join(dir, 'missing.img')))).message).to.match(/cannot open .*missing\.img.*ENOENT/);
    writeFileSync(join(dir, 'big.img'), Buffer.alloc(8192));
    expect((await rejects(FileBlockDevice.open(join(dir, 'big.img'), { size: 4096 }))).message).to.match(/refusing to shrink/);
    writeFileSync(join(dir, 'empty.img'), Buffer.alloc(0));
    expect((await rejects(FileBlockDevice.open(join(dir, 'empty.img')))).message).to.match(/empty file/);
  });

  it('reports an unreadable file clearly', async function () {
    if (process.getuid?.() === 0) this.skip(); // root ignores permissions
    const path = join(dir, 'locked.img');
    writeFileSync(path, Buffer.alloc(4096));
    chmodSync(path, 0);
    expect((await rejects(FileBlockDevice.open(path))).message).to.match(/cannot open .*locked\.img read-write.*EACCES/);
  });

  it('fails I/O beyond the end with out-of-range and context', async () => {
    const dev = await FileBlockDevice.open(join(dir, 'd.img'), { size: 64 * 512 });
    try {
      const e = await rejects(dev.read(60, 8));
      expect(e).to.be.instanceOf(BlockDeviceError);
      expect((e as BlockDeviceError).kind).to.equal('out-of-range');
      expect(e.message).to.match(/d\.img lba=60 len=8/);
      const w = (await rejects(dev.write(64, Buffer.alloc(512)))) as BlockDeviceError;
      expect(w.kind).to.equal('out-of-range');
      expect(((await rejects(dev.unmap(63, 2))) as BlockDeviceError).kind).to.equal('out-of-range');
    } finally {
      await dev.close();
    }
  });

  it('refuses writes when read-only', async () => {
    const path = join(dir, 'ro.img');
    writeFileSync(path, Buffer.alloc(8192, 3));
    const dev = await FileBlockDevice.open(path, { readOnly: true });
    try {
      expect((await dev.read(1, 1)).every((x) => x === 3)).to.equal(true);
      const e = (await rejects(dev.write(0, Buffer.alloc(512)))) as BlockDeviceError;
      expect(e.kind).to.equal('write-protected');
      expect(((await rejects(dev.unmap(0, 1))) as BlockDeviceError).kind).to.equal('write-protected');
    } finally {
      await dev.close();
    }
  });

  it('unmaps by punching holes and reports provisioning per extent', async () => {
    const dev = await FileBlockDevice.open(join(dir, 'thin.img'), { size: 4 << 20, blockSize: 4096 });
    try {
      // blocks 0..1023; map 256..511
      expect(await dev.provisioning(0, 2048)).to.deep.equal({ mapped: false, blocks: 1024 });
      await dev.write(256, Buffer.alloc(256 * 4096, 0xee));
      expect(await dev.provisioning(0, 2048)).to.deep.equal({ mapped: false, blocks: 256 });
      expect(await dev.provisioning(256, 2048)).to.deep.equal({ mapped: true, blocks: 256 });
      expect(await dev.provisioning(300, 10)).to.deep.equal({ mapped: true, blocks: 10 });
      expect(await dev.provisioning(512, 2048)).to.deep.equal({ mapped: false, blocks: 512 });
      await dev.unmap(300, 100);
      expect((await dev.read(300, 100)).every((x) => x === 0)).to.equal(true);
      expect((await dev.read(299, 1)).every((x) => x === 0xee)).to.equal(true);
      expect(await dev.provisioning(256, 2048)).to.deep.equal({ mapped: true, blocks: 44 });
      expect(await dev.provisioning(300, 2048)).to.deep.equal({ mapped: false, blocks: 100 });
      expect(await dev.provisioning(400, 2048)).to.deep.equal({ mapped: true, blocks: 112 });
    } finally {
      await dev.close();
    }
  });

  it('writeZeroes zeroes without deallocating, or deallocates when allowed', async () => {
    const dev = await FileBlockDevice.open(join(dir, 'z.img'), { size: 1 << 20, blockSize: 4096 });
    try {
      await dev.write(0, Buffer.alloc(64 * 4096, 0x11));
      await dev.writeZeroes(0, 16, false);
      expect((await dev.read(0, 16)).every((x) => x === 0)).to.equal(true);
      expect((await dev.read(16, 1)).every((x) => x === 0x11)).to.equal(true);
      await dev.writeZeroes(32, 16, true);
      expect((await dev.read(32, 16)).every((x) => x === 0)).to.equal(true);
      expect(await dev.provisioning(32, 100)).to.deep.equal({ mapped: false, blocks: 16 });
      await dev.writeZeroes(5, 0, true); // zero length is a no-op
    } finally {
      await dev.close();
    }
  });

  // Small I/O runs inline (readSync/writeSync), large I/O and inlineMaxBytes 0 go through
  // the thread pool: both paths must put the same bytes at the same offsets.
  for (const inlineMaxBytes of [undefined, 0]) {
    it(`reads and writes the same bytes ${inlineMaxBytes === 0 ? 'through the thread pool only' : 'inline and through the thread pool'}`, async () => {
      const path = join(dir, 'paths.img');
      const dev = await FileBlockDevice.open(path, { size: 1 << 20, blockSize: 512, inlineMaxBytes });
      try {
        const small = Buffer.alloc(4096);
        for (let i = 0; i < small.length; i++) small[i] = (i * 13 + 1) & 0xff;
        const large = Buffer.alloc(128 * 1024);
        for (let i = 0; i < large.length; i++) large[i] = (i * 31 + 7) & 0xff;
        await dev.write(7, small);
        await dev.write(100, large);
        expect((await dev.read(7, 8)).equals(small)).to.equal(true);
        expect((await dev.read(100, 256)).equals(large)).to.equal(true);
        expect((await dev.read(6, 1)).every((x) => x === 0)).to.equal(true);
      } finally {
        await dev.close();
      }
      const raw = readFileSync(path);
      expect(raw[7 * 512]).to.equal(1);
      expect(raw[7 * 512 + 1]).to.equal(14);
      expect(raw[100 * 512 + 1]).to.equal(38);
    });

    it(`readNow / writeNow ${inlineMaxBytes === 0 ? 'decline (nothing done) when I/O must go through the thread pool' : 'do small I/O in the same turn and decline large I/O'}`, async () => {
      const path = join(dir, 'now.img');
      const dev = await FileBlockDevice.open(path, { size: 1 << 20, blockSize: 512, inlineMaxBytes });
      try {
        const small = Buffer.alloc(4096, 0x5a);
        const large = Buffer.alloc(128 * 1024, 0x33);
        expect(dev.writeNow(7, small, { fua: true })).to.equal(false);
        expect(dev.writeNow(100, large)).to.equal(false);
        expect((await dev.read(100, 256)).every((x) => x === 0)).to.equal(true);
        expect(dev.readNow(100, 256)).to.equal(undefined);
        if (inlineMaxBytes === 0) {
          expect(dev.writeNow(7, small)).to.equal(false);
          expect(dev.readNow(7, 8)).to.equal(undefined);
          expect((await dev.read(7, 8)).every((x) => x === 0)).to.equal(true);
        } else {
          expect(dev.writeNow(7, small)).to.equal(true);
          expect(dev.readNow(7, 8)?.equals(small)).to.equal(true);
          expect((await dev.read(7, 8)).equals(small)).to.equal(true);
        }
        expect(() => dev.readNow(2048, 1)).to.throw(BlockDeviceError, /beyond the last block/);
        expect(() => dev.writeNow(2048, small)).to.throw(BlockDeviceError, /beyond the last block/);
      } finally {
        await dev.close();
      }
    });

    it(`reports a file that shrank under it as a read error ${inlineMaxBytes === 0 ? '(thread pool)' : '(inline)'}`, async () => {
      const path = join(dir, 'shrunk.img');
      const dev = await FileBlockDevice.open(path, { size: 64 * 512, inlineMaxBytes });
      try {
        truncateSync(path, 8 * 512);
        const e = (await rejects(dev.read(10, 1))) as BlockDeviceError;
        expect(e).to.be.instanceOf(BlockDeviceError);
        expect(e.kind).to.equal('read-error');
        expect(e.message).to.match(/READ .*shrunk\.img lba=10: unexpected end of file/);
      } finally {
        await dev.close();
      }
    });
  }
});
