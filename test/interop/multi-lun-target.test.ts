// `tabula target` with several files (a storage node): each --file is one
// LUN of one target, LUN 0..n-1 in order, each printed as its own iscsi://
// URL. Real initiators see every LUN with its own size and identity
// (iscsi-ls, iscsi-inq, iscsi-readcapacity16), and qemu-img writes and reads
// back each LUN without touching the others' files. The appliance's storage
// role is the same target started from /etc/tabula/tabula.yaml.
import { expect } from 'chai';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireTools, runOk } from '../support/tools.js';
import { runBounded, describeRun } from '../support/bounded-run.js';
import { LOOPBACK, freeLoopbackPort } from '../support/process.js';
import { startDaemon, runTabula, tabulaLauncher, type Daemon } from '../support/tabula-process.js';
import { parseIscsiLs, parseSerial, parseReadCapacity16, parseDesignators } from '../support/client-output.js';
import { writeRandomImage } from '../support/random-image.js';

const MiB = 1024 ** 2;
const QUICK = 30_000;
const IQN = 'iqn.2026-11.org.tabula:storage-test';

interface Served {
  daemon: Daemon;
  dir: string;
  portal: string;
  urls: string[];
  files: string[];
}

async function serve(label: string, sizes: string[], fileCount: number, extra: string[] = []): Promise<Served> {
  const dir = mkdtempSync(join(tmpdir(), `tabula-multilun-${label}-`));
  const port = await freeLoopbackPort();
  const portal = `${LOOPBACK}:${port}`;
  const files = Array.from({ length: fileCount }, (_, i) => join(dir, `lun${i}.img`));
  const args = ['target', '--portal', portal, '--iqn', IQN, ...files.flatMap((f) => ['--file', f]), ...sizes.flatMap((s) => ['--size', s]), ...extra];
  const lastUrl = new RegExp(`iscsi://${portal.replace(/\./g, '\\.')}/${IQN}/${fileCount - 1}\\n`);
  const daemon = await startDaemon(args, { label: `tabula target (${label})`, logFile: join(dir, 'target.log'), ready: lastUrl, readyMs: 60_000 });
  const urls = daemon.stdout.split('\n').filter((l) => l.startsWith('iscsi://'));
  return { daemon, dir, portal, urls, files };
}

describe('interop: tabula target with several LUNs', function () {
  this.timeout(240_000);
  const sizes = [64 * MiB, 32 * MiB, 16 * MiB];
  let s: Served | undefined;
  let failed = false;
  const served = (): Served => {
    if (s === undefined) throw new Error('target not started');
    return s;
  };

  before(async function () {
    this.timeout(90_000);
    requireTools(['timeout', 'iscsi-ls', 'iscsi-inq', 'iscsi-readcapacity16', 'qemu-img']);
    s = await serve('three', sizes.map((n) => String(n)), sizes.length);
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });
  after(async function () {
    this.timeout(30_000);
    if (s === undefined) return;
    await s.daemon.stop();
    if (!failed) rmSync(s.dir, { recursive: true, force: true });
  });

  it('prints one iscsi:// URL per LUN, LUN 0..n-1 in --file order', function () {
    expect(served().urls).to.deep.equal(sizes.map((_, lun) => `iscsi://${served().portal}/${IQN}/${lun}`));
    // Each file was created sparse at its own size.
    served().files.forEach((f, i) => expect(statSync(f).size).to.equal(sizes[i]));
  });

  it('iscsi-ls lists one target with every LUN', async function () {
    const r = await runOk('iscsi-ls', ['-s', `iscsi://${served().portal}`], { timeoutMs: QUICK });
    const ls = parseIscsiLs(r.stdout);
    expect(ls.targets.map((t) => t.name)).to.deep.equal([IQN]);
    expect(ls.luns.map((l) => l.lun)).to.deep.equal([0, 1, 2]);
    for (const l of ls.luns) expect(l.type).to.equal('DIRECT_ACCESS');
  });

  it('iscsi-readcapacity16 reports each LUN at the size of its own file', async function () {
    for (const [lun, url] of served().urls.entries()) {
      const cap = parseReadCapacity16((await runOk('iscsi-readcapacity16', [url], { timeoutMs: QUICK })).stdout);
      expect(cap.totalBytes, `LUN ${lun}`).to.equal(sizes[lun]);
      expect(cap.blockLength).to.equal(512);
    }
  });

  it('iscsi-inq: every LUN is a disk with a serial number and designators of its own', async function () {
    const serials = new Set<string>();
    for (const url of served().urls) {
      const std = (await runOk('iscsi-inq', [url], { timeoutMs: QUICK })).stdout;
      expect(std).to.match(/Peripheral Device Type:\s*0\b|DIRECT_ACCESS|Device Type:\s*0/i);
      serials.add(parseSerial((await runOk('iscsi-inq', ['-e', '1', '-c', '128', url], { timeoutMs: QUICK })).stdout));
      expect(parseDesignators((await runOk('iscsi-inq', ['-e', '1', '-c', '131', url], { timeoutMs: QUICK })).stdout)).to.not.be.empty;
    }
    expect(serials.size).to.equal(3);
  });

  it('qemu-img writes each LUN and reads it back; the other LUNs\' files are untouched', async function () {
    const t = served();
    const images: string[] = [];
    for (const [lun, size] of sizes.entries()) {
      const img = join(t.dir, `image${lun}.raw`);
      await writeRandomImage(img, size, 1000 + lun);
      images.push(img);
    }
    for (const [lun, url] of t.urls.entries()) {
      await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', images[lun] as string, url], { timeoutMs: 120_000 });
      const cmp = await runBounded('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', images[lun] as string, url], { timeoutMs: 120_000 });
      expect(cmp.exitCode, describeRun(cmp)).to.equal(0);
    }
    // Byte for byte on the backing files too: LUN i's data went to file i only.
    for (const [lun, f] of t.files.entries()) {
      expect(readFileSync(f).equals(readFileSync(images[lun] as string)), `file of LUN ${lun}`).to.equal(true);
    }
  });

  it('one --size for several files gives every file that size', async function () {
    const one = await serve('one-size', ['8MiB'], 2);
    try {
      expect(one.urls).to.have.lengthOf(2);
      for (const f of one.files) expect(statSync(f).size).to.equal(8 * MiB);
      for (const url of one.urls) {
        const cap = parseReadCapacity16((await runOk('iscsi-readcapacity16', [url], { timeoutMs: QUICK })).stdout);
        expect(cap.totalBytes).to.equal(8 * MiB);
      }
    } finally {
      await one.daemon.stop();
      rmSync(one.dir, { recursive: true, force: true });
    }
  });

  it('refuses a --size count that matches neither one nor every file, and a file given twice', async function () {
    const dir = mkdtempSync(join(tmpdir(), 'tabula-multilun-bad-'));
    try {
      const [a, b, c] = ['a', 'b', 'c'].map((n) => join(dir, `${n}.img`)) as [string, string, string];
      const r1 = await runTabula(tabulaLauncher(), ['target', '--portal', '127.0.0.1:0', '--file', a, '--file', b, '--file', c, '--size', '1MiB', '--size', '2MiB'], { timeoutMs: QUICK });
      expect(r1.exitCode, describeRun(r1)).to.not.equal(0);
      expect(r1.stderr).to.match(/--size given 2 times for 3 files/);
      const r2 = await runTabula(tabulaLauncher(), ['target', '--portal', '127.0.0.1:0', '--file', a, '--file', a, '--size', '1MiB'], { timeoutMs: QUICK });
      expect(r2.exitCode, describeRun(r2)).to.not.equal(0);
      expect(r2.stderr).to.match(/given twice/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('interop: the appliance storage role (systemd-main.js storage)', function () {
  this.timeout(180_000);
  const chap = { user: 'agents', secret: 'storage-secret-1' };
  let dir = '';
  let node: Daemon | undefined;
  let portal = '';
  let failed = false;

  before(async function () {
    this.timeout(90_000);
    requireTools(['timeout', 'iscsi-ls', 'iscsi-readcapacity16']);
    dir = mkdtempSync(join(tmpdir(), 'tabula-storage-role-'));
    portal = `${LOOPBACK}:${await freeLoopbackPort()}`;
    writeFileSync(join(dir, 'disk1.img'), Buffer.alloc(0));
    const config = join(dir, 'tabula.yaml');
    writeFileSync(
      config,
      [
        'role: storage',
        `data-dir: ${join(dir, 'data')}`,
        'storage:',
        '  luns:',
        `    - { path: ${join(dir, 'disk0.img')}, size: 16MiB }`,
        `    - { path: ${join(dir, 'disk1.img')}, size: 8MiB }`,
        `  portal: ${portal}`,
        `  iqn: ${IQN}`,
        'security:',
        `  chap: { user: ${chap.user}, secret: ${chap.secret} }`,
        '',
      ].join('\n'),
    );
    // The unit's entry (systemd-main.js ROLE CONFIG), from the sources.
    const entry = join(process.cwd(), 'src', 'daemon', 'systemd-main.ts');
    node = await startDaemon([config], {
      label: 'storage node',
      launcher: ['--import', 'tsx', entry, 'storage'],
      logFile: join(dir, 'node.log'),
      ready: /tabula: ready: storage node serving 2 LUNs: .*\n/,
      readyMs: 60_000,
    });
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });
  after(async function () {
    this.timeout(30_000);
    await node?.stop();
    if (!failed && dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  it('serves its data disks as LUN 0 and 1 of one target, in the configured order and sizes', async function () {
    expect(node?.stdout).to.include(`iscsi://${portal}/${IQN}/0 iscsi://${portal}/${IQN}/1`);
    const ls = parseIscsiLs((await runOk('iscsi-ls', ['-s', `iscsi://${chap.user}%${chap.secret}@${portal}`], { timeoutMs: QUICK })).stdout);
    expect(ls.targets.map((t) => t.name)).to.deep.equal([IQN]);
    expect(ls.luns.map((l) => l.lun)).to.deep.equal([0, 1]);
    for (const [lun, bytes] of [16 * MiB, 8 * MiB].entries()) {
      const url = `iscsi://${chap.user}%${chap.secret}@${portal}/${IQN}/${lun}`;
      expect(parseReadCapacity16((await runOk('iscsi-readcapacity16', [url], { timeoutMs: QUICK })).stdout).totalBytes).to.equal(bytes);
    }
  });

  it('security.chap applies: a login without it is refused', async function () {
    const r = await runBounded('iscsi-readcapacity16', [`iscsi://${portal}/${IQN}/0`], { timeoutMs: QUICK });
    expect(r.exitCode, describeRun(r)).to.not.equal(0);
  });
});
