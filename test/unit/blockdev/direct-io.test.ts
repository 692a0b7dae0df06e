// O_DIRECT mode of OpenFile and the container driver: every transfer through
// aligned memory at aligned offsets, whatever the caller's buffer, offset and
// length; read-modify-write of partial blocks without losing a concurrent
// neighbour's write; discard and zeroing; and the buffered fallback, with a
// warning, where the file system refuses O_DIRECT (ramfs; tmpfs before Linux
// 6.6). Files live in /var/tmp (a real disk file system; /tmp may be tmpfs).
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import winston from 'winston';
import { AlignedBufferPool, alignedBuffer, canAlign, isAligned } from '../../../src/blockdev/aligned-buffers.js';
import { OpenFile, RangeLock } from '../../../src/blockdev/file-io.js';
import { openContainer } from '../../../src/container/file-driver.js';
import { initContainer } from '../../../src/container/init.js';
import { log } from '../../../src/util/log.js';
import { prng } from '../../support/prng.js';

/** Whole numbers below n and random bytes from one seed. */
function rand(seed: number): { below(n: number): number; bytes(n: number): Buffer } {
  const next = prng(seed);
  const below = (n: number): number => Math.floor(next() * n);
  return { below, bytes: (n) => Buffer.from(Array.from({ length: n }, () => below(256))) };
}

const MiB = 1 << 20;

/** Log lines written while `fn` runs. */
async function logged<T>(fn: () => Promise<T>): Promise<{ value: T; lines: string[] }> {
  const stream = new PassThrough();
  const lines: string[] = [];
  stream.on('data', (c: Buffer) => lines.push(c.toString()));
  const t = new winston.transports.Stream({ stream, format: winston.format.simple() });
  log.add(t);
  // test/setup.ts keeps only errors; this warning is what the test is about.
  const level = log.level;
  log.level = 'info';
  try {
    const value = await fn();
    // The logger writes to its streams asynchronously.
    await new Promise((r) => setTimeout(r, 20));
    return { value, lines };
  } finally {
    log.level = level;
    log.remove(t);
  }
}

/** An unaligned copy of `data`: a view one byte into a larger buffer. */
function unaligned(data: Buffer): Buffer {
  const b = Buffer.alloc(data.length + 1);
  data.copy(b, 1);
  return b.subarray(1);
}

/** A worktree whose build/ predates direct mode has an addon without its two calls: say so rather than fail obscurely. */
function needsAddon(this: Mocha.Context): void {
  if (!canAlign()) this.skip(); // build/Release/fileops.node is older than src/native/fileops.c: npm run build
}

describe('blockdev: aligned buffers and the range lock', () => {
  before(needsAddon);
  it('alignedBuffer and the pool hand out aligned memory, reused once given back', () => {
    for (const a of [512, 4096, 65536]) expect(isAligned(alignedBuffer(1000, a), a)).to.equal(true);
    const pool = new AlignedBufferPool(4096);
    const b = pool.take(5000);
    expect(b.length).to.equal(5000);
    expect(isAligned(b, 4096)).to.equal(true);
    pool.give(b);
    const c = pool.take(8192);
    expect(c.buffer).to.equal(b.buffer);
    expect(c.byteOffset).to.equal(b.byteOffset);
  });

  it('a read-modify-write waits for overlapping writes; aligned writes do not wait for each other', async () => {
    const lock = new RangeLock();
    const w1 = await lock.acquire(0, 4096, false);
    const w2 = await lock.acquire(0, 4096, false); // aligned writes overlap freely
    let rmwIn = false;
    const rmw = lock.acquire(0, 8192, true).then((r) => {
      rmwIn = true;
      return r;
    });
    await new Promise((r) => setImmediate(r));
    expect(rmwIn).to.equal(false);
    w1();
    await new Promise((r) => setImmediate(r));
    expect(rmwIn).to.equal(false);
    w2();
    const r = await rmw;
    expect(rmwIn).to.equal(true);
    let laterIn = false;
    const later = lock.acquire(4096, 8192, false).then((rel) => {
      laterIn = true;
      return rel;
    });
    const apart = await lock.acquire(8192, 12288, false); // no overlap: not held up
    await new Promise((res) => setImmediate(res));
    expect(laterIn).to.equal(false);
    r();
    (await later)();
    apart();
    expect(lock.size).to.equal(0);
  });
});

describe('blockdev: OpenFile in direct mode (O_DIRECT)', function () {
  this.timeout(60_000);
  before(needsAddon);
  let dir = '';
  beforeEach(() => {
    dir = mkdtempSync(join('/var/tmp', 'tabula-direct-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  for (const alignment of [undefined, 4096] as const) {
    it(`random reads and writes of any offset, length and buffer match a model (alignment ${alignment ?? 'from the kernel'})`, async () => {
      const path = join(dir, 'f.img');
      const size = 2 * MiB;
      writeFileSync(path, Buffer.alloc(size));
      const f = await OpenFile.open(path, { direct: true, directAlignment: alignment });
      const model = Buffer.alloc(size);
      const rng = rand(7);
      try {
        expect(f.direct).to.equal(true);
        expect(f.alignment).to.be.at.least(512);
        if (alignment !== undefined) expect(f.alignment).to.equal(alignment);
        for (let i = 0; i < 300; i++) {
          const sector = rng.below(3) === 0;
          const len = sector ? 512 * (1 + rng.below(16)) : 1 + rng.below(20000);
          const pos = sector ? 512 * rng.below((size - len) / 512) : rng.below(size - len);
          if (rng.below(2) === 0) {
            const data = rng.bytes(len);
            const src = rng.below(2) === 0 ? unaligned(data) : data;
            await f.write(src, 0, len, pos, rng.below(4) === 0);
            data.copy(model, pos);
          } else {
            const into = rng.below(2) === 0 ? unaligned(Buffer.alloc(len)) : f.allocReadBuffer(len);
            await f.read(into, 0, len, pos);
            expect(into.equals(model.subarray(pos, pos + len)), `read ${len} at ${pos}`).to.equal(true);
          }
        }
        await f.flush();
      } finally {
        await f.close();
      }
      expect(readFileSync(path).equals(model)).to.equal(true);
    });
  }

  it('concurrent partial-block writes to one block all land (read-modify-write is serialised)', async () => {
    const path = join(dir, 'f.img');
    writeFileSync(path, Buffer.alloc(64 * 1024));
    const f = await OpenFile.open(path, { direct: true, directAlignment: 4096 });
    try {
      // Eight 512-byte writes into the same 4 KiB block, and an aligned write next to them, all at once.
      const parts = Array.from({ length: 8 }, (_, i) => Buffer.alloc(512, 0x10 + i));
      const whole = Buffer.alloc(4096, 0xee);
      await Promise.all([...parts.map((p, i) => f.write(p, 0, 512, 4096 + i * 512, false)), f.write(whole, 0, 4096, 8192, false)]);
      const back = Buffer.alloc(8192);
      await f.read(back, 0, 8192, 4096);
      expect(back.subarray(0, 4096).equals(Buffer.concat(parts))).to.equal(true);
      expect(back.subarray(4096).equals(whole)).to.equal(true);
    } finally {
      await f.close();
    }
  });

  it('discard and zeroing work on an O_DIRECT file, aligned or not', async () => {
    const path = join(dir, 'f.img');
    writeFileSync(path, Buffer.alloc(MiB, 0xab));
    const f = await OpenFile.open(path, { direct: true });
    try {
      await f.zero(4096, 8192, true);
      await f.zero(65536 + 100, 1000, false);
      const back = Buffer.alloc(MiB);
      await f.read(back, 0, MiB, 0);
      const want = Buffer.alloc(MiB, 0xab);
      want.fill(0, 4096, 4096 + 8192);
      want.fill(0, 65536 + 100, 65536 + 1100);
      expect(back.equals(want)).to.equal(true);
    } finally {
      await f.close();
    }
  });

  it('tmpfs: direct where the kernel allows it (Linux >= 6.6), else buffered with a warning; the data is right either way', async () => {
    const shm = mkdtempSync(join('/dev/shm', 'tabula-direct-'));
    try {
      const path = join(shm, 'f.img');
      writeFileSync(path, Buffer.alloc(MiB));
      const { value: f, lines } = await logged(() => OpenFile.open(path, { direct: true }));
      try {
        if (!f.direct) expect(lines.join('')).to.match(/refuses O_DIRECT \(EINVAL\); using buffered I\/O/);
        const data = unaligned(Buffer.alloc(3000, 0x5a));
        await f.write(data, 0, 3000, 777, false);
        const back = Buffer.alloc(3000);
        await f.read(back, 0, 3000, 777);
        expect(back.equals(data)).to.equal(true);
      } finally {
        await f.close();
      }
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });

  it('a file system without O_DIRECT (ramfs): buffered, with a log line naming the file', async function () {
    const mnt = mkdtempSync(join('/var/tmp', 'tabula-ramfs-'));
    try {
      execFileSync('mount', ['-t', 'ramfs', 'ramfs', mnt], { stdio: 'ignore' });
    } catch {
      rmdirSync(mnt);
      this.skip(); // needs root (mount)
    }
    try {
      const path = join(mnt, 'f.img');
      writeFileSync(path, Buffer.alloc(64 * 1024));
      const { value: f, lines } = await logged(() => OpenFile.open(path, { direct: true }));
      try {
        expect(f.direct).to.equal(false);
        expect(f.alignment).to.equal(0);
        expect(lines.join('')).to.include(`${path}: the file system refuses O_DIRECT (EINVAL); using buffered I/O`);
        const data = Buffer.alloc(100, 1);
        await f.write(data, 0, 100, 3, true);
        const back = Buffer.alloc(100);
        await f.read(back, 0, 100, 3);
        expect(back.equals(data)).to.equal(true);
      } finally {
        await f.close();
      }
    } finally {
      execFileSync('umount', [mnt], { stdio: 'ignore' });
      rmdirSync(mnt);
    }
  });
});

describe('container: openContainer(path, { direct: true })', function () {
  this.timeout(60_000);
  before(needsAddon);
  let dir = '';
  beforeEach(() => {
    dir = mkdtempSync(join('/var/tmp', 'tabula-cdirect-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('reads the label and serves reads, FUA writes, flush, discard and zeroes through O_DIRECT', async () => {
    const path = join(dir, 'c.img');
    const { label } = await initContainer(path, { size: 8 * MiB });
    const d = await openContainer(path, { direct: true });
    const small = Buffer.alloc(4096, 0x11);
    try {
      expect(d.direct).to.equal(true);
      expect(d.id).to.equal(label.id);
      const big = Buffer.alloc(MiB, 0x22);
      await d.write(512, unaligned(small), { fua: true });
      await d.write(MiB, big);
      await d.flush();
      expect((await d.read(512, 4096)).equals(small)).to.equal(true);
      expect((await d.read(MiB, MiB)).equals(big)).to.equal(true);
      await d.discard(MiB, 65536);
      await d.writeZeroes(MiB + 65536, 512);
      const back = await d.read(MiB, 65536 + 1024);
      expect(back.subarray(0, 65536 + 512).equals(Buffer.alloc(65536 + 512))).to.equal(true);
      expect(back.subarray(65536 + 512).equals(Buffer.alloc(512, 0x22))).to.equal(true);
    } finally {
      await d.close();
    }
    // What went through O_DIRECT is on the file, seen by a plain reader.
    const raw = readFileSync(path);
    expect(raw.subarray(label.dataOffset + 512, label.dataOffset + 512 + 4096).equals(small)).to.equal(true);
  });

  it('without direct the driver stays buffered', async () => {
    const path = join(dir, 'c.img');
    await initContainer(path, { size: 4 * MiB });
    const d = await openContainer(path);
    try {
      expect(d.direct).to.equal(false);
    } finally {
      await d.close();
    }
  });
});
