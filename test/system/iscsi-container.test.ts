// A vdisk whose container is a LUN on a storage node (`tabula target`, tgtd),
// reached by the agent's own initiator: `container init|add` of the LUN's
// locator, `tabula agent --containers iscsi://PORTAL --iscsi-*`, data through
// the agent, a MEDIUM ERROR from the storage node as an error fault for that
// segment only, and the storage node gone as a retryable failure that records
// no error fault.
import { expect } from 'chai';
import { truncateSync } from 'node:fs';
import { startTarget, type RunningTarget, type TargetKind } from '../support/target-process.js';
import { requireTools } from '../support/tools.js';
import { waitFor } from '../support/process.js';
import type { ContainerInfo } from '../../src/wire/proto-types.js';
import { useCluster } from './cluster.js';
import { qemuIo, readP, writeP } from './clients.js';
import { faults, segments, table } from './table.js';

const MiB = 1 << 20;
const VDISK = 'onlun';

for (const kind of ['tabula', 'tgtd'] as TargetKind[]) describe(`system: a vdisk on an iSCSI container (${kind === 'tabula' ? 'tabula target' : 'tgtd'} as the storage node)`, function () {
  this.timeout(300_000);
  let target: RunningTarget | undefined;
  let stopped = false;
  before(function () {
    if (kind === 'tgtd' && process.getuid?.() !== 0) this.skip(); // tgtd runs as root
  });
  const cluster = useCluster(`iscsi-container-${kind}`, async (c) => {
    requireTools(['timeout', 'qemu-io']);
    target = await startTarget({ kind, sizeBytes: 64 * MiB, label: `system-iscsi-${kind}` });
    await c.startController();
    await c.cliOk(['container', 'init', target.url], { admin: false });
    await c.cliOk(['container', 'add', target.url]);
    await c.startAgent('a', {
      containers: [`iscsi://${target.portal}`],
      holdTimeoutS: 3,
      // tgtd's LUN 0 (its controller) is skipped by the portal scan.
      args: ['--iscsi-initiator-name', 'iqn.2024-01.io.tabula:agent.system-a', '--iscsi-queue-depth', '16', '--iscsi-command-timeout', '2'],
    });
    await c.cliOk(['vdisk', 'create', VDISK, '--size', '16MiB', '--thick']);
    await c.cliOk(['export', 'add', VDISK, '--agent', 'a']);
    await c.waitServed(VDISK, ['a']);
  });

  after(async function () {
    this.timeout(30_000);
    if (target && !stopped) await target.stop();
  });

  it('the agent reaches the LUN and serves the vdisk from it, byte for byte', async () => {
    const c = cluster();
    const list = await c.cliJson<ContainerInfo[]>(['container', 'ls']);
    expect(list.map((x) => x.path)).to.deep.equal([target!.url]);
    await waitFor('agent a reaches the LUN', 30_000, async () => ((await c.cliJson<ContainerInfo[]>(['container', 'ls']))[0]?.agents.includes('a') ? true : undefined));
    const url = c.url('a', VDISK);
    await writeP(url, 0x5a, 0, 16 * MiB);
    await readP(url, 0x5a, 0, 16 * MiB);
    await writeP(url, 0x3c, 5 * MiB + 512, 4096);
    await readP(url, 0x3c, 5 * MiB + 512, 4096);
  });

  it('a MEDIUM ERROR from the storage node is an error fault for that segment only', async () => {
    const c = cluster();
    const segs = segments(await table(c, VDISK));
    // The vdisk segment stored furthest into the LUN: cut the backing file there.
    const victim = segs.reduce((best, s, i) => (s.offset > segs[best]!.offset ? i : best), 0);
    const containerOffset = MiB + segs[victim]!.offset * MiB;
    truncateSync(target!.backingFile, containerOffset);
    const url = c.url('a', VDISK);
    const r = await qemuIo(url, [`read -P 0x5a ${victim * MiB} 65536`]);
    expect(r.exitCode !== 0 || /error|failed/i.test(r.stdout + r.stderr), `${r.stdout}${r.stderr}`).to.equal(true);
    await waitFor('an error fault for the segment', 30_000, async () => {
      const f = (await faults(c, VDISK)).find((x) => x.segment === victim);
      return f !== undefined ? f : undefined;
    });
    const f = (await faults(c, VDISK)).filter((x) => x.segment === victim);
    expect(f.some((x) => x.state === 'error' && /MEDIUM ERROR 03\/11\/00 \(EIO\)/.test(x.detail)), JSON.stringify(f)).to.equal(true);
    // Every other segment still reads.
    const other = victim === 0 ? 1 : 0;
    await readP(url, 0x5a, other * MiB, MiB);
  });

  it('the storage node gone: I/O fails retryably after the hold, and no error fault is recorded for it', async () => {
    const c = cluster();
    const before = (await faults(c, VDISK)).length;
    const url = c.url('a', VDISK);
    await target!.stop();
    stopped = true;
    const r = await qemuIo(url, ['read 0 65536'], 90_000);
    expect(r.exitCode !== 0 || /error|failed/i.test(r.stdout + r.stderr), `${r.stdout}${r.stderr}`).to.equal(true);
    const after = await faults(c, VDISK);
    expect(after.slice(0, after.length - before).filter((x) => /error/i.test(x.state)), JSON.stringify(after)).to.deep.equal([]);
    await waitFor('the container shown unreachable', 30_000, async () => {
      const info = (await c.cliJson<ContainerInfo[]>(['container', 'ls']))[0];
      return info?.unreachable !== undefined && info.unreachable.length > 0 ? true : undefined;
    });
  });
});
