// Agent access control with libiscsi's own tools: export initiator ACLs
// (`tabula export add --initiator`) decide who logs in to a target and who
// sees it in discovery (iscsi-ls -i IQN), and an agent started with CHAP
// flags lets in only initiators with the right credentials
// (iscsi://user%secret@host/...), for targets and for discovery.
import { expect } from 'chai';
import { describeRun, runBounded, type RunResult } from '../support/bounded-run.js';
import { requireTools } from '../support/tools.js';
import { LOOPBACK, freeLoopbackPort, waitFor } from '../support/process.js';
import type { Daemon } from '../support/tabula-process.js';
import { iqnOf, useCluster } from './cluster.js';
import type { ExportInfo } from '../../src/wire/proto-types.js';

const ALLOWED = 'iqn.2026-11.org.example:allowed';
const REFUSED = 'iqn.2026-11.org.example:refused';
const CHAP_USER = 'tabula-agent';
const CHAP_SECRET = 'chap-secret-0123';

const tool = (cmd: string, args: readonly string[]): Promise<RunResult> => runBounded(cmd, args, { timeoutMs: 30_000 });
const out = (r: RunResult): string => `${r.stdout}\n${r.stderr}`;

describe('system: initiator ACLs and CHAP on the agent (libiscsi)', function () {
  this.timeout(240_000);
  let chapAgent: Daemon | undefined;
  let chapPortal = '';
  const cluster = useCluster('acl', async (c) => {
    requireTools(['timeout', 'iscsi-ls', 'iscsi-inq']);
    await c.startController();
    await c.addContainer('c0.img', '64MiB');
    await c.startAgent('open', { containers: [c.containerGlob] });
    // The CHAP agent: the cluster helper knows no CHAP flags, so it is started here.
    const port = await freeLoopbackPort();
    chapPortal = `${LOOPBACK}:${port}`;
    const args = ['agent', '--controller', c.controllerAddress, '--name', 'chap', '--portal', chapPortal, '--containers', c.containerGlob, '--chap-user', CHAP_USER, '--chap-secret', CHAP_SECRET];
    chapAgent = await c.startDaemon('agent-chap', args, /agent chap serving on/);
    for (const v of ['acla', 'aclb', 'aclc']) await c.cliOk(['vdisk', 'create', v, '--size', '8MiB']);
    await c.cliOk(['export', 'add', 'acla', '--agent', 'open', '--initiator', ALLOWED, '--initiator', ALLOWED.toUpperCase().replace('IQN', 'iqn')]);
    await c.cliOk(['export', 'add', 'aclb', '--agent', 'open']);
    await c.cliOk(['export', 'add', 'aclc', '--agent', 'chap']);
    await c.waitServed('aclb', ['open']);
    await waitFor('the CHAP agent acking aclc', 60_000, async () => {
      const ex = await c.admin.call('ListExports', { vdisk: 'aclc' });
      return ex.exports.some((e: ExportInfo) => e.agent === 'chap' && e.ackedVersion >= 1 && !e.fenced) ? true : undefined;
    });
  });
  after(async function () {
    this.timeout(30_000);
    await chapAgent?.stop(10_000);
  });

  it('stores the ACL (lower-cased, once) and shows it in export ls', async () => {
    const c = cluster();
    const list = await c.cliJson<ExportInfo[]>(['export', 'ls', '--vdisk', 'acla']);
    expect(list.map((e) => e.allowedInitiators)).to.deep.equal([[ALLOWED]]);
    const text = await c.cliOk(['export', 'ls']);
    expect(text).to.match(/INITIATORS/);
    expect(text).to.match(new RegExp(`acla\\s.*${ALLOWED.replace(/\./g, '\\.')}`));
    expect(text).to.match(/aclb\s.*\bany\b/);
    const bad = await c.cli(['export', 'add', 'aclb', '--agent', 'chap', '--initiator', 'not an iqn']);
    expect(bad.exitCode).to.not.equal(0);
    expect(bad.stderr).to.match(/bad initiator name "not an iqn"/);
  });

  it('lets the allowed initiator log in and refuses the other one (02/02)', async () => {
    const c = cluster();
    const portal = c.agent('open').portal;
    const url = `iscsi://${portal}/${iqnOf('acla')}/0`;
    const ok = await tool('iscsi-inq', ['-i', ALLOWED, url]);
    expect(ok.exitCode, describeRun(ok)).to.equal(0);
    expect(ok.stdout).to.match(/Vendor|vendor/);
    const no = await tool('iscsi-inq', ['-i', REFUSED, url]);
    expect(no.exitCode, describeRun(no)).to.not.equal(0);
    expect(out(no)).to.match(/[Aa]uthori[sz]ation|0x0202|login failed/i);
    // The open export lets anyone in.
    const open = await tool('iscsi-inq', ['-i', REFUSED, `iscsi://${portal}/${iqnOf('aclb')}/0`]);
    expect(open.exitCode, describeRun(open)).to.equal(0);
  });

  it('lists in discovery only the targets the initiator may log in to', async () => {
    const c = cluster();
    const portal = c.agent('open').portal;
    const allowed = await tool('iscsi-ls', ['-i', ALLOWED, `iscsi://${portal}`]);
    expect(allowed.exitCode, describeRun(allowed)).to.equal(0);
    expect(allowed.stdout).to.contain(iqnOf('acla'));
    expect(allowed.stdout).to.contain(iqnOf('aclb'));
    const refused = await tool('iscsi-ls', ['-i', REFUSED, `iscsi://${portal}`]);
    expect(refused.exitCode, describeRun(refused)).to.equal(0);
    expect(refused.stdout).to.not.contain(iqnOf('acla'));
    expect(refused.stdout).to.contain(iqnOf('aclb'));
  });

  it('requires the agent CHAP credentials for its targets and for discovery', async () => {
    const target = `${iqnOf('aclc')}/0`;
    const good = await tool('iscsi-inq', ['-i', ALLOWED, `iscsi://${CHAP_USER}%${CHAP_SECRET}@${chapPortal}/${target}`]);
    expect(good.exitCode, describeRun(good)).to.equal(0);
    const none = await tool('iscsi-inq', ['-i', ALLOWED, `iscsi://${chapPortal}/${target}`]);
    expect(none.exitCode, describeRun(none)).to.not.equal(0);
    const wrong = await tool('iscsi-inq', ['-i', ALLOWED, `iscsi://${CHAP_USER}%wrong-secret-000@${chapPortal}/${target}`]);
    expect(wrong.exitCode, describeRun(wrong)).to.not.equal(0);
    const ls = await tool('iscsi-ls', ['-i', ALLOWED, `iscsi://${CHAP_USER}%${CHAP_SECRET}@${chapPortal}`]);
    expect(ls.exitCode, describeRun(ls)).to.equal(0);
    expect(ls.stdout).to.contain(iqnOf('aclc'));
    const lsNone = await tool('iscsi-ls', ['-i', ALLOWED, `iscsi://${chapPortal}`]);
    expect(lsNone.stdout).to.not.contain(iqnOf('aclc'));
  });
});
