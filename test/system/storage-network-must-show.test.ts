// Issue 15's "Must show" on the namespace topology (storage-network.ts):
// agents on two hosts reach their containers only as iscsi:// LUNs on two
// storage nodes, tgtd on st1 and `tabula target` on st2.
// - a vdisk with segments on both storage nodes, written with qemu-img on
//   host A through A's agent, reads back byte for byte through B's agent;
// - snapshot, clone, and an online migration from the tgtd node to the
//   tabula-target node under a depth-16 writer lose nothing (qemu-img
//   compare against a reference) and `tabula check` is clean;
// - the tgtd node's target SIGKILLed for 20 s during writes, then restarted:
//   no write reported GOOD is lost, st2's segments are served throughout,
//   the agent reconnects without a restart and st1's segments work again;
// - host B's link to st1 cut and restored: B's agent reports st1's LUN
//   unreachable and back, st2 is served throughout, a read held over the
//   cut completes after it, nothing restarts;
// - `container add` of a LUN added to tgtd while both agents run: both
//   claim it and a new vdisk allocates from it, without a restart.
// The tests run in order on one set of daemons (each builds on the state
// the one before left), all bounded in time.
import { expect } from 'chai';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeRandomImage } from '../support/random-image.js';
import { sleep, waitFor } from '../support/process.js';
import { requireTools } from '../support/tools.js';
import type { JsonTable } from './table.js';
import { segments } from './table.js';
import { useStorageNetwork, type Host, type StorageNetwork } from './storage-network.js';

const MiB = 1 << 20;
const LUN_MIB = 64;
const XHOST = 'xhost';
const XHOST_MIB = 48;
const MOVER = 'mover';
const MOVER_MIB = 24;
/** Longer than the outages: held I/O completes when the storage comes back. */
const HOLD_S = 45;
const OUTAGE_MS = 20_000;
const HOSTS: readonly Host[] = ['ha', 'hb'];
const RESCAN_S = 5;

interface ContainerJson {
  id: string;
  path: string;
  agents: string[];
  unreachable?: string[];
  shared?: boolean;
}

interface AgentJson {
  name: string;
  host?: string;
  containers: string[];
  unreachable?: string[];
}

describe('system: the storage network (agents on two hosts, containers as iSCSI LUNs on tgtd and tabula target)', function () {
  this.timeout(300_000);
  /** Container ids: st1 LUN 1 (tgtd), st2 LUN 0 and 1 (tabula target). */
  const ids = { st1: '', st2a: '', st2b: '' };
  let image = '';
  const pids = new Map<Host, number>();

  /** `container init` on the controller's host (it reaches both storage networks), then `container add`. */
  async function addLun(n: StorageNetwork, url: string): Promise<string> {
    const init = await n.cliJson<{ id: string }>(['container', 'init', url], { admin: false });
    await n.cliOk(['container', 'add', url]);
    return init.id;
  }

  async function tableOf(n: StorageNetwork, vdisk: string): Promise<JsonTable> {
    return n.cliJson<JsonTable>(['vdisk', 'table', vdisk, '--full-ids']);
  }

  async function containers(n: StorageNetwork): Promise<ContainerJson[]> {
    return n.cliJson<ContainerJson[]>(['container', 'ls']);
  }

  async function exportEverywhere(n: StorageNetwork, vdisk: string): Promise<void> {
    for (const h of HOSTS) await n.cliOk(['export', 'add', vdisk, '--agent', h]);
    await Promise.all(HOSTS.map((h) => n.waitServed(h, vdisk)));
  }

  async function expectClean(n: StorageNetwork): Promise<void> {
    const r = await n.cli(['check']);
    expect(r.exitCode, `tabula check: ${r.stdout}${r.stderr}`).to.equal(0);
  }

  /** The agents are the processes they were at the start: nothing was restarted. */
  function expectNoRestart(n: StorageNetwork): void {
    for (const h of HOSTS) {
      expect(n.agent(h).running, `agent on ${h} running`).to.equal(true);
      expect(n.agent(h).processPid, `agent on ${h} is the same process`).to.equal(pids.get(h));
    }
  }

  const network = useStorageNetwork('must-show', async (n) => {
    requireTools(['timeout', 'ip', 'qemu-img', 'qemu-io', 'tgtd', 'tgtadm']);
    await n.tgtd.addLun(LUN_MIB * MiB);
    n.target.addFile(LUN_MIB * MiB);
    n.target.addFile(LUN_MIB * MiB);
    await Promise.all([n.tgtd.start(), n.target.start(), n.startController({ holdTimeoutS: HOLD_S })]);
    ids.st1 = await addLun(n, n.tgtd.url(0));
    ids.st2a = await addLun(n, n.target.url(0));
    ids.st2b = await addLun(n, n.target.url(1));
    // Agents know the storage nodes by portal only: every labelled LUN behind them is theirs.
    const locators = [`iscsi://${n.tgtd.portal}`, `iscsi://${n.target.portal}`];
    // Rescans every few seconds: reachability shows within the tests' bounds.
    const extra = ['--rescan-interval', String(RESCAN_S)];
    await Promise.all(HOSTS.map((h) => n.startAgent(h, { containers: locators, hostId: `host-${h}`, holdTimeoutS: HOLD_S, extra })));
    for (const h of HOSTS) pids.set(h, n.agent(h).processPid);
    await allReachable(n, 3);
  });

  /** Waits until `count` containers are registered and both agents report every one reachable. */
  async function allReachable(n: StorageNetwork, count: number): Promise<void> {
    await waitFor(`both agents reach all ${count} LUNs`, 90_000, async () => {
      const list = await containers(n);
      return list.length === count && list.every((c) => HOSTS.every((h) => c.agents.includes(h)) && (c.unreachable ?? []).length === 0) ? true : undefined;
    }, 1000);
  }

  it('a vdisk with segments on both storage nodes, written by qemu-img on host A, reads back byte for byte through host B', async function () {
    const n = network();
    await n.cliOk(['vdisk', 'create', XHOST, '--size', `${XHOST_MIB}MiB`, '--thick']);
    const on = new Set(segments(await tableOf(n, XHOST)).map((s) => s.container));
    expect(on.has(ids.st1), `segments on the tgtd node: ${[...on].join(', ')}`).to.equal(true);
    expect(on.has(ids.st2a) || on.has(ids.st2b), `segments on the tabula-target node: ${[...on].join(', ')}`).to.equal(true);
    await exportEverywhere(n, XHOST);
    image = join(n.dir, 'xhost.raw');
    await writeRandomImage(image, XHOST_MIB * MiB, 1501);
    await n.copyTo('ha', image, n.agentUrl('ha', XHOST));
    const viaB = await n.compare('hb', image, n.agentUrl('hb', XHOST));
    expect(viaB.same, `through hb's agent: ${viaB.text}`).to.equal(true);
    // The agents reached the storage only over the network: no file of a storage node is open on a host.
    for (const h of HOSTS) expect(n.foreignFilesOpen(h), `files of other machines open on ${h}`).to.deep.equal([]);
    // Both hosts reach every LUN, so every container is shared; agents report their host.
    for (const c of await containers(n)) {
      expect(c.path, 'a locator, not a file').to.match(/^iscsi:\/\//);
      expect(c.shared, `container ${c.id} shared`).to.equal(true);
    }
    const agents = await n.cliJson<AgentJson[]>(['agent', 'ls']);
    for (const h of HOSTS) expect(agents.find((a) => a.name === h)?.host).to.equal(`host-${h}`);
    await expectClean(n);
  });

  it('snapshot, clone and an online migration from the tgtd node to the tabula-target node under a depth-16 writer lose nothing', async function () {
    const n = network();
    await n.cliOk(['vdisk', 'create', MOVER, '--size', `${MOVER_MIB}MiB`, '--thick']);
    // Everything on the tgtd node first, so the migration moves every segment across storage nodes.
    await n.cliOk(['vdisk', 'migrate', MOVER, '--to', ids.st1, '--wait'], { timeoutMs: 180_000 });
    await exportEverywhere(n, MOVER);
    const reference = join(n.dir, 'mover.raw');
    let w = n.startWriter('ha', MOVER, MOVER_MIB * MiB, reference);
    await w.waitWrites(300);
    let summary = await w.stop();
    expect(summary.errors, 'writes before the snapshot').to.deep.equal([]);

    await n.cliOk(['vdisk', 'snapshot', MOVER, 'mover-snap']);
    const snapshotReference = join(n.dir, 'mover-snap.raw');
    copyFileSync(reference, snapshotReference);
    await n.cliOk(['vdisk', 'clone', 'mover-snap', 'mover-clone']);

    w = n.startWriter('ha', MOVER, MOVER_MIB * MiB, reference);
    await w.waitWrites(100);
    await n.cliOk(['vdisk', 'migrate', MOVER, '--to', ids.st2a, '--wait'], { timeoutMs: 240_000 });
    await w.waitWrites(w.writes + 100);
    summary = await w.stop();
    expect(summary.errors, 'writes during the migration').to.deep.equal([]);

    const moved = segments(await tableOf(n, MOVER));
    expect(moved.filter((s) => s.container !== ids.st2a), 'segments left off the tabula-target LUN').to.deep.equal([]);
    for (const h of HOSTS) {
      const r = await n.compare(h, reference, n.agentUrl(h, MOVER));
      expect(r.same, `${MOVER} through ${h}: ${r.text}`).to.equal(true);
    }
    await n.cliOk(['export', 'add', 'mover-clone', '--agent', 'hb']);
    await n.waitServed('hb', 'mover-clone');
    const clone = await n.compare('hb', snapshotReference, n.agentUrl('hb', 'mover-clone'));
    expect(clone.same, `the clone: ${clone.text}`).to.equal(true);
    await expectClean(n);
  });

  it("tgtd killed for 20 s during writes, then restarted: no GOOD write lost, st2's segments served throughout, no agent restart", async function () {
    const n = network();
    const t = segments(await tableOf(n, XHOST));
    const onSt2 = t.findIndex((s) => s.container !== ids.st1);
    const onSt1 = t.findIndex((s) => s.container === ids.st1);
    await allReachable(n, 3);
    const reference = join(n.dir, 'xhost-outage.raw');
    copyFileSync(image, reference);
    const w = n.startWriter('ha', XHOST, XHOST_MIB * MiB, reference);
    await w.waitWrites(200);
    await n.tgtd.kill();
    const back = Date.now() + OUTAGE_MS;
    // Through host B's agent, a segment on st2 reads while st1 is away (each read bounded).
    const st2Url = n.agentUrl('hb', XHOST);
    while (Date.now() < back - 5000) {
      expect(await n.readable('hb', st2Url, { offset: onSt2 * MiB, len: MiB, timeoutMs: 15_000 }), 'a segment on st2 during the outage').to.equal(true);
      await sleep(2000);
    }
    await sleep(Math.max(0, back - Date.now()));
    await n.tgtd.start();
    const resumed = w.writes;
    await w.waitWrites(resumed + 200, 120_000);
    const summary = await w.stop();
    expect(summary.errors, 'writes across the outage').to.deep.equal([]);
    expectNoRestart(n);
    expect(await n.readable('hb', st2Url, { offset: onSt1 * MiB, len: MiB }), 'a segment on st1 after it returned').to.equal(true);
    for (const h of HOSTS) {
      const r = await n.compare(h, reference, n.agentUrl(h, XHOST));
      expect(r.same, `${XHOST} through ${h}: ${r.text}`).to.equal(true);
    }
    copyFileSync(reference, image);
    await expectClean(n);
  });

  it("host B's link to st1 cut and restored: reported unreachable and back, st2 served throughout, a held read completes, no restart", async function () {
    const n = network();
    const t = segments(await tableOf(n, XHOST));
    const onSt2 = t.findIndex((s) => s.container !== ids.st1);
    const onSt1 = t.findIndex((s) => s.container === ids.st1);
    const url = n.agentUrl('hb', XHOST);
    await allReachable(n, 3);
    await n.t.cut('hb', 'san1');
    let held: Promise<boolean> | undefined;
    try {
      await waitFor("hb's agent reports the st1 LUN unreachable", 60_000, async () => {
        const c = (await containers(n)).find((x) => x.id === ids.st1);
        return (c?.unreachable ?? []).some((u) => u.startsWith('hb')) ? true : undefined;
      }, 1000);
      expect(await n.readable('hb', url, { offset: onSt2 * MiB, len: MiB, timeoutMs: 15_000 }), 'st2 through hb during the cut').to.equal(true);
      // A read of st1's segment is held by hb's agent while the link is down ...
      held = n.readable('hb', url, { offset: onSt1 * MiB, len: MiB, timeoutMs: (HOLD_S + 60) * 1000 });
      await sleep(3000);
    } finally {
      await n.t.restore('hb', 'san1');
    }
    // ... and completes once it is back, within the hold timeout.
    expect(await held, 'the read held over the cut').to.equal(true);
    await waitFor("hb's agent reaches st1 again", 60_000, async () => {
      const c = (await containers(n)).find((x) => x.id === ids.st1);
      return c !== undefined && (c.unreachable ?? []).length === 0 ? true : undefined;
    }, 1000);
    expectNoRestart(n);
    // Host B sees what host A's agent serves, byte for byte.
    const r = await n.compare('hb', n.agentUrl('ha', XHOST), url);
    expect(r.same, r.text).to.equal(true);
  });

  it('container add of a LUN added to tgtd while both agents run: both claim it, a new vdisk allocates from it', async function () {
    const n = network();
    const lun = await n.tgtd.addLun(LUN_MIB * MiB);
    const id = await addLun(n, n.tgtd.url(lun));
    await waitFor('both agents claim the new LUN', 60_000, async () => {
      const c = (await containers(n)).find((x) => x.id === id);
      return c !== undefined && HOSTS.every((h) => c.agents.includes(h)) ? true : undefined;
    }, 1000);
    // Through the controller's Rescan, not only the periodic one.
    for (const h of HOSTS) expect(n.agent(h).log(), `agent on ${h} rescanned on container add`).to.match(new RegExp(`rescanning containers.*container ${id} added`));
    // The emptiest container takes the new vdisk's segments first.
    await n.cliOk(['vdisk', 'create', 'fresh', '--size', '16MiB', '--thick']);
    expect(segments(await tableOf(n, 'fresh')).some((s) => s.container === id), 'segments on the new LUN').to.equal(true);
    await exportEverywhere(n, 'fresh');
    const fresh = join(n.dir, 'fresh.raw');
    await writeRandomImage(fresh, 16 * MiB, 1505);
    await n.copyTo('hb', fresh, n.agentUrl('hb', 'fresh'));
    const r = await n.compare('ha', fresh, n.agentUrl('ha', 'fresh'));
    expect(r.same, r.text).to.equal(true);
    expectNoRestart(n);
    await expectClean(n);
  });
});
