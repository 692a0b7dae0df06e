// The table-driven system under the Linux guest: a controller and agents as
// real processes (test/system/cluster.ts starts them), one thin vdisk
// exported by every agent under one IQN at LUN 0, and the requests the guest
// may make of the host in the middle of its workload:
//
//   kill-agent NAME    SIGKILL the agent's process group (a crash, no cleanup)
//   start-agent NAME   restart it on the same portal; answers once it serves the vdisk
//   alloc              the vdisk's allocated bytes and segments (admin ShowVdisk)
//   snapshot           SnapshotVdisk while the guest has the filesystem mounted,
//                      CloneVdisk of that snapshot, both exported on the first
//                      agent under the same IQN: the snapshot read-only at LUN 1,
//                      the clone writable at LUN 2
import { expect } from 'chai';
import { Cluster, iqnOf } from '../../system/cluster.js';
import { waitFor } from '../../support/process.js';
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
}

export const SNAPSHOT_LUN = 1;
export const CLONE_LUN = 2;

const VDISK = 'e2e';
const CONTAINER_SIZE = '1GiB';

export class ClusterTarget {
  readonly vdisk = VDISK;
  readonly iqn = iqnOf(VDISK);

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
      await c.addContainer('c0.img', CONTAINER_SIZE);
      await Promise.all([
        ...setup.agents.map((a) => t.#startAgent(a)),
        c.admin.call('CreateVdisk', { name: VDISK, size: setup.vdiskSizeBytes }),
      ]);
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

  #startAgent(name: string): Promise<unknown> {
    return this.cluster.startAgent(name, { containers: [this.cluster.containerGlob], holdTimeoutS: this.setup.holdTimeoutS });
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
    await this.cluster.close(keep);
  }
}
