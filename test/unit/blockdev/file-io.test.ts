import { expect } from 'chai';
import { mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OpenFile, ShortReadError } from '../../../src/blockdev/file-io.js';

describe('OpenFile', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-fileio-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('does small I/O inline (no promise) and large or FUA I/O through the thread pool, to the same bytes', async () => {
    const path = join(dir, 'f');
    const file = await OpenFile.open(path, { create: true });
    try {
      await file.truncate(1 << 20);
      const small = Buffer.alloc(4096, 0x21);
      const large = Buffer.alloc(256 * 1024, 0x42);
      expect(file.write(small, 0, small.length, 4096, false)).to.equal(undefined);
      const pooled = file.write(large, 0, large.length, 65536, false);
      expect(pooled).to.be.instanceOf(Promise);
      await pooled;
      const fua = file.write(small, 0, 512, 0, true);
      expect(fua).to.be.instanceOf(Promise);
      await fua;
      const back = Buffer.alloc(4096);
      expect(file.read(back, 0, back.length, 4096)).to.equal(undefined);
      expect(back.equals(small)).to.equal(true);
      const bigBack = Buffer.alloc(large.length);
      await file.read(bigBack, 0, bigBack.length, 65536);
      expect(bigBack.equals(large)).to.equal(true);
    } finally {
      await file.close();
    }
    const raw = readFileSync(path);
    expect(raw.subarray(0, 512).every((x) => x === 0x21)).to.equal(true);
    expect(raw.subarray(512, 4096).every((x) => x === 0)).to.equal(true);
  });

  it('reports a read past the end as ShortReadError with the bytes done', async () => {
    const path = join(dir, 'short');
    writeFileSync(path, Buffer.alloc(8192, 1));
    const file = await OpenFile.open(path, { inlineMaxBytes: 0 });
    try {
      truncateSync(path, 6144);
      const buf = Buffer.alloc(4096);
      let err: unknown;
      try {
        await file.read(buf, 0, buf.length, 4096);
      } catch (e) {
        err = e;
      }
      expect(err).to.be.instanceOf(ShortReadError);
      expect((err as ShortReadError).done).to.equal(2048);
    } finally {
      await file.close();
    }
  });

  it('zeroes a range natively, by punching a hole, or by writing zeros where the file system cannot', async () => {
    // tmpfs punches holes but has no FALLOC_FL_ZERO_RANGE: zero without deallocating writes zeros there.
    for (const base of [dir, '/dev/shm']) {
      let where: string;
      try {
        where = mkdtempSync(join(base, 'tabula-fileio-zero-'));
      } catch {
        continue; // no /dev/shm here
      }
      try {
        const path = join(where, 'z');
        writeFileSync(path, Buffer.alloc(3 << 20, 0x77));
        const file = await OpenFile.open(path);
        try {
          await file.zero(4096, (2 << 20) + 4096, false);
          await file.zero(0, 4096, true);
          await file.zero(100, 0, true);
        } finally {
          await file.close();
        }
        const raw = readFileSync(path);
        expect(raw.subarray(0, (2 << 20) + 8192).every((x) => x === 0), base).to.equal(true);
        expect(raw.subarray((2 << 20) + 8192).every((x) => x === 0x77), base).to.equal(true);
        expect(statSync(path).size).to.equal(3 << 20);
      } finally {
        rmSync(where, { recursive: true, force: true });
      }
    }
  });

  it('refuses what is neither a regular file nor a block device', async () => {
    const file = await OpenFile.open('/dev/null', { readOnly: true });
    try {
      let err: unknown;
      try {
        await file.stat();
      } catch (e) {
        err = e;
      }
      expect((err as Error).message).to.equal('/dev/null: not a regular file or block device');
    } finally {
      await file.close();
    }
  });
});
