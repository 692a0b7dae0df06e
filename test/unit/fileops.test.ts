import { expect } from 'chai';
import { openSync, closeSync, writeSync, ftruncateSync, readSync, unlinkSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileOps } from '../../src/native/fileops.js';

describe('native fileops', () => {
  it('punches holes and finds data and holes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tabula-fileops-'));
    const path = join(dir, 'f');
    const fd = openSync(path, 'w+');
    try {
      ftruncateSync(fd, 4 << 20);
      writeSync(fd, Buffer.alloc(1 << 20, 0xab), 0, 1 << 20, 1 << 20);
      expect(fileOps.seekData(fd, 0)).to.equal(1 << 20);
      expect(fileOps.seekHole(fd, 1 << 20)).to.equal(2 << 20);
      fileOps.punchHole(fd, 1 << 20, 1 << 20);
      expect(fileOps.seekData(fd, 0)).to.equal(-1);
      const b = Buffer.alloc(4096, 1);
      readSync(fd, b, 0, 4096, 1 << 20);
      expect(b.every((x) => x === 0)).to.equal(true);
    } finally {
      closeSync(fd);
      unlinkSync(path);
    }
  });

  it('reports errors with errno for a bad descriptor', () => {
    expect(() => fileOps.punchHole(987654, 0, 4096)).to.throw(/fallocate/);
  });
});
