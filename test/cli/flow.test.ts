// The admin flow against real processes: `tabula controller` and `tabula
// agent` as daemons, every admin command as its own process.
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AgentInfo, CheckReply, ContainerInfo, ExportInfo, FaultInfo, TableReply, VdiskInfo } from '../../src/wire/proto-types.js';
import { describeRun } from '../support/bounded-run.js';
import { expectOneLineError, freeLoopbackPort, startDaemon, tabula, tabulaJson, tabulaOk, type Daemon } from './harness.js';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const MiB = 1 << 20;

describe('tabula CLI: admin flow against a controller and an agent', function () {
  this.timeout(300_000);
  let dir: string;
  let controller: Daemon | undefined;
  let agent: Daemon | undefined;
  let ctl: string[];
  let containerId = '';

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-cli-flow-'));
    const port = await freeLoopbackPort();
    ctl = ['--controller', `127.0.0.1:${port}`];
    controller = await startDaemon(['controller', '--db', join(dir, 'controller.db'), '--listen', `127.0.0.1:${port}`], /controller listening on/, join(dir, 'controller.log'));
    expect(controller.stdout).to.equal(`controller listening on 127.0.0.1:${port}\n`);
  });

  after(async () => {
    await agent?.kill();
    await controller?.kill();
    if (!process.env.TABULA_KEEP_TEST_DIR) rmSync(dir, { recursive: true, force: true });
    else process.stderr.write(`kept ${dir}\n`);
  });

  it('container init makes a sparse labelled file and refuses to relabel it without --force', async () => {
    const p = join(dir, 'c1.img');
    const label = await tabulaJson<{ id: string; size: number; dataOffset: number; segmentSize: number; created: boolean }>(['container', 'init', p, '--size', '256MiB']);
    expect(label.id).to.match(UUID_RE);
    expect(label).to.include({ size: 256 * MiB, segmentSize: MiB, created: true });
    expect(statSync(p).size).to.equal(256 * MiB);
    expect(statSync(p).blocks * 512).to.be.below(4 * MiB); // sparse
    containerId = label.id;

    expectOneLineError(await tabula(['container', 'init', p, '--size', '256MiB']), new RegExp(`already a container \\(id ${label.id}\\).*force`));

    const other = join(dir, 'c2.img');
    await tabulaOk(['container', 'init', other, '--size', '64MiB']);
    const again = await tabulaJson<{ id: string; replaced: string }>(['container', 'init', other, '--force']);
    expect(again.replaced).to.match(UUID_RE);
    expect(again.id).to.not.equal(again.replaced);
  });

  it('container add registers the label with the controller; ls shows capacity, allocated, free', async () => {
    const out = await tabulaOk(['container', 'add', join(dir, 'c1.img'), ...ctl]);
    expect(out).to.match(new RegExp(`^container ${containerId} added: 255MiB in 255 segments of 1MiB\\n$`));
    expectOneLineError(await tabula(['container', 'add', join(dir, 'c1.img'), ...ctl]), /already registered/);

    const list = await tabulaJson<ContainerInfo[]>(['container', 'ls', ...ctl]);
    expect(list).to.have.lengthOf(1);
    expect(list[0]).to.include({ id: containerId, size: 256 * MiB, segmentsTotal: 255, segmentsUsed: 0 });
    const text = await tabulaOk(['container', 'ls', ...ctl]);
    const [head, row] = text.trimEnd().split('\n');
    expect(head!.split(/\s+/)).to.deep.equal(['ID', 'PATH', 'CAPACITY', 'ALLOCATED', 'SHARED', 'EXCLUSIVE', 'FREE', 'STATE', 'AGENTS']);
    expect(row!.split(/\s+/)).to.deep.equal([containerId, join(dir, 'c1.img'), '255MiB', '0B', '0B', '0B', '255MiB', 'online', '-']);
  });

  it('an agent registers and agent ls shows it online with its portal and container', async () => {
    const portal = `127.0.0.1:${await freeLoopbackPort()}`;
    agent = await startDaemon(
      ['agent', ...ctl, '--name', 'a1', '--portal', portal, '--containers', join(dir, 'c1.img')],
      /agent a1 serving on/,
      join(dir, 'agent.log'),
    );
    let agents: AgentInfo[] = [];
    for (let i = 0; i < 60; i++) {
      agents = await tabulaJson<AgentInfo[]>(['agent', 'ls', ...ctl]);
      if (agents.some((a) => a.online)) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(agents).to.have.lengthOf(1);
    expect(agents[0]).to.deep.include({ name: 'a1', online: true, portals: [portal], containers: [containerId] });
    const text = await tabulaOk(['agent', 'ls', ...ctl]);
    // Issue 15 added the agent's number and host (agent.host-id; default /etc/machine-id or the host name).
    expect(text).to.match(new RegExp(`^a1\\s+1\\s+\\S+\\s+online\\s+\\S+\\s+${portal}\\s+${containerId.slice(0, 8)}$`, 'm'));
  });

  it('vdisk create, ls, show: provisioned vs allocated, thin and thick', async () => {
    const thin = await tabulaJson<VdiskInfo>(['vdisk', 'create', 'v1', '--size', '64MiB', ...ctl]);
    expect(thin).to.include({ name: 'v1', size: 64 * MiB, thin: true, blockSize: 512, segmentSize: MiB, segmentCount: 64, allocatedBytes: 0 });
    const thick = await tabulaJson<VdiskInfo>(['vdisk', 'create', 'v2', '--size', '4MiB', '--thick', '--block-size', '4096', ...ctl]);
    expect(thick).to.include({ name: 'v2', size: 4 * MiB, thin: false, blockSize: 4096, segmentSize: MiB, segmentCount: 4, allocatedBytes: 4 * MiB });
    const big = await tabulaJson<VdiskInfo>(['vdisk', 'create', 'v3', '--size', '1TiB', ...ctl]);
    expect(big).to.include({ size: 1024 ** 4, segmentSize: MiB, segmentCount: 1024 * 1024, thin: true });
    await tabulaOk(['vdisk', 'rm', 'v3', ...ctl]);
    // A vdisk allocates only from containers of its own segment size.
    expectOneLineError(
      await tabula(['vdisk', 'create', 'v4', '--size', '1TiB', '--segment-size', '64MiB', ...ctl]),
      /no online container has 64MiB segments \(containers have 1MiB\)/,
    );

    expectOneLineError(await tabula(['vdisk', 'create', 'v1', '--size', '1MiB', ...ctl]), /vdisk v1 already exists/);
    expectOneLineError(await tabula(['vdisk', 'create', 'big', '--size', '1GiB', '--thick', ...ctl]), /container full: vdisk big needs/);
    expectOneLineError(await tabula(['vdisk', 'create', 'bad/name', '--size', '1MiB', ...ctl]), /bad vdisk name "bad\/name"/);

    const text = await tabulaOk(['vdisk', 'ls', ...ctl]);
    const lines = text.trimEnd().split('\n');
    expect(lines[0]!.split(/\s{2,}/)).to.deep.equal(['NAME', 'KIND', 'PROVISIONED', 'ALLOCATED', 'SHARED', 'EXCLUSIVE', 'TYPE', 'BLOCK', 'SEGMENT', 'VERSION', 'EXPORTS']);
    expect(lines[1]).to.match(/^v1\s+vdisk\s+64MiB\s+0B \(0%\)\s+0B\s+0B\s+thin\s+512\s+1MiB\s+1\s+-$/);
    expect(lines[2]).to.match(/^v2\s+vdisk\s+4MiB\s+4MiB \(100%\)\s+0B\s+4MiB\s+thick\s+4096\s+1MiB\s+1\s+-$/);

    const show = await tabulaOk(['vdisk', 'show', 'v1', ...ctl]);
    expect(show).to.match(/^provisioned:\s+64MiB \(67108864 bytes\)$/m);
    expect(show).to.match(/^allocated:\s+0B \(0%\), 0 of 64 segments$/m);
    expect(show).to.match(/^segment states:\s+zero=64$/m);
    const list = await tabulaJson<VdiskInfo[]>(['vdisk', 'ls', ...ctl]);
    expect(list.map((v) => v.name)).to.deep.equal(['v1', 'v2']);
  });

  it('vdisk table prints the extents', async () => {
    expect(await tabulaOk(['vdisk', 'table', 'v1', ...ctl])).to.equal('# vdisk v1 version 1: 64 segments of 1048576 bytes, block size 512\n0-63 zero\n');
    const t = await tabulaJson<TableReply>(['vdisk', 'table', 'v2', ...ctl]);
    expect(t).to.include({ version: 1, segmentCount: 4, segmentSize: MiB, blockSize: 4096 });
    expect(t.extents).to.have.lengthOf(1);
    expect(t.extents[0]).to.include({ first: 0, count: 4, state: 'normal', container: containerId });
    const full = await tabulaOk(['vdisk', 'table', 'v2', '--full-ids', ...ctl]);
    expect(full).to.match(new RegExp(`^0-3 normal c=${containerId} off=\\d+$`, 'm'));
  });

  it('export add and ls; unknown agents and vdisks are named', async () => {
    const e = await tabulaJson<ExportInfo & { agentOnline: boolean }>(['export', 'add', 'v1', '--agent', 'a1', ...ctl]);
    expect(e).to.include({ vdiskName: 'v1', agent: 'a1', targetIqn: 'iqn.2026-11.org.tabula:v1', lun: 0, agentOnline: true });
    const e2 = await tabulaJson<ExportInfo>(['export', 'add', 'v2', '--agent', 'a1', '--iqn', 'iqn.2026-11.org.example:two', '--lun', '3', ...ctl]);
    expect(e2).to.include({ targetIqn: 'iqn.2026-11.org.example:two', lun: 3 });

    expectOneLineError(await tabula(['export', 'add', 'v1', '--agent', 'nobody', ...ctl]), /unknown agent nobody/);
    expectOneLineError(await tabula(['export', 'add', 'ghost', '--agent', 'a1', ...ctl]), /unknown vdisk ghost/);
    expectOneLineError(await tabula(['export', 'add', 'v1', '--agent', 'a1', ...ctl]), /already exported on agent a1/);
    expectOneLineError(await tabula(['export', 'add', 'v1', '--agent', 'a1', '--lun', '20000', ...ctl]), /bad --lun 20000/);

    const list = await tabulaJson<ExportInfo[]>(['export', 'ls', ...ctl]);
    expect(list.map((x) => `${x.vdiskName}@${x.agent}:${x.targetIqn}/${x.lun}`)).to.have.members([
      'v1@a1:iqn.2026-11.org.tabula:v1/0',
      'v2@a1:iqn.2026-11.org.example:two/3',
    ]);
    const text = await tabulaOk(['export', 'ls', '--vdisk', 'v1', ...ctl]);
    expect(text.trimEnd().split('\n')[1]).to.match(/^v1\s+a1\s+iqn\.2026-11\.org\.tabula:v1\s+0\s+rw\s+\d+\s+no\s+any\s+optimized\s+(active\/optimized|transitioning)$/);
    expect(list.map((x) => x.alua)).to.deep.equal(['optimized', 'optimized']);
    expectOneLineError(await tabula(['export', 'add', 'v2', '--agent', 'a1', '--alua', 'standby', ...ctl]), /alua/i);
  });

  it('segment set-state changes the table; out-of-range segments and unknown vdisks are named', async () => {
    expect(await tabulaOk(['segment', 'set-state', 'v1', '10', '--state', 'error', ...ctl])).to.match(/^vdisk v1 segment 10 set to error: table version \d+\n$/);
    const t = await tabulaJson<TableReply>(['segment', 'set-state', 'v1', '20-23', '--state', 'invalid', ...ctl]);
    const extents = t.extents as unknown as { first: number; count: number; state: string }[];
    expect(extents.map((x) => `${x.first}+${x.count} ${x.state}`)).to.deep.equal(['0+10 zero', '10+1 error', '11+9 zero', '20+4 invalid', '24+40 zero']);
    const text = await tabulaOk(['vdisk', 'table', 'v1', ...ctl]);
    expect(text.split('\n').slice(1, 6)).to.deep.equal(['0-9 zero', '10-10 error', '11-19 zero', '20-23 invalid', '24-63 zero']);
    expect(await tabulaOk(['segment', 'set-state', 'v1', '20-23', '--state', 'ZERO', ...ctl])).to.match(/^vdisk v1 segments 20-23 set to zero: /);
    await tabulaOk(['segment', 'set-state', 'v1', '10', '--state', 'zero', ...ctl]);
    expect(await tabulaOk(['vdisk', 'table', 'v1', ...ctl])).to.match(/\n0-63 zero\n$/);

    expectOneLineError(await tabula(['segment', 'set-state', 'v1', '64', '--state', 'zero', ...ctl]), /segments 64-64 out of range: vdisk v1 has segments 0-63/);
    expectOneLineError(await tabula(['segment', 'set-state', 'nope', '1', '--state', 'zero', ...ctl]), /unknown vdisk nope/);
  });

  it('vdisk show, table, resize and rm name an unknown vdisk', async () => {
    const rs = await Promise.all([
      tabula(['vdisk', 'show', 'ghost', ...ctl]),
      tabula(['vdisk', 'table', 'ghost', ...ctl]),
      tabula(['vdisk', 'resize', 'ghost', '--size', '1GiB', ...ctl]),
      tabula(['vdisk', 'rm', 'ghost', ...ctl]),
      tabula(['fault', 'ls', '--vdisk', 'ghost', ...ctl]),
    ]);
    for (const r of rs) expectOneLineError(r, /unknown vdisk ghost/);
  });

  it('vdisk resize grows and refuses to shrink', async () => {
    const v = await tabulaJson<VdiskInfo>(['vdisk', 'resize', 'v1', '--size', '96MiB', ...ctl]);
    expect(v).to.include({ size: 96 * MiB, segmentCount: 96 });
    expectOneLineError(await tabula(['vdisk', 'resize', 'v1', '--size', '32MiB', ...ctl]), /32MiB is smaller than its 96MiB; shrinking is not supported/);
  });

  it('fault ls parses as JSON and prints a table or "no faults"', async () => {
    const faults = await tabulaJson<FaultInfo[]>(['fault', 'ls', '--limit', '5', ...ctl]);
    expect(faults).to.be.an('array');
    const text = await tabulaOk(['fault', 'ls', '--vdisk', 'v1', ...ctl]);
    expect(text === 'no faults\n' || text.startsWith('ID ')).to.equal(true, text);
  });

  it('check passes, and names each violation with exit 1 when the database breaks an invariant', async () => {
    expect(await tabulaOk(['check', ...ctl])).to.equal('ok: all invariants hold\n');
    expect(await tabulaJson<CheckReply>(['check', ...ctl])).to.deep.equal({ ok: true, violations: [] });

    // Break the reference count of one of v2's segments behind the controller's back.
    const db = new Database(join(dir, 'controller.db'));
    try {
      const row = db.prepare('SELECT container_id AS c, offset AS o FROM container_segments LIMIT 1').get() as { c: string; o: number };
      db.prepare('UPDATE container_segments SET refcount = refcount + 1 WHERE container_id = ? AND offset = ?').run(row.c, row.o);
      const r = await tabula(['check', ...ctl]);
      expect(r.exitCode, describeRun(r)).to.equal(1);
      const lines = r.stdout.trimEnd().split('\n');
      expect(lines.length).to.be.at.least(1);
      for (const l of lines) expect(l).to.match(/^violation: /);
      expect(r.stdout).to.match(new RegExp(`container ${row.c} offset ${row.o} has reference count 2 but 1 table entries reference it`));
      expectOneLineError(r, /check found \d+ invariant violations?/);
      const j = await tabula(['check', '--json', ...ctl]);
      expect(j.exitCode).to.equal(1);
      expect((JSON.parse(j.stdout) as CheckReply).ok).to.equal(false);
      db.prepare('UPDATE container_segments SET refcount = refcount - 1 WHERE container_id = ? AND offset = ?').run(row.c, row.o);
    } finally {
      db.close();
    }
    expect(await tabulaOk(['check', ...ctl])).to.equal('ok: all invariants hold\n');
  });

  it('export rm, vdisk rm and container rm, in the order the controller demands', async () => {
    expectOneLineError(await tabula(['vdisk', 'rm', 'v2', ...ctl]), /vdisk v2 is exported on a1; remove the exports first/);
    expectOneLineError(await tabula(['container', 'rm', containerId, ...ctl]), /still holds 4 allocated segments/);
    expectOneLineError(await tabula(['export', 'rm', 'v2', '--agent', 'zz', ...ctl]), /vdisk v2 is not exported on agent zz/);
    await tabulaOk(['export', 'rm', 'v2', '--agent', 'a1', ...ctl]);
    await tabulaOk(['export', 'rm', 'v1', '--agent', 'a1', ...ctl]);
    await tabulaOk(['vdisk', 'rm', 'v2', ...ctl]);
    await tabulaOk(['vdisk', 'rm', 'v1', ...ctl]);
    expect(await tabulaOk(['vdisk', 'ls', ...ctl])).to.equal('no vdisks\n');
    // Freed segments may wait for acks before they return to the free map.
    let r = await tabula(['container', 'rm', containerId.slice(0, 8), ...ctl]);
    for (let i = 0; i < 20 && r.exitCode !== 0; i++) {
      await new Promise((res) => setTimeout(res, 500));
      r = await tabula(['container', 'rm', containerId.slice(0, 8), ...ctl]);
    }
    expect(r.exitCode, describeRun(r)).to.equal(0);
    expect(await tabulaJson<ContainerInfo[]>(['container', 'ls', ...ctl])).to.deep.equal([]);
    expect(await tabulaOk(['check', ...ctl])).to.equal('ok: all invariants hold\n');
  });

  it('the daemons exit 0 on SIGTERM', async () => {
    // On failure, the logs say where the stop hung (a null status: killed after the grace).
    expect(await agent!.stop(), agent!.logTail()).to.equal(0);
    expect(await controller!.stop(), controller!.logTail()).to.equal(0);
    expect(controller!.log()).to.match(/controller stopped/);
    expect(existsSync(join(dir, 'controller.db'))).to.equal(true);
    // And the CLI now says the controller is gone.
    expectOneLineError(await tabula(['vdisk', 'ls', ...ctl]), /controller unreachable at 127\.0\.0\.1:\d+/);
  });
});
