// `tabula container init` on a file that already holds data: the data area
// reads as zeros afterwards (the controller hands a new container's
// segments out as zeros), while nothing before the data offset but the
// label is touched.
import { expect } from 'chai';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initContainer } from '../../../src/container/init.js';
import { openContainer } from '../../../src/container/file-driver.js';

const MiB = 1 << 20;
const ID_A = 'aaaaaaaa-0000-4000-8000-000000000001';
const ID_B = 'bbbbbbbb-0000-4000-8000-000000000002';

/** Index of the first byte in [from, buf.length) that is not zero, or -1. */
function firstNonZero(buf: Buffer, from: number): number {
  for (let i = from; i < buf.length; i++) if (buf[i] !== 0) return i;
  return -1;
}

describe('container/init zeroes the data area of an existing file', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-cinit-zero-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('an unlabelled file full of old data', async () => {
    const path = join(dir, 'old.img');
    writeFileSync(path, Buffer.alloc(8 * MiB, 0x11));
    const r = await initContainer(path, { id: ID_A });
    expect(r.label.dataOffset).to.equal(MiB);
    const raw = readFileSync(path);
    expect(raw.length).to.equal(8 * MiB);
    expect(firstNonZero(raw, MiB), 'data area').to.equal(-1);
    expect(raw[MiB - 1], 'before the data offset: untouched').to.equal(0x11);
    // And through the driver the agents use.
    const d = await openContainer(path);
    try {
      expect(firstNonZero(await d.read(0, d.dataSize), 0)).to.equal(-1);
    } finally {
      await d.close();
    }
  });

  it('a container relabelled with force, its old segments written', async () => {
    const path = join(dir, 'c.img');
    await initContainer(path, { size: 6 * MiB, id: ID_A });
    const d = await openContainer(path);
    await d.write(0, Buffer.alloc(2 * MiB, 0x5a));
    await d.write(4 * MiB, Buffer.alloc(MiB, 0xa5));
    await d.close();
    const r = await initContainer(path, { force: true, id: ID_B });
    expect(r.replaced).to.equal(ID_A);
    const raw = readFileSync(path);
    expect(firstNonZero(raw, MiB)).to.equal(-1);
  });

  it('a file grown to the requested size: the old part is zeroed, the new part is zero', async () => {
    const path = join(dir, 'grow.img');
    writeFileSync(path, Buffer.alloc(3 * MiB, 0x22));
    const r = await initContainer(path, { size: 5 * MiB, id: ID_A });
    expect(r.label.size).to.equal(5 * MiB);
    const raw = readFileSync(path);
    expect(raw.length).to.equal(5 * MiB);
    expect(firstNonZero(raw, MiB)).to.equal(-1);
  });
});
