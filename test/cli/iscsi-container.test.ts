// `tabula container init|add` of an iSCSI LUN, as an admin runs them: real
// processes (a controller, `tabula target` with CHAP, each command its own
// process) and the initiator settings from TABULA_ISCSI_*.
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ContainerInfo } from '../../src/wire/proto-types.js';
import { startTarget, type RunningTarget } from '../support/target-process.js';
import { expectOneLineError, freeLoopbackPort, startDaemon, tabula, tabulaJson, tabulaOk, type Daemon } from './harness.js';

const MiB = 1 << 20;
const CHAP = { user: 'cli-user', secret: 'cli-secret-0001' };
const MUTUAL = { user: 'cli-target', secret: 'cli-secret-0002' };
const ENV = {
  ...process.env,
  TABULA_ISCSI_INITIATOR_NAME: 'iqn.2024-01.io.tabula:admin.cli-test',
  TABULA_ISCSI_MUTUAL_CHAP_USER: MUTUAL.user,
  TABULA_ISCSI_MUTUAL_CHAP_SECRET: MUTUAL.secret,
  TABULA_ISCSI_HOLD_TIMEOUT: '3',
};

describe('tabula CLI: container init and add of an iSCSI LUN', function () {
  this.timeout(300_000);
  let dir: string;
  let controller: Daemon | undefined;
  let target: RunningTarget | undefined;
  let ctl: string[];
  let url = '';
  let shown = '';

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-cli-iscsi-'));
    target = await startTarget({ kind: 'tabula', sizeBytes: 64 * MiB, label: 'cli-iscsi', chap: CHAP, mutualChap: MUTUAL });
    url = `iscsi://${CHAP.user}%${CHAP.secret}@${target.portal}/${target.iqn}/${target.lun}`;
    shown = `iscsi://${CHAP.user}@${target.portal}/${target.iqn}/${target.lun}`;
    const port = await freeLoopbackPort();
    ctl = ['--controller', `127.0.0.1:${port}`];
    controller = await startDaemon(['controller', '--db', join(dir, 'controller.db'), '--listen', `127.0.0.1:${port}`], /controller listening on/, join(dir, 'controller.log'));
  });

  after(async () => {
    await controller?.kill();
    await target?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('init labels the LUN at its capacity and prints the locator without its secret; a second init is refused', async () => {
    const out = await tabulaOk(['container', 'init', url], ENV);
    expect(out).to.match(new RegExp(`^container [0-9a-f-]{36} labelled at ${shown.replace(/[.]/g, '\\.')}: 64MiB, data from 1MiB, segments of 1MiB\\n$`));
    expect(out).to.not.include(CHAP.secret);
    const again = await tabula(['container', 'init', url, '--size', '32MiB'], ENV);
    expectOneLineError(again, /already a container \(id [0-9a-f-]{36}\); use force/);
    expect(again.stderr).to.not.include(CHAP.secret);
    const forced = await tabulaJson<{ id: string; path: string; size: number; replaced: string }>(['container', 'init', url, '--size', '32MiB', '--force'], ENV);
    expect(forced).to.include({ path: shown, size: 32 * MiB });
    expect(forced.replaced).to.match(/^[0-9a-f-]{36}$/);
  });

  it('add reads the label through the initiator and registers the redacted locator', async () => {
    const out = await tabulaOk(['container', 'add', url, ...ctl], ENV);
    expect(out).to.match(/^container [0-9a-f-]{36} added: 31MiB in 31 segments of 1MiB\n$/);
    const list = await tabulaJson<ContainerInfo[]>(['container', 'ls', ...ctl]);
    expect(list).to.have.lengthOf(1);
    expect(list[0]).to.include({ path: shown, size: 32 * MiB, segmentsTotal: 31 });
  });

  it('a wrong secret, an unknown target, an unreachable portal or a bad setting is one line, without the secret', async () => {
    const wrong = await tabula(['container', 'add', url.replace(CHAP.secret, 'not-the-secret'), ...ctl], ENV);
    expectOneLineError(wrong, /auth|CHAP|login/i);
    expect(wrong.stderr).to.not.include('not-the-secret');
    expectOneLineError(await tabula(['container', 'add', `iscsi://${target!.portal}/iqn.2026-11.x/0`, ...ctl], ENV), /not an iSCSI target name|login|not found/i);
    expectOneLineError(await tabula(['container', 'init', 'iscsi://127.0.0.1:1/iqn.2026-11.org.tabula:none/0'], ENV), /unreachable|ECONNREFUSED/);
    expectOneLineError(await tabula(['container', 'init', url], { ...ENV, TABULA_ISCSI_DIGEST: 'md5' }), /TABULA_ISCSI_DIGEST/);
  });
});
