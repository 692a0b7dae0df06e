// Failure domains and vdisk copies through the CLI, against a real
// controller process: `container add --domain`, `container set-domain`,
// `container ls`, `vdisk create --copies`, `vdisk ls`/`show`.
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ContainerInfo, VdiskInfo } from '../../src/wire/proto-types.js';
import { expectOneLineError, freeLoopbackPort, startDaemon, tabula, tabulaJson, tabulaOk, type Daemon } from './harness.js';

describe('tabula CLI: failure domains and mirrored vdisks', function () {
  this.timeout(300_000);
  let dir: string;
  let controller: Daemon | undefined;
  let ctl: string[];
  const ids: string[] = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-cli-mirrors-'));
    const port = await freeLoopbackPort();
    ctl = ['--controller', `127.0.0.1:${port}`];
    controller = await startDaemon(['controller', '--db', join(dir, 'controller.db'), '--listen', `127.0.0.1:${port}`], /controller listening on/, join(dir, 'controller.log'));
    for (const [name, size] of [
      ['a.img', '17MiB'],
      ['b.img', '17MiB'],
      ['c.img', '5MiB'],
    ] as const) {
      const label = await tabulaJson<{ id: string }>(['container', 'init', join(dir, name), '--size', size]);
      ids.push(label.id);
    }
  });

  after(async () => {
    await controller?.kill();
    if (!process.env.TABULA_KEEP_TEST_DIR) rmSync(dir, { recursive: true, force: true });
  });

  it('container add --domain names the domain; set-domain changes it; ls shows DOMAIN and json domain', async () => {
    expect(await tabulaOk(['container', 'add', join(dir, 'a.img'), '--domain', 'rack-1', ...ctl])).to.match(/added: 16MiB in 16 segments of 1MiB, failure domain rack-1\n$/);
    const b = await tabulaJson<ContainerInfo>(['container', 'add', join(dir, 'b.img'), ...ctl]);
    expect(b.domain).to.equal(`container:${ids[1]}`);
    await tabulaOk(['container', 'add', join(dir, 'c.img'), '--domain', 'rack-3', ...ctl]);
    expect(await tabulaOk(['container', 'set-domain', ids[1]!.slice(0, 8), 'rack-1', ...ctl])).to.equal(`container ${ids[1]} failure domain rack-1\n`);
    const text = await tabulaOk(['container', 'ls', ...ctl]);
    const [head, ...rows] = text.trimEnd().split('\n');
    expect(head!.split(/\s+/).slice(0, 3)).to.deep.equal(['ID', 'PATH', 'DOMAIN']);
    expect(rows.map((r) => r.split(/\s+/)[2])).to.deep.equal(['rack-1', 'rack-1', 'rack-3']);
    const list = await tabulaJson<ContainerInfo[]>(['container', 'ls', ...ctl]);
    expect(list.map((c) => c.domain)).to.deep.equal(['rack-1', 'rack-1', 'rack-3']);
    expectOneLineError(await tabula(['container', 'set-domain', ids[0]!, 'no spaces', ...ctl]), /bad failure domain "no spaces"/);
    expectOneLineError(await tabula(['container', 'set-domain', 'ffffffff', 'x', ...ctl]), /unknown container ffffffff/);
  });

  it('vdisk create --copies: thick gets every copy in distinct domains, or a one-line refusal; thin is created at once', async () => {
    // rack-1 has 32 free segments, rack-3 only 4: two copies of 8 segments do not fit.
    expectOneLineError(
      await tabula(['vdisk', 'create', 'big', '--size', '8MiB', '--thick', '--copies', '2', ...ctl]),
      /vdisk big: 2 copies of 8 segments need room in 2 failure domains, but only 1 has 8 free segments \(free per domain: rack-1 32, rack-3 4\)/,
    );
    expect(await tabulaOk(['vdisk', 'create', 'm2', '--size', '4MiB', '--thick', '--copies', '2', ...ctl])).to.equal(
      'vdisk m2 created: 4MiB thick, 2 copies, 4 segments of 1MiB, block size 512\n',
    );
    const thin = await tabulaJson<VdiskInfo>(['vdisk', 'create', 't3', '--size', '64MiB', '--copies', '3', ...ctl]);
    expect(thin).to.include({ copies: 3, thin: true, segmentsAllocated: 0 });
    expectOneLineError(await tabula(['vdisk', 'create', 'x', '--size', '1MiB', '--copies', '4', ...ctl]), /bad --copies 4: must be 1, 2 or 3/);
    await tabulaOk(['vdisk', 'create', 'plain', '--size', '1MiB', ...ctl]);

    const [head, ...rows] = (await tabulaOk(['vdisk', 'ls', ...ctl])).trimEnd().split('\n');
    const col = head!.split(/\s{2,}/).indexOf('COPIES');
    expect(col).to.equal(7);
    expect(rows.map((r) => [r.split(/\s+/)[0], r.split(/\s{2,}/)[col]])).to.deep.equal([
      ['m2', '2'],
      ['plain', '1'],
      ['t3', '3'],
    ]);
    expect(await tabulaOk(['vdisk', 'show', 'm2', ...ctl])).to.match(/^copies:\s+2$/m);
    const list = await tabulaJson<ContainerInfo[]>(['container', 'ls', ...ctl]);
    // Each of m2's segments has a leg in rack-1 and one in rack-3.
    expect(list.find((c) => c.id === ids[2])?.segmentsUsed).to.equal(4);
    expect(list.filter((c) => c.domain === 'rack-1').reduce((n, c) => n + c.segmentsUsed, 0)).to.equal(4);
    const check = await tabulaJson<{ ok: boolean; violations: string[] }>(['check', ...ctl]);
    expect(check.violations).to.deep.equal([]);
  });
});
