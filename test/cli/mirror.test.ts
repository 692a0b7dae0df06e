// The mirror verbs against real processes: `tabula vdisk set-copies`,
// `repair`, and health in `vdisk ls` / `show`, with a controller and an
// agent reaching two containers in two failure domains.
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ContainerInfo, VdiskInfo } from '../../src/wire/proto-types.js';
import { describeRun } from '../support/bounded-run.js';
import { expectOneLineError, freeLoopbackPort, startDaemon, tabula, tabulaJson, tabulaOk, type Daemon } from './harness.js';

describe('tabula CLI: mirrored vdisks (set-copies, repair, health)', function () {
  this.timeout(300_000);
  let dir: string;
  let controller: Daemon | undefined;
  let agent: Daemon | undefined;
  let ctl: string[];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-cli-mirror-'));
    const port = await freeLoopbackPort();
    ctl = ['--controller', `127.0.0.1:${port}`];
    controller = await startDaemon(
      ['controller', '--db', join(dir, 'controller.db'), '--listen', `127.0.0.1:${port}`, '--rebuild-delay', '0'],
      /controller listening on/,
      join(dir, 'controller.log'),
    );
    const files = [join(dir, 'c1.img'), join(dir, 'c2.img')];
    for (const f of files) {
      await tabulaOk(['container', 'init', f, '--size', '64MiB']);
      await tabulaOk(['container', 'add', f, ...ctl]);
    }
    // Both files sit on one agent's host (one default domain): name a domain each.
    const ids = (await tabulaJson<ContainerInfo[]>(['container', 'ls', ...ctl])).map((c) => c.id);
    for (const [i, id] of ids.entries()) await tabulaOk(['container', 'set-domain', id, `d${i + 1}`, ...ctl]);
    const portal = `127.0.0.1:${await freeLoopbackPort()}`;
    agent = await startDaemon(['agent', ...ctl, '--name', 'a1', '--portal', portal, '--containers', ...files], /agent a1 serving on/, join(dir, 'agent.log'));
    for (let i = 0; i < 60; i++) {
      const list = await tabulaJson<ContainerInfo[]>(['container', 'ls', ...ctl]);
      if (list.every((c) => c.agents.includes('a1'))) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    await tabulaOk(['vdisk', 'create', 'm', '--size', '4MiB', '--thick', ...ctl]);
  });

  after(async () => {
    await agent?.kill();
    await controller?.kill();
    if (!process.env.TABULA_KEEP_TEST_DIR) rmSync(dir, { recursive: true, force: true });
    else process.stderr.write(`kept ${dir}\n`);
  });

  it('a one-copy listing has no HEALTH column; show says 1 copy, healthy', async () => {
    const head = (await tabulaOk(['vdisk', 'ls', ...ctl])).split('\n')[0]!;
    expect(head.split(/\s{2,}/)).to.not.include('HEALTH');
    expect(await tabulaOk(['vdisk', 'show', 'm', ...ctl])).to.match(/^health:\s+1 copy, healthy \(4 segments\)$/m);
  });

  it('set-copies 2 --wait rebuilds every segment and ends healthy', async () => {
    const r = await tabula(['vdisk', 'set-copies', 'm', '2', '--wait', ...ctl]);
    expect(r.exitCode, describeRun(r)).to.equal(0);
    expect(r.stdout).to.match(/^vdisk m now has 2 copies/m);
    expect(r.stdout.trimEnd().split('\n').pop()).to.equal('vdisk m: 2 copies, healthy (4 segments)');
    const v = await tabulaJson<VdiskInfo>(['vdisk', 'show', 'm', ...ctl]);
    expect(v.health).to.deep.include({ copies: 2, segments: 4, degraded: 0, stale: 0, rebuilding: null, blocked: '' });
    const [head, row] = (await tabulaOk(['vdisk', 'ls', ...ctl])).trimEnd().split('\n');
    const cols = head!.split(/\s{2,}/);
    expect(cols).to.include('HEALTH');
    expect(row!.split(/\s{2,}/)[cols.indexOf('HEALTH')]).to.equal('healthy');
    const check = await tabula(['check', ...ctl]);
    expect(check.exitCode, describeRun(check)).to.equal(0);
  });

  it('refuses bad counts and more copies than domains, in one line', async () => {
    expectOneLineError(await tabula(['vdisk', 'set-copies', 'm', '4', ...ctl]), /bad copies 4: give 1, 2 or 3/);
    expectOneLineError(await tabula(['vdisk', 'set-copies', 'm', '3', ...ctl]), /3 copies need containers in 3 failure domains.*in 2 \(d1, d2\)/);
    expectOneLineError(await tabula(['vdisk', 'set-copies', 'ghost', '2', ...ctl]), /unknown vdisk ghost/);
  });

  it('repair --wait of a healthy vdisk returns at once; set-copies 1 drops the second copy', async () => {
    const r = await tabula(['vdisk', 'repair', 'm', '--wait', ...ctl]);
    expect(r.exitCode, describeRun(r)).to.equal(0);
    expect(r.stdout).to.match(/vdisk m: 2 copies, healthy/);
    const one = await tabulaJson<VdiskInfo>(['vdisk', 'set-copies', 'm', '1', ...ctl]);
    expect(one.health).to.deep.include({ copies: 1, segments: 4, degraded: 0 });
    const check = await tabula(['check', ...ctl]);
    expect(check.exitCode, describeRun(check)).to.equal(0);
  });
});
