import { expect } from 'chai';
import { openSync, closeSync, writeSync, ftruncateSync, readSync, unlinkSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileOps } from '../../../src/native/fileops.js';

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

describe('native fileops on block devices', () => {
  it('seekEnd gives the size of a block device (SEEK_HOLE cannot)', function () {
    // A loop device needs root and the loop driver; skip with the reason where they are missing.
    let dev = '';
    const dir = mkdtempSync(join(tmpdir(), 'tabula-loop-'));
    const img = join(dir, 'img');
    const fd0 = openSync(img, 'w');
    ftruncateSync(fd0, 8 << 20);
    closeSync(fd0);
    try {
      dev = execFileSync('losetup', ['-f', '--show', img], { encoding: 'utf8' }).trim();
    } catch {
      this.skip(); // no loop devices here (not root, or no loop driver)
    }
    try {
      const fd = openSync(dev, 'r');
      try {
        expect(fileOps.seekEnd(fd, 0)).to.equal(8 << 20);
      } finally {
        closeSync(fd);
      }
    } finally {
      execFileSync('losetup', ['-d', dev]);
      unlinkSync(img);
    }
  });
});
