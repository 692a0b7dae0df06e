// `tabula container rm --dead` against real processes: a controller, an
// agent reaching three containers in three failure domains, and Tabula's
// own iSCSI initiator writing and reading a 2-copy vdisk. Declaring one of
// its containers dead drops its copies, the vdisk is rebuilt in the third
// domain (`vdisk repair --wait` follows it) with its data intact and
// `tabula check` clean; a container holding a one-copy vdisk's only copy is
// refused in one line.
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectSession, read16Cdb, senseKey, write16Cdb, type IscsiInitiatorSession, type ScsiRequest, type ScsiResult } from '../../src/iscsi/initiator/index.js';
import { deadRemovalLine, failedEvacuationLine } from '../../src/cli/container.js';
import type { ContainerInfo, VdiskInfo } from '../../src/wire/proto-types.js';
import { describeRun } from '../support/bounded-run.js';
import { expectOneLineError, freeLoopbackPort, startDaemon, tabula, tabulaJson, tabulaOk, type Daemon } from './harness.js';

const MiB = 1 << 20;
const BLOCK = 512;

/** A command run again while it gets UNIT ATTENTION (the first commands of a new nexus). */
async function run(s: IscsiInitiatorSession, req: ScsiRequest): Promise<ScsiResult> {
  for (let i = 0; ; i++) {
    const r = await s.execute(req);
    if (!(r.status === 2 && senseKey(r.sense) === 6) || i === 8) return r;
  }
}

describe('tabula CLI: container rm --dead', function () {
  this.timeout(300_000);
  let dir: string;
  let controller: Daemon | undefined;
  let agent: Daemon | undefined;
  let ctl: string[];
  let portal: { host: string; port: number };
  const ids: string[] = [];
  const data = randomBytes(4 * MiB);

  const session = (): Promise<IscsiInitiatorSession> =>
    connectSession({
      ...portal,
      targetName: 'iqn.2026-11.org.tabula:m',
      initiatorName: 'iqn.2026-11.org.tabula:cli-dead',
      loginTimeoutMs: 30_000,
      commandTimeoutMs: 60_000,
    });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-cli-dead-'));
    const port = await freeLoopbackPort();
    ctl = ['--controller', `127.0.0.1:${port}`];
    controller = await startDaemon(['controller', '--db', join(dir, 'controller.db'), '--listen', `127.0.0.1:${port}`], /controller listening on/, join(dir, 'controller.log'));
    const files = [1, 2, 3].map((i) => join(dir, `c${i}.img`));
    for (const f of files) ids.push((await tabulaJson<{ id: string }>(['container', 'init', f, '--size', '33MiB'])).id);
    // The one-copy vdisk is made while c1 is the only container: its one copy is there.
    await tabulaOk(['container', 'add', files[0]!, '--domain', 'd1', ...ctl]);
    await tabulaOk(['vdisk', 'create', 'one', '--size', '1MiB', '--thick', ...ctl]);
    await tabulaOk(['container', 'add', files[1]!, '--domain', 'd2', ...ctl]);
    await tabulaOk(['container', 'add', files[2]!, '--domain', 'd3', ...ctl]);
    portal = { host: '127.0.0.1', port: await freeLoopbackPort() };
    agent = await startDaemon(['agent', ...ctl, '--name', 'a1', '--portal', `${portal.host}:${portal.port}`, '--containers', ...files], /agent a1 serving on/, join(dir, 'agent.log'));
    for (let i = 0; i < 60; i++) {
      const list = await tabulaJson<ContainerInfo[]>(['container', 'ls', ...ctl]);
      if (list.every((c) => c.agents.includes('a1'))) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    await tabulaOk(['vdisk', 'create', 'm', '--size', '4MiB', '--thick', '--copies', '2', ...ctl]);
    await tabulaOk(['export', 'add', 'm', '--agent', 'a1', ...ctl]);
  });

  after(async () => {
    await agent?.kill();
    await controller?.kill();
    if (!process.env.TABULA_KEEP_TEST_DIR) rmSync(dir, { recursive: true, force: true });
    else process.stderr.write(`kept ${dir}\n`);
  });

  it('refuses, in one line, a container that holds the only copy of a one-copy vdisk', async () => {
    expectOneLineError(await tabula(['container', 'rm', ids[0]!, '--dead', ...ctl]), /only location of 1 segment of vdisk one \(1\).*would lose their data/);
    const c1 = (await tabulaJson<ContainerInfo[]>(['container', 'ls', ...ctl])).find((c) => c.id === ids[0]);
    expect(c1?.state).to.equal('online');
    // Without --dead, as before: a container in use is refused.
    expectOneLineError(await tabula(['container', 'rm', ids[0]!, ...ctl]), /still holds \d+ allocated segments/);
  });

  it('drops a dead container from a 2-copy vdisk; repair --wait makes it healthy again, data intact, check clean', async () => {
    let s = await session();
    try {
      const w = await run(s, { lun: 0, cdb: write16Cdb(0, data.length / BLOCK), dataOut: data });
      expect(w.status, `WRITE(16) sense ${w.sense?.toString('hex')}`).to.equal(0);
    } finally {
      await s.close();
    }
    // A container with copies of m but not one's only copy (c2 or c3; both when m avoided c1).
    const list = await tabulaJson<ContainerInfo[]>(['container', 'ls', ...ctl]);
    const victim = list.find((c) => c.id !== ids[0] && c.segmentsUsed > 0)!;
    expect(victim, 'a container of m besides c1').to.not.equal(undefined);
    const r = await tabula(['container', 'rm', victim.id, '--dead', ...ctl]);
    expect(r.exitCode, describeRun(r)).to.equal(0);
    expect(r.stdout).to.match(new RegExp(`^container ${victim.id} removed \\(dead\\): \\d+ cop(y|ies) dropped from vdisk m; being rebuilt elsewhere`));
    expect((await tabulaJson<ContainerInfo[]>(['container', 'ls', ...ctl])).map((c) => c.id)).to.not.include(victim.id);
    const repair = await tabula(['vdisk', 'repair', 'm', '--wait', ...ctl]);
    expect(repair.exitCode, describeRun(repair)).to.equal(0);
    expect(repair.stdout).to.match(/vdisk m: 2 copies, healthy/);
    const v = await tabulaJson<VdiskInfo>(['vdisk', 'show', 'm', ...ctl]);
    expect(v.health).to.deep.include({ copies: 2, segments: 4, degraded: 0, stale: 0 });
    s = await session();
    try {
      const rd = await run(s, { lun: 0, cdb: read16Cdb(0, data.length / BLOCK), dataInLength: data.length });
      expect(rd.status, `READ(16) sense ${rd.sense?.toString('hex')}`).to.equal(0);
      expect(Buffer.compare(rd.data as Buffer, data), 'data read back').to.equal(0);
    } finally {
      await s.close();
    }
    const check = await tabula(['check', ...ctl]);
    expect(check.exitCode, describeRun(check)).to.equal(0);
  });

  it('--json says what was dropped', async () => {
    const spare = (await tabulaJson<{ id: string }>(['container', 'init', join(dir, 'c4.img'), '--size', '9MiB'])).id;
    await tabulaOk(['container', 'add', join(dir, 'c4.img'), '--domain', 'd4', ...ctl]);
    const out = await tabulaJson<{ removed: string; dead: boolean; vdisks: string[]; legs: number }>(['container', 'rm', spare, '--dead', '--json', ...ctl]);
    expect(out).to.deep.equal({ removed: spare, dead: true, vdisks: [], legs: 0, staleLegs: 0 });
  });
});

describe('container rm --dead and evacuate of a failed container: what they print', () => {
  it('rm --dead names the copies dropped and the vdisks rebuilt', () => {
    expect(deadRemovalLine('c9', { vdisks: ['a', 'b'], legs: 5, staleLegs: 1 })).to.equal(
      'container c9 removed (dead): 5 copies and 1 stale copy dropped from vdisks a, b; being rebuilt elsewhere (vdisk show, vdisk repair --wait)',
    );
    expect(deadRemovalLine('c9', { vdisks: ['a'], legs: 1, staleLegs: 0 })).to.match(/^container c9 removed \(dead\): 1 copy dropped from vdisk a; /);
    expect(deadRemovalLine('c9', { vdisks: [], legs: 0, staleLegs: 0 })).to.equal('container c9 removed (dead): no vdisk had copies on it');
  });

  it('evacuate of a failed container says a rebuild started, not that no vdisk has segments on it', () => {
    expect(failedEvacuationLine('c9', 12, ['a', 'b'])).to.equal(
      'container c9 failed: 12 segments of 2 vdisks (a, b) are being rebuilt elsewhere (vdisk show; vdisk repair --wait follows one)',
    );
    expect(failedEvacuationLine('c9', 1, ['a'])).to.match(/^container c9 failed: 1 segment of 1 vdisk \(a\) is being rebuilt/);
    expect(failedEvacuationLine('c9', 0, [])).to.equal('container c9 failed: none of its copies waits for a rebuild');
  });
});
