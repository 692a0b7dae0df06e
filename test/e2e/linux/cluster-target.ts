// The table-driven system under the Linux guest: a controller and agents as
// real processes (test/system/cluster.ts starts them), one thin vdisk
// exported by every agent under one IQN at LUN 0, and the requests the guest
// may make of the host in the middle of its workload:
//
//   kill-agent NAME    SIGKILL the agent's process group (a crash, no cleanup)
//   start-agent NAME   restart it on the same portal; answers once it serves the vdisk
//   alloc              the vdisk's allocated bytes and segments (admin ShowVdisk)
//   storage-outage S   (network LUNs) SIGKILL the storage node's target, wait S
//                      seconds, start it again on the same portal and files;
//                      answers once it serves again
//   kill-storage N     (network LUNs) SIGKILL storage node N's target (1-based)
//                      and answer at once: the node stays down
//   resync-storage N   start storage node N again (same portal and files) and
//                      answer once the controller has every one of its
//                      containers online again (resynced: stale legs back)
//   mirror-state N     each container's state (`container ls`): answers
//                      "node-N=<states of N's containers> others=<states of
//                      the other nodes' containers>"
//   snapshot           SnapshotVdisk while the guest has the filesystem mounted,
//                      CloneVdisk of that snapshot, both exported on the first
//                      agent under the same IQN: the snapshot read-only at LUN 1,
//                      the clone writable at LUN 2
import { expect } from 'chai';
import { Cluster, iqnOf } from '../../system/cluster.js';
import { closeSync, ftruncateSync, mkdirSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { LOOPBACK, freeLoopbackPort, sleep, waitFor } from '../../support/process.js';
import type { Daemon } from '../../support/tabula-process.js';
import { writeP } from '../../system/clients.js';
import type { VdiskInfo } from '../../../src/wire/proto-types.js';
import type { HostPortal } from './run-guest.js';

export interface ClusterSetup {
  /** Agents, each exporting the vdisk; the guest gets one portal per agent, in this order. */
  agents: string[];
  vdiskSizeBytes: number;
  /**
   * Write every segment from the host before the guest boots. While an
   * exporting agent is down the controller holds first writes to unallocated
   * segments (it will not change a table behind a disconnected exporter's
   * back), so I/O can only go on through the surviving path if it needs no
   * allocation.
   */
  prefill?: boolean;
  /** Agents' --hold-timeout (seconds a faulted I/O is held before NOT READY). */
  holdTimeoutS?: number;
  /** ALUA preference of an agent's export (`export add --alua`); agents not named are optimized. */
  alua?: Record<string, 'optimized' | 'non-optimized'>;
  /**
   * The containers are `luns` iSCSI LUNs of this many bytes each, served by
   * one storage node (`tabula target --file ... --file ...` on loopback) that
   * the agents reach through their initiator (`--containers iscsi://PORTAL`),
   * instead of a container file.
   */
  networkLuns?: {
    luns: number;
    lunSizeBytes: number;
    /**
     * Storage nodes, each with `luns` LUNs (default 1). With more than one,
     * node N's containers are added with `--domain stN`: all nodes listen on
     * loopback, so the default domain (the portal's host) would put them in
     * one failure domain.
     */
    nodes?: number;
  };
  /** Copies of the vdisk (`vdisk create --copies`); default 1 (the option is not passed). */
  copies?: number;
  /** A thick vdisk (`vdisk create --thick`): every segment (and each of its copies) allocated at create. */
  thick?: boolean;
}

export const SNAPSHOT_LUN = 1;
export const CLONE_LUN = 2;

const VDISK = 'e2e';
const CONTAINER_SIZE = '1GiB';
const STORAGE_IQN = 'iqn.2026-11.org.tabula:e2e-storage';

/** The storage node of a networkLuns set-up: `tabula target` over files in the cluster's dir. */
class StorageNode {
  daemon: Daemon | undefined;

  private constructor(
    readonly cluster: Cluster,
    readonly files: string[],
    readonly port: number,
    readonly label: string,
  ) {}

  /** `label`: the node's name, its log's and its files' dir (`storage`, `storage2`, ...). */
  static async create(c: Cluster, luns: number, lunSizeBytes: number, label = 'storage'): Promise<StorageNode> {
    const dir = join(c.dir, label);
    mkdirSync(dir, { recursive: true });
    const files: string[] = [];
    for (let i = 0; i < luns; i++) {
      const f = join(dir, `lun${i}.img`);
      const fd = openSync(f, 'w');
      try {
        ftruncateSync(fd, lunSizeBytes);
      } finally {
        closeSync(fd);
      }
      files.push(f);
    }
    return new StorageNode(c, files, await freeLoopbackPort(), label);
  }

  get portal(): string {
    return `${LOOPBACK}:${this.port}`;
  }

  url(lun: number): string {
    return `iscsi://${this.portal}/${STORAGE_IQN}/${lun}`;
  }

  async start(): Promise<void> {
    const args = ['target', ...this.files.flatMap((f) => ['--file', f]), '--portal', this.portal, '--iqn', STORAGE_IQN];
    this.daemon = await this.cluster.startDaemon(this.label, args, /^iscsi:\/\/\S+$/m);
  }

  async kill(): Promise<void> {
    await this.daemon?.kill();
  }

  async stop(): Promise<void> {
    await this.daemon?.stop(10_000);
  }
}

export class ClusterTarget {
  readonly vdisk = VDISK;
  readonly iqn = iqnOf(VDISK);

  /** The storage nodes of a networkLuns set-up, node 1 first. */
  readonly nodes: StorageNode[] = [];

  private constructor(
    readonly cluster: Cluster,
    readonly setup: ClusterSetup,
  ) {}

  /** Starts the controller and agents, creates and exports the vdisk; stops what it started if that fails. */
  static async start(label: string, setup: ClusterSetup): Promise<ClusterTarget> {
    if (setup.agents.length === 0) throw new Error(`${label}: a cluster scenario needs at least one agent`);
    const c = await Cluster.create(`e2e-${label}`);
    const t = new ClusterTarget(c, setup);
    try {
      await c.startController({ holdTimeoutS: setup.holdTimeoutS });
      if (setup.networkLuns === undefined) await c.addContainer('c0.img', CONTAINER_SIZE);
      else await t.#startStorage(setup.networkLuns);
      const create =
        setup.copies === undefined && setup.thick !== true
          ? c.admin.call('CreateVdisk', { name: VDISK, size: setup.vdiskSizeBytes })
          : t.#createWithCli(setup);
      await Promise.all([...setup.agents.map((a) => t.#startAgent(a)), create]);
      await t.#waitOnline(setup.agents);
      for (const a of setup.agents) await c.admin.call('AddExport', { vdisk: VDISK, agent: a, lun: 0, alua: setup.alua?.[a] });
      await c.waitServed(VDISK, setup.agents);
      if (setup.prefill) await writeP(c.url(setup.agents[0] as string, VDISK), 0x5a, 0, setup.vdiskSizeBytes);
    } catch (err) {
      await c.close(true);
      throw new Error(`${label}: cluster setup failed (kept in ${c.dir}): ${(err as Error).message}`);
    }
    return t;
  }

  /** An agent serves its portal before it has registered with the controller. */
  async #waitOnline(names: string[]): Promise<void> {
    await waitFor(`agents ${names.join(', ')} online`, 60_000, async () => {
      const online = (await this.cluster.admin.call('ListAgents', {})).agents.filter((a) => a.online).map((a) => a.name);
      return names.every((n) => online.includes(n)) ? true : undefined;
    });
  }

  /** The first storage node (the only one of a single-node set-up). */
  get storage(): StorageNode | undefined {
    return this.nodes[0];
  }

  /** Copies and thick go through the CLI, as an admin would ask for them. */
  async #createWithCli(setup: ClusterSetup): Promise<void> {
    const args = ['vdisk', 'create', VDISK, '--size', String(setup.vdiskSizeBytes)];
    if (setup.copies !== undefined) args.push('--copies', String(setup.copies));
    if (setup.thick === true) args.push('--thick');
    await this.cluster.cliOk(args);
  }

  /** The storage nodes, their LUNs labelled and registered over iSCSI (as an admin would: `container init|add iscsi://...`). */
  async #startStorage(o: NonNullable<ClusterSetup['networkLuns']>): Promise<void> {
    const c = this.cluster;
    const count = o.nodes ?? 1;
    for (let n = 1; n <= count; n++) {
      const node = await StorageNode.create(c, o.luns, o.lunSizeBytes, n === 1 ? 'storage' : `storage${n}`);
      this.nodes.push(node);
      await node.start();
      for (let lun = 0; lun < o.luns; lun++) {
        await c.cliOk(['container', 'init', node.url(lun)], { admin: false });
        await c.cliOk(['container', 'add', node.url(lun), ...(count > 1 ? ['--domain', `st${n}`] : [])]);
      }
    }
  }

  #startAgent(name: string): Promise<unknown> {
    const containers = this.nodes.length === 0 ? [this.cluster.containerGlob] : this.nodes.map((n) => `iscsi://${n.portal}`);
    return this.cluster.startAgent(name, { containers, holdTimeoutS: this.setup.holdTimeoutS });
  }

  /** Storage node N (1-based) of the guest's request. */
  #node(arg: string | undefined): StorageNode {
    const n = Number(arg ?? '');
    const node = Number.isInteger(n) ? this.nodes[n - 1] : undefined;
    if (node === undefined) throw new Error(`no storage node ${arg ?? ''} (have ${this.nodes.length})`);
    return node;
  }

  /** `node-N=<states> others=<states>` from the controller's container list (ListContainers). */
  async #mirrorState(arg: string | undefined): Promise<string> {
    const node = this.#node(arg);
    const prefix = `iscsi://${node.portal}/`;
    const all = (await this.cluster.admin.call('ListContainers', {})).containers;
    const states = (mine: boolean): string =>
      all
        .filter((ct) => ct.path.startsWith(prefix) === mine)
        .map((ct) => ct.state)
        .join(',') || 'none';
    return `node-${arg ?? ''}=${states(true)} others=${states(false)}`;
  }

  get portals(): HostPortal[] {
    return this.setup.agents.map((a) => ({ host: '127.0.0.1', port: this.cluster.agent(a).port }));
  }

  get dir(): string {
    return this.cluster.dir;
  }

  async show(name = VDISK): Promise<VdiskInfo> {
    return this.cluster.admin.call('ShowVdisk', { name });
  }

  /** The guest's request (see the header); resolves with the text after OK. */
  async handle(words: string[]): Promise<string> {
    const [verb, arg] = words;
    const c = this.cluster;
    switch (verb) {
      case 'kill-agent': {
        const a = c.agent(arg ?? '');
        await a.daemon.kill();
        if (a.daemon.running) throw new Error(`agent ${a.name} still runs after SIGKILL`);
        return `agent ${a.name} killed`;
      }
      case 'start-agent': {
        const name = arg ?? '';
        c.agent(name);
        await this.#startAgent(name);
        await c.waitServed(VDISK, [name], 120_000);
        return `agent ${name} serving again on ${c.agent(name).portal}`;
      }
      case 'alloc': {
        const v = await this.show();
        return `${v.allocatedBytes} ${v.segmentsAllocated}`;
      }
      case 'storage-outage': {
        const storage = this.storage;
        if (storage === undefined) throw new Error('storage-outage: this scenario has no storage node');
        const seconds = Number(arg ?? '20');
        if (!Number.isFinite(seconds) || seconds < 0 || seconds > 120) throw new Error(`storage-outage: bad seconds ${arg ?? ''}`);
        await storage.kill();
        await sleep(seconds * 1000);
        await storage.start();
        return `storage node down for ${seconds} s, serving again on ${storage.portal}`;
      }
      case 'kill-storage': {
        const node = this.#node(arg);
        await node.kill();
        if (node.daemon?.running === true) throw new Error(`storage node ${arg ?? ''} still runs after SIGKILL`);
        return `storage node ${arg ?? ''} (${node.portal}) killed`;
      }
      case 'resync-storage': {
        const node = this.#node(arg);
        await node.start();
        const prefix = `iscsi://${node.portal}/`;
        await waitFor(`storage node ${arg ?? ''}'s containers online again`, 200_000, async () => {
          const mine = (await c.admin.call('ListContainers', {})).containers.filter((ct) => ct.path.startsWith(prefix));
          return mine.length > 0 && mine.every((ct) => ct.state === 'online') ? true : undefined;
        });
        return `storage node ${arg ?? ''} back and resynced: ${await this.#mirrorState(arg)}`;
      }
      case 'mirror-state':
        return this.#mirrorState(arg);
      case 'snapshot':
        return this.#snapshot();
      default:
        throw new Error(`unknown request ${JSON.stringify(words.join(' '))}`);
    }
  }

  async #snapshot(): Promise<string> {
    const c = this.cluster;
    const agent = this.setup.agents[0] as string;
    const snap = await c.admin.call('SnapshotVdisk', { vdisk: VDISK, name: `${VDISK}-snap` });
    expect(snap.kind, 'SnapshotVdisk made a snapshot').to.equal('snapshot');
    // ext4 replays its journal at mount, which needs a writable device: that is the clone.
    const clone = await c.admin.call('CloneVdisk', { source: snap.name, name: `${VDISK}-clone` });
    await c.admin.call('AddExport', { vdisk: snap.name, agent, targetIqn: this.iqn, lun: SNAPSHOT_LUN, readOnly: true });
    await c.admin.call('AddExport', { vdisk: clone.name, agent, targetIqn: this.iqn, lun: CLONE_LUN });
    for (const name of [snap.name, clone.name]) {
      await waitFor(`export of ${name} on ${agent} acked`, 60_000, async () => {
        const v = await this.show(name);
        const ex = (await c.admin.call('ListExports', { vdisk: name, agent })).exports;
        return ex.length === 1 && !ex[0]?.fenced && ex[0]?.ackedVersion === v.version ? true : undefined;
      });
    }
    return `snapshot ${snap.name} at LUN ${SNAPSHOT_LUN} (read-only), clone ${clone.name} at LUN ${CLONE_LUN}`;
  }

  /** Stops every daemon; keeps the dir (logs, database, containers) when asked. */
  async stop(keep: boolean): Promise<void> {
    // Agents first (cluster.close), then the storage they reach.
    await this.cluster.close(this.nodes.length === 0 ? keep : true);
    if (this.nodes.length > 0) {
      for (const node of this.nodes) await node.stop();
      if (!keep) rmSync(this.cluster.dir, { recursive: true, force: true });
    }
  }
}
