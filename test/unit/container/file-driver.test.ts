import { expect } from 'chai';
import { mkdtempSync, openSync, readFileSync, readSync, closeSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ContainerIoError } from '../../../src/container/driver.js';
import { FileContainerDriver } from '../../../src/container/file-driver.js';
import { initContainer } from '../../../src/container/init.js';
import { LabelError } from '../../../src/container/label.js';
import { rejects } from '../../support/rejects.js';

const MiB = 1 << 20;
const ID = 'cccccccc-0000-4000-8000-000000000003';

function rawAt(path: string, pos: number, len: number): Buffer {
  const fd = openSync(path, 'r');
  const b = Buffer.alloc(len);
  readSync(fd, b, 0, len, pos);
  closeSync(fd);
  return b;
}

describe('container/FileContainerDriver', () => {
  let dir: string;
  let path: string;
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-cdrv-'));
    path = join(dir, 'c.img');
    await initContainer(path, { size: 5 * MiB, id: ID });
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('opens by label and addresses the data area', async () => {
    const d = await FileContainerDriver.open(path);
    try {
      expect(d.id).to.equal(ID);
      expect(d.kind).to.equal('file');
      expect(d.dataSize).to.equal(4 * MiB);
      const data = Buffer.from('0123456789abcdef'.repeat(32), 'latin1');
      await d.write(4096, data);
      await d.write(8192, data, { fua: true });
      await d.flush();
      expect((await d.read(4096, data.length)).equals(data)).to.equal(true);
      const target = Buffer.alloc(1024, 0xff);
      await d.readInto(8192, target, 100, 512);
      expect(target.subarray(100, 612).equals(data)).to.equal(true);
      expect(target[99]).to.equal(0xff);
      expect(target[612]).to.equal(0xff);
    } finally {
      await d.close();
    }
    // File offset = data offset (1 MiB) + data-area offset.
    expect(rawAt(path, MiB + 4096, 16).toString('latin1')).to.equal('0123456789abcdef');
  });

  it('inline and thread-pool paths read and write the same bytes, at the data offset', async () => {
    // inlineMaxBytes 0 sends everything through the thread pool; the default
    // runs these small transfers inline (readSync/writeSync).
    for (const inlineMaxBytes of [0, undefined]) {
      const d = await FileContainerDriver.open(path, { inlineMaxBytes });
      const tag = inlineMaxBytes === 0 ? 0x5a : 0xa5;
      try {
        const small = Buffer.alloc(4096, tag);
        const big = Buffer.alloc(256 * 1024, tag ^ 0xff); // above the inline limit either way
        await d.write(3 * 4096, small);
        await d.write(MiB, big);
        const back = Buffer.alloc(4096 + 2, 0x11);
        await d.readInto(3 * 4096, back, 1, 4096);
        expect(back[0]).to.equal(0x11);
        expect(back.subarray(1, 4097).equals(small)).to.equal(true);
        expect(back[4097]).to.equal(0x11);
        expect((await d.read(MiB, big.length)).equals(big)).to.equal(true);
      } finally {
        await d.close();
      }
      expect(rawAt(path, MiB + 3 * 4096, 4096).equals(Buffer.alloc(4096, tag))).to.equal(true);
      expect(rawAt(path, 2 * MiB, 4096).equals(Buffer.alloc(4096, tag ^ 0xff))).to.equal(true);
    }
  });

  it('a short read is an error naming the container on the inline path too', async () => {
    const d = await FileContainerDriver.open(path);
    try {
      truncateSync(path, MiB + 4096); // the file shrank under the open driver
      const err = await rejects(d.read(8192, 4096));
      expect(err).to.be.instanceOf(ContainerIoError);
      expect((err as ContainerIoError).code).to.equal('SHORT');
      expect(err.message).to.contain(path);
    } finally {
      await d.close();
    }
  });

  it('discards and zeroes ranges', async () => {
    const d = await FileContainerDriver.open(path);
    try {
      await d.write(0, Buffer.alloc(3 * 65536, 0xab));
      await d.discard(65536, 65536);
      await d.writeZeroes(0, 512);
      const b = await d.read(0, 3 * 65536);
      expect(b.subarray(0, 512).every((x) => x === 0)).to.equal(true);
      expect(b.subarray(512, 65536).every((x) => x === 0xab)).to.equal(true);
      expect(b.subarray(65536, 131072).every((x) => x === 0)).to.equal(true);
      expect(b.subarray(131072).every((x) => x === 0xab)).to.equal(true);
    } finally {
      await d.close();
    }
  });

  it('refuses I/O beyond the data area, naming path and offset', async () => {
    const d = await FileContainerDriver.open(path);
    try {
      const e = await rejects(d.read(4 * MiB - 512, 1024));
      expect(e).to.be.instanceOf(ContainerIoError);
      expect((e as ContainerIoError).code).to.equal('ERANGE');
      expect(e.message).to.contain(`read ${path} offset ${4 * MiB - 512}`);
    } finally {
      await d.close();
    }
    const e2 = await rejects(d.read(0, 512));
    expect(e2.message).to.match(/closed/);
  });

  it('a read-only driver refuses writes', async () => {
    const d = await FileContainerDriver.open(path, { readOnly: true });
    try {
      const e = await rejects(d.write(0, Buffer.alloc(512)));
      expect((e as ContainerIoError).code).to.equal('EROFS');
    } finally {
      await d.close();
    }
  });

  it('will not open a truncated, unlabelled or missing container', async () => {
    truncateSync(path, 3 * MiB);
    const e = await rejects(FileContainerDriver.open(path));
    expect(e).to.be.instanceOf(LabelError);
    expect((e as LabelError).kind).to.equal('truncated');
    writeFileSync(path, Buffer.alloc(MiB));
    expect(((await rejects(FileContainerDriver.open(path))) as LabelError).kind).to.equal('unlabelled');
    const m = await rejects(FileContainerDriver.open(join(dir, 'missing')));
    expect(m).to.be.instanceOf(ContainerIoError);
    expect((m as ContainerIoError).code).to.equal('ENOENT');
    expect(readFileSync(path).length).to.equal(MiB);
  });
});
