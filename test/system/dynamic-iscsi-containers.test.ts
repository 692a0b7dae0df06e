// Network containers in a running system (issue 15), on loopback: a storage
// node (`tabula target` serving two files as LUN 0 and 1 of one target) and
// two agents whose only locator is the node's portal (iscsi://HOST:PORT).
// LUN 1 labelled and added while both agents run is claimed by both without
// a restart, and a thin vdisk allocates from it (written through agent a,
// read back through agent b); both agents show the LUN shared (two hosts) and
// leave it as it is (no page cache to avoid). The storage node stopped: both
// agents report its LUNs unreachable; back: reachable again, no restart.
import { expect } from 'chai';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { freeLoopbackPort, waitFor, LOOPBACK } from '../support/process.js';
import type { Daemon } from '../support/tabula-process.js';
import { requireTools } from '../support/tools.js';
import type { ContainerInfo } from '../../src/wire/proto-types.js';
import { useCluster, type Cluster } from './cluster.js';
import { readP, writeP } from './clients.js';
import { STATE, check, segments, table } from './table.js';

const MiB = 1 << 20;
const VDISK = 'net';
const IQN = 'iqn.2026-11.org.tabula:storage1';

async function containers(c: Cluster): Promise<ContainerInfo[]> {
  return c.cliJson<ContainerInfo[]>(['container', 'ls']);
}

describe('system: iSCSI containers added to a running system', function () {
  this.timeout(300_000);
  let port = 0;
  let node: Daemon | undefined;
  let lun0 = '';
  let pids: Record<string, number> = {};
  const lunUrl = (lun: number): string => `iscsi://${LOOPBACK}:${port}/${IQN}/${lun}`;

  async function startNode(c: Cluster): Promise<Daemon> {
    const dir = join(c.dir, 'storage1');
    mkdirSync(dir, { recursive: true });
    const args = ['target', '--file', join(dir, 'l0.img'), '--file', join(dir, 'l1.img'), '--size', '32MiB', '--portal', `${LOOPBACK}:${port}`, '--iqn', IQN];
    return c.startDaemon('storage1', args, /^iscsi:\/\/\S+\/1$/m);
  }

  const cluster = useCluster('dynamic-iscsi', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    port = await freeLoopbackPort();
    await c.startController();
    node = await startNode(c);
    // LUN 0 labelled and registered, then filled by a thick vdisk; LUN 1 blank.
    lun0 = (JSON.parse(await c.cliOk(['container', 'init', lunUrl(0), '--json'], { admin: false })) as { id: string }).id;
    await c.cliOk(['container', 'add', lunUrl(0)]);
    const total = (await containers(c)).find((x) => x.id === lun0)?.segmentsTotal ?? 0;
    await c.cliOk(['vdisk', 'create', 'fill', '--size', `${total}MiB`, '--thick']);
    const portal = `iscsi://${LOOPBACK}:${port}`;
    await Promise.all([
      c.startAgent('a', { containers: [portal], hostId: 'host-a', args: ['--rescan-interval', '0'] }),
      c.startAgent('b', { containers: [portal], hostId: 'host-b', args: ['--rescan-interval', '0'] }),
    ]);
    await c.cliOk(['vdisk', 'create', VDISK, '--size', '8MiB']);
    for (const a of ['a', 'b']) await c.cliOk(['export', 'add', VDISK, '--agent', a]);
    await c.waitServed(VDISK, ['a', 'b']);
    pids = Object.fromEntries(['a', 'b'].map((n) => [n, c.agent(n).daemon.processPid]));
  });

  after(async function () {
    this.timeout(30_000);
    await node?.stop(10_000);
  });

  it('both agents reach LUN 0 through the portal; reached from two hosts it is shared, and left as it is (no page cache)', async function () {
    const c = cluster();
    await waitFor('both agents claim LUN 0', 60_000, async () => {
      const info = (await containers(c)).find((x) => x.id === lun0);
      return info?.agents.join(',') === 'a,b' ? true : undefined;
    });
    expect((await containers(c)).find((x) => x.id === lun0)).to.deep.include({ path: lunUrl(0), shared: true, unreachable: [] });
    for (const n of ['a', 'b']) expect(c.agent(n).daemon.log()).to.not.include('reopened with O_DIRECT');
  });

  it('a LUN labelled and added while both agents run: both claim it without a restart, and the thin vdisk allocates from it', async function () {
    const c = cluster();
    const lun1 = (JSON.parse(await c.cliOk(['container', 'init', lunUrl(1), '--json'], { admin: false })) as { id: string }).id;
    await c.cliOk(['container', 'add', lunUrl(1)]);
    await waitFor('both agents claim LUN 1', 60_000, async () => {
      const info = (await containers(c)).find((x) => x.id === lun1);
      return info?.agents.join(',') === 'a,b' ? true : undefined;
    });
    await writeP(c.url('a', VDISK), 0x3c, MiB + 512, 64 * 1024);
    await readP(c.url('b', VDISK), 0x3c, MiB + 512, 64 * 1024);
    expect(segments(await table(c, VDISK))[1]).to.deep.include({ state: STATE.normal, container: lun1 });
    for (const n of ['a', 'b']) expect(c.agent(n).daemon.processPid).to.equal(pids[n]);
    const ok = await check(c);
    expect(ok.ok, ok.text).to.equal(true);
  });

  it('the storage node stopped: both agents report its LUNs unreachable; restarted: reachable again, without restarting an agent', async function () {
    const c = cluster();
    await node?.stop(10_000);
    await waitFor('LUN 0 unreachable from both agents', 90_000, async () => {
      const info = (await containers(c)).find((x) => x.id === lun0);
      return info?.unreachable?.length === 2 ? true : undefined;
    });
    const text = await c.cliOk(['container', 'ls']);
    expect(text).to.match(new RegExp(`^${lun0}\\s.*\\sa\\(unreachable\\),b\\(unreachable\\)$`, 'm'));
    node = await startNode(c);
    await waitFor('LUN 0 reachable again from both agents', 120_000, async () => {
      const info = (await containers(c)).find((x) => x.id === lun0);
      return info !== undefined && info.agents.length === 2 && (info.unreachable ?? []).length === 0 ? true : undefined;
    });
    await readP(c.url('b', VDISK), 0x3c, MiB + 512, 64 * 1024);
    for (const n of ['a', 'b']) expect(c.agent(n).daemon.processPid).to.equal(pids[n]);
  });
});
