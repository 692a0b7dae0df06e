import { expect } from 'chai';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ContainerInitError, initContainer } from '../../../src/container/init.js';
import { LabelError, decodeLabel } from '../../../src/container/label.js';
import { expandBraces, expandGlob } from '../../../src/container/glob.js';
import { readContainerLabel, scanContainers } from '../../../src/container/scan.js';
import { rejects } from '../../support/rejects.js';

const MiB = 1 << 20;
const ID_A = 'aaaaaaaa-0000-4000-8000-000000000001';
const ID_B = 'bbbbbbbb-0000-4000-8000-000000000002';

describe('container/init', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-cinit-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('creates a sparse labelled file', async () => {
    const path = join(dir, 'c0.img');
    const r = await initContainer(path, { size: 64 * MiB, id: ID_A, createdMs: 1000 });
    expect(r.created).to.equal(true);
    expect(r.medium).to.equal('file');
    expect(r.label).to.deep.equal({ id: ID_A, formatVersion: 1, size: 64 * MiB, dataOffset: MiB, segmentSize: MiB, createdMs: 1000 });
    const st = statSync(path);
    expect(st.size).to.equal(64 * MiB);
    expect(st.blocks * 512).to.be.lessThan(MiB); // sparse: only the label block
    const raw = readFileSync(path);
    expect(raw.subarray(0, 8).toString('latin1')).to.equal('TABULA-C');
    expect(decodeLabel(raw).id).to.equal(ID_A);
  });

  it('needs a size to create a file', async () => {
    const e = await rejects(initContainer(join(dir, 'none.img')));
    expect(e).to.be.instanceOf(ContainerInitError);
    expect((e as ContainerInitError).kind).to.equal('size');
    expect(e.message).to.match(/none\.img: does not exist: give a size/);
  });

  it('labels an existing file, keeping or growing its size', async () => {
    const path = join(dir, 'old.img');
    writeFileSync(path, Buffer.alloc(8 * MiB, 0x11));
    const r = await initContainer(path, { id: ID_A });
    expect(r.created).to.equal(false);
    expect(r.label.size).to.equal(8 * MiB);
    const raw = readFileSync(path);
    expect(raw[8191]).to.equal(0x11); // only the label block was written
    const grown = join(dir, 'grow.img');
    writeFileSync(grown, Buffer.alloc(2 * MiB));
    expect((await initContainer(grown, { size: 16 * MiB })).label.size).to.equal(16 * MiB);
    expect(statSync(grown).size).to.equal(16 * MiB);
  });

  it('refuses to shrink, and refuses sizes too small for one segment', async () => {
    const path = join(dir, 'big.img');
    writeFileSync(path, Buffer.alloc(8 * MiB));
    expect((await rejects(initContainer(path, { size: 4 * MiB }))).message).to.match(/refusing to shrink/);
    const tiny = join(dir, 'tiny.img');
    const e = await rejects(initContainer(tiny, { size: MiB }));
    expect((e as ContainerInitError).kind).to.equal('size');
    expect(e.message).to.match(/no room for one/);
    expect(() => statSync(tiny)).to.throw(); // the failed create left nothing behind
  });

  it('refuses to overwrite a labelled container without force, naming its id', async () => {
    const path = join(dir, 'c.img');
    await initContainer(path, { size: 8 * MiB, id: ID_A });
    const e = await rejects(initContainer(path, { id: ID_B }));
    expect(e).to.be.instanceOf(ContainerInitError);
    expect((e as ContainerInitError).kind).to.equal('labelled');
    expect((e as ContainerInitError).existingId).to.equal(ID_A);
    expect(e.message).to.contain(`already a container (id ${ID_A})`);
    expect(decodeLabel(readFileSync(path)).id).to.equal(ID_A);

    const r = await initContainer(path, { id: ID_B, force: true });
    expect(r.replaced).to.equal(ID_A);
    expect(decodeLabel(readFileSync(path)).id).to.equal(ID_B);
  });

  it('treats a damaged label as labelled too', async () => {
    const path = join(dir, 'c.img');
    await initContainer(path, { size: 8 * MiB, id: ID_A });
    const raw = readFileSync(path);
    raw[20] = (raw[20] as number) ^ 1;
    writeFileSync(path, raw);
    const e = await rejects(initContainer(path));
    expect((e as ContainerInitError).kind).to.equal('labelled');
    expect(e.message).to.match(/damaged container label .*checksum/);
    expect((await initContainer(path, { force: true, id: ID_B })).replaced).to.equal('');
  });

  it('refuses a directory', async () => {
    const e = await rejects(initContainer(dir));
    expect(e).to.be.instanceOf(ContainerInitError);
  });
});

describe('container/glob', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-glob-'));
    mkdirSync(join(dir, 'a/b'), { recursive: true });
    for (const f of ['x1.img', 'x2.img', 'y.img', '.hidden.img', 'a/x3.img', 'a/b/x4.img', 'a/b/z.raw']) {
      writeFileSync(join(dir, f), '');
    }
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const rel = (paths: string[]): string[] => paths.map((p) => p.slice(dir.length + 1));

  it('expands braces', () => {
    expect(expandBraces('/dev/{sdb,sdc}1')).to.deep.equal(['/dev/sdb1', '/dev/sdc1']);
    expect(expandBraces('a{b,c{d,e}}f')).to.deep.equal(['abf', 'acdf', 'acef']);
    expect(expandBraces('a{b}c')).to.deep.equal(['a{b}c']);
  });

  it('matches *, ?, [..], ** and braces; skips dot files', async () => {
    expect(rel(await expandGlob(join(dir, '*.img')))).to.deep.equal(['x1.img', 'x2.img', 'y.img']);
    expect(rel(await expandGlob(join(dir, 'x?.img')))).to.deep.equal(['x1.img', 'x2.img']);
    expect(rel(await expandGlob(join(dir, 'x[!1].img')))).to.deep.equal(['x2.img']);
    expect(rel(await expandGlob(join(dir, '**/x*.img')))).to.deep.equal(['a/b/x4.img', 'a/x3.img', 'x1.img', 'x2.img']);
    expect(rel(await expandGlob(join(dir, '{y,a/b/z}.*')))).to.deep.equal(['a/b/z.raw', 'y.img']);
    expect(rel(await expandGlob('x1.img', dir))).to.deep.equal(['x1.img']);
    expect(await expandGlob(join(dir, 'nope*'))).to.deep.equal([]);
    expect(await expandGlob(join(dir, 'nope.img'))).to.deep.equal([]);
  });
});

describe('container/scan', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-scan-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('finds labelled containers and reports every other path without throwing', async () => {
    await initContainer(join(dir, 'c1.img'), { size: 8 * MiB, id: ID_A });
    await initContainer(join(dir, 'c2.img'), { size: 16 * MiB, id: ID_B, segmentSize: 256 << 10 });
    writeFileSync(join(dir, 'plain.img'), Buffer.alloc(MiB, 7));
    writeFileSync(join(dir, 'empty.img'), '');
    // A container whose file lost its tail.
    await initContainer(join(dir, 'short.img'), { size: 8 * MiB });
    truncateSync(join(dir, 'short.img'), 4 * MiB);
    // A label that itself was cut short.
    writeFileSync(join(dir, 'stub.img'), readFileSync(join(dir, 'c1.img')).subarray(0, 100));
    // A byte-for-byte copy of c1 under another name.
    writeFileSync(join(dir, 'copy.img'), readFileSync(join(dir, 'c1.img')));
    symlinkSync(join(dir, 'c2.img'), join(dir, 'link.img'));
    mkdirSync(join(dir, 'sub.img'));

    const r = await scanContainers([join(dir, '*.img'), join(dir, 'c1.img'), join(dir, 'missing*.img')]);
    expect(r.found.map((c) => [c.path.slice(dir.length + 1), c.id, c.size, c.dataOffset, c.segmentSize])).to.deep.equal([
      ['c1.img', ID_A, 8 * MiB, MiB, MiB],
      ['c2.img', ID_B, 16 * MiB, MiB, 256 << 10],
    ]);
    const problems = r.problems.map((p) => [p.path.startsWith(dir) ? p.path.slice(dir.length + 1) : p.path, p.kind]);
    expect(problems).to.deep.equal([
      ['copy.img', 'duplicate'],
      ['empty.img', 'unlabelled'],
      ['plain.img', 'unlabelled'],
      ['short.img', 'truncated'],
      ['stub.img', 'truncated'],
      ['sub.img', 'unreadable'],
      ['missing*.img', 'no-match'],
    ]);
    const short = r.problems.find((p) => p.kind === 'truncated' && p.path.endsWith('short.img'));
    expect(short?.message).to.match(/label says 8388608 bytes but the file has 4194304/);
  });

  it('reports an unreadable file', async function () {
    if (process.getuid?.() === 0) this.skip(); // root reads anything
    const path = join(dir, 'c.img');
    await initContainer(path, { size: 8 * MiB });
    const { chmodSync } = await import('node:fs');
    chmodSync(path, 0);
    const r = await scanContainers([path]);
    expect(r.found).to.deep.equal([]);
    expect(r.problems.map((p) => p.kind)).to.deep.equal(['unreadable']);
    expect(r.problems[0]?.message).to.match(/EACCES/);
  });

  it('readContainerLabel throws typed errors', async () => {
    writeFileSync(join(dir, 'p.img'), Buffer.alloc(8192));
    const e = await rejects(readContainerLabel(join(dir, 'p.img')));
    expect(e).to.be.instanceOf(LabelError);
    expect((e as LabelError).kind).to.equal('unlabelled');
  });
});
