// `tabula up` in a temp dir on free ports, with real iSCSI clients: it
// prints the URL once the LUN is served, libiscsi and qemu-img use it, the
// table grows as data lands, and a restart serves the same data.
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VdiskInfo } from '../../src/wire/proto-types.js';
import { requireTools, runOk } from '../support/tools.js';
import { freeLoopbackPort, startDaemon, tabulaJson, tabulaOk, type Daemon } from './harness.js';

const MiB = 1 << 20;
const IQN = 'iqn.2026-11.org.tabula:disk0';

describe('tabula up (all-in-one appliance)', function () {
  this.timeout(240_000);
  let dir: string;
  let up: Daemon | undefined;
  let upArgs: string[];
  let ctl: string[];
  let url: string;
  let portalPort: number;
  const image = (n: number): string => join(dir, `img${n}.raw`);

  before(async () => {
    requireTools(['iscsi-inq', 'qemu-img']);
    dir = mkdtempSync(join(tmpdir(), 'tabula-cli-up-'));
    portalPort = await freeLoopbackPort();
    const ctlPort = await freeLoopbackPort();
    ctl = ['--controller', `127.0.0.1:${ctlPort}`];
    upArgs = ['up', '--data', join(dir, 'data'), '--portal', `127.0.0.1:${portalPort}`, '--controller-listen', `127.0.0.1:${ctlPort}`];
    // Independent expected data: 4 MiB, then the same 4 MiB followed by 4 MiB more.
    const first = randomBytes(4 * MiB);
    writeFileSync(image(1), first);
    writeFileSync(image(2), Buffer.concat([first, randomBytes(4 * MiB)]));
  });

  after(async () => {
    await up?.kill();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('prints the iSCSI URL once the LUN is served, with the embedded layout under --data', async () => {
    up = await startDaemon([...upArgs, '--size', '64MiB'], /\n/, join(dir, 'up.log'));
    url = up.stdout.trim();
    expect(url).to.equal(`iscsi://127.0.0.1:${portalPort}/${IQN}/0`);
    const containers = readdirSync(join(dir, 'data', 'containers'));
    expect(containers).to.have.lengthOf(1);
    const st = statSync(join(dir, 'data', 'containers', containers[0]!));
    expect(st.size).to.equal(4 * 1024 * MiB); // max(2 × 64 MiB, 4 GiB)
    expect(st.blocks * 512).to.be.below(16 * MiB); // sparse
    expect(statSync(join(dir, 'data', 'controller.db')).isFile()).to.equal(true);
  });

  it('iscsi-inq answers on the URL', async () => {
    const r = await runOk('iscsi-inq', [url], { timeoutMs: 60_000 });
    expect(r.stdout).to.match(/Peripheral Device Type:DIRECT_ACCESS/);
  });

  it('qemu-img writes and reads the LUN, and vdisk table shows allocated segments growing', async () => {
    const table0 = await tabulaOk(['vdisk', 'table', 'disk0', ...ctl]);
    expect(table0.split('\n').slice(1).join('\n')).to.equal('0-63 zero\n');

    await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image(1), url], { timeoutMs: 120_000 });
    await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image(1), url], { timeoutMs: 120_000 });
    const table1 = (await tabulaOk(['vdisk', 'table', 'disk0', ...ctl])).split('\n');
    expect(table1[1]).to.match(/^0-3 normal c=[0-9a-f]{8} off=\d+$/);
    expect(table1[table1.length - 2]).to.equal('4-63 zero');
    expect((await tabulaJson<VdiskInfo>(['vdisk', 'show', 'disk0', ...ctl])).allocatedBytes).to.equal(4 * MiB);

    await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image(2), url], { timeoutMs: 120_000 });
    await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image(2), url], { timeoutMs: 120_000 });
    const table2 = (await tabulaOk(['vdisk', 'table', 'disk0', ...ctl])).split('\n');
    const normal = table2.filter((l) => / normal /.test(l)).map((l) => l.split(' ')[0]!);
    const covered = normal.reduce((n, r) => {
      const [a, b] = r.split('-').map(Number);
      return n + (b! - a! + 1);
    }, 0);
    expect(covered).to.equal(8);
    expect(table2[table2.length - 2]).to.equal('8-63 zero');
    const v = await tabulaJson<VdiskInfo>(['vdisk', 'show', 'disk0', ...ctl]);
    expect(v).to.include({ allocatedBytes: 8 * MiB, size: 64 * MiB, thin: true });
    expect(await tabulaOk(['check', ...ctl])).to.equal('ok: all invariants hold\n');
  });

  it('restarts on the same data dir: same DB, container, vdisk and data', async () => {
    expect(await up!.stop()).to.equal(0);
    const before = readdirSync(join(dir, 'data', 'containers'));
    up = await startDaemon(upArgs, /\n/, join(dir, 'up.log'));
    expect(up.stdout.trim()).to.equal(url);
    expect(readdirSync(join(dir, 'data', 'containers'))).to.deep.equal(before);
    const list = await tabulaJson<VdiskInfo[]>(['vdisk', 'ls', ...ctl]);
    expect(list.map((x) => [x.name, x.size, x.allocatedBytes])).to.deep.equal([['disk0', 64 * MiB, 8 * MiB]]);
    await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image(2), url], { timeoutMs: 120_000 });
  });

  it('grows disk0 when a later run asks for more, and exits 0 on SIGTERM', async () => {
    expect(await up!.stop()).to.equal(0);
    up = await startDaemon([...upArgs, '--size', '96MiB'], /\n/, join(dir, 'up.log'));
    expect((await tabulaJson<VdiskInfo>(['vdisk', 'show', 'disk0', ...ctl])).size).to.equal(96 * MiB);
    await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image(2), url], { timeoutMs: 120_000 });
    expect(await up.stop()).to.equal(0);
    expect(up.log()).to.match(/controller stopped/);
  });
});
