// The storage network of issue 15 as real processes on a namespace topology
// (test/support/netns.ts): two storage nodes, st1 running tgtd (a target we
// did not write) and st2 running `tabula target`, each on a network of its
// own (san1, san2); two hosts ha and hb, each with an agent and its own
// clients, on both storage networks and on the management network with the
// controller in ctl. One network per storage node makes "cut host B from
// storage node 1" one link. Each machine's files live in a directory of its
// own (dir/<machine>/) that only that machine's processes open, so agents
// reach storage only over the network. Everything is kept in one temp dir,
// kept when a test fails. MIRROR_TOPOLOGY adds a third storage node, st3
// (`tabula target` on san3), for mirrored vdisks (mirror-must-show.test.ts).
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readlinkSync, rmSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeRun, runBounded, type RunResult } from '../support/bounded-run.js';
import { Topology, netnsUnavailable, type TopologySpec } from '../support/netns.js';
import { exited, fileTail, sleep, terminate, waitExit, waitFor } from '../support/process.js';
import { runTabula, startDaemon, tabulaLauncher, type Daemon } from '../support/tabula-process.js';
import type { WriterSummary } from './storage-network-writer.js';
import { TGTD_PROBE, removeTgtdSockets, tgtdAddLun, tgtdArgs, tgtdControlNumber, tgtdSetup, tgtdShutdown } from '../support/tgtd.js';

export const TOPOLOGY: TopologySpec = {
  machines: ['ctl', 'st1', 'st2', 'ha', 'hb'],
  networks: {
    mgmt: ['ctl', 'ha', 'hb'],
    san1: ['st1', 'ctl', 'ha', 'hb'],
    san2: ['st2', 'ctl', 'ha', 'hb'],
  },
};

/**
 * Issue 16's topology: a third storage node st3, also running `tabula
 * target`, on a network of its own (san3), so mirrored vdisks have three
 * failure domains and a rebuild has somewhere to go.
 */
export const MIRROR_TOPOLOGY: TopologySpec = {
  machines: ['ctl', 'st1', 'st2', 'st3', 'ha', 'hb'],
  networks: {
    ...TOPOLOGY.networks,
    san3: ['st3', 'ctl', 'ha', 'hb'],
  },
};

export type Host = 'ha' | 'hb';
export const ISCSI_PORT = 3260;
const CONTROLLER_PORT = 7100;
const CONTROLLER_METRICS_PORT = 7101;
export const TGTD_IQN = 'iqn.2026-11.org.tabula:st1';
export const TARGET_IQN = 'iqn.2026-11.org.tabula:st2';
export const TARGET3_IQN = 'iqn.2026-11.org.tabula:st3';

/** tgtd on st1: one target, file-backed LUNs from 1 (tgt keeps LUN 0 for itself). */
export class TgtdNode {
  child: ChildProcess | undefined;
  readonly luns: string[] = [];

  constructor(
    readonly net: StorageNetwork,
    readonly ctl: number,
  ) {}

  get portal(): string {
    return `${this.net.t.addr('st1', 'san1')}:${ISCSI_PORT}`;
  }

  /** iscsi://PORTAL/IQN/LUN of the n-th file (LUN n+1). */
  url(n: number): string {
    return `iscsi://${this.portal}/${TGTD_IQN}/${n + 1}`;
  }

  async #tgtadm(args: readonly string[], timeoutMs = 15_000): Promise<RunResult> {
    // The management channel is a unix socket in /var/run/tgtd: reachable from any namespace.
    return runBounded('tgtadm', ['-C', String(this.ctl), ...args], { timeoutMs });
  }

  async #tgtadmOk(args: readonly string[]): Promise<void> {
    const r = await this.#tgtadm(args);
    if (r.exitCode !== 0) throw new Error(`tgtd on st1: ${describeRun(r)}`);
  }

  /** Starts tgtd and configures the target with every LUN so far (a restart serves the same files). */
  async start(): Promise<void> {
    if (this.child !== undefined && !exited(this.child)) throw new Error('tgtd on st1 is already running');
    removeTgtdSockets(this.ctl);
    const log = join(this.net.dir, 'st1', 'tgtd.log');
    const fd = openSync(log, 'a');
    try {
      this.child = this.net.t.spawn('st1', ['tgtd', ...tgtdArgs(this.ctl, this.portal)], 15 * 60_000, ['ignore', fd, fd]);
    } finally {
      closeSync(fd);
    }
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (exited(this.child)) throw new Error(`tgtd on st1 exited before it was ready; log:\n${fileTail(log)}`);
      if ((await this.#tgtadm(TGTD_PROBE, 5000)).exitCode === 0) break;
      if (Date.now() > deadline) throw new Error(`tgtd on st1: management channel not up; log:\n${fileTail(log)}`);
      await sleep(200);
    }
    const [first, ...rest] = this.luns;
    if (first === undefined) throw new Error('tgtd on st1 needs a LUN');
    // Every host may log in: the storage network is the ACL here.
    for (const args of tgtdSetup({ iqn: TGTD_IQN, backingFile: first, initiatorAddress: 'ALL', thin: true })) await this.#tgtadmOk(args);
    for (const [i, file] of rest.entries()) await this.#tgtadmOk(tgtdAddLun(i + 2, file));
  }

  /** A new sparse file in st1's directory as the next LUN, added while tgtd runs; returns its index. */
  async addLun(sizeBytes: number): Promise<number> {
    const n = this.luns.length;
    const file = this.net.sparseFile('st1', `lun${n + 1}.img`, sizeBytes);
    this.luns.push(file);
    if (this.child !== undefined && !exited(this.child)) await this.#tgtadmOk(tgtdAddLun(n + 1, file));
    return n;
  }

  /** SIGKILL: the storage node's target dies without a word to its initiators. */
  async kill(): Promise<void> {
    if (this.child?.pid !== undefined) {
      for (const pid of this.net.t.pids('st1')) process.kill(pid, 'SIGKILL');
      await waitExit(this.child, 10_000);
    }
    removeTgtdSockets(this.ctl);
  }

  async stop(): Promise<void> {
    if (this.child === undefined) return;
    if (!exited(this.child)) {
      for (const args of tgtdShutdown()) await this.#tgtadm(args, 10_000);
      await waitExit(this.child, 5000);
    }
    await terminate(this.child, 5000);
    removeTgtdSockets(this.ctl);
  }
}

/** `tabula target` on a storage node (st2, or st3) over files in its directory, LUN 0..n-1. */
export class FileTargetNode {
  daemon: Daemon | undefined;
  readonly files: string[] = [];

  constructor(
    readonly net: StorageNetwork,
    readonly machine = 'st2',
    readonly network = 'san2',
    readonly iqn = TARGET_IQN,
  ) {}

  get portal(): string {
    return `${this.net.t.addr(this.machine, this.network)}:${ISCSI_PORT}`;
  }

  url(lun: number): string {
    return `iscsi://${this.portal}/${this.iqn}/${lun}`;
  }

  addFile(sizeBytes: number): number {
    this.files.push(this.net.sparseFile(this.machine, `lun${this.files.length}.img`, sizeBytes));
    return this.files.length - 1;
  }

  /** Starts (or restarts) the target over every file: `--file` repeated, LUN 0..n-1. */
  async start(): Promise<void> {
    if (this.daemon?.running) throw new Error(`tabula target on ${this.machine} is already running`);
    const args = ['target', ...this.files.flatMap((f) => ['--file', f]), '--portal', this.portal, '--iqn', this.iqn];
    this.daemon = await this.net.startDaemon(this.machine, 'target', args, /^iscsi:\/\/\S+$/m);
  }

  async kill(): Promise<void> {
    await this.daemon?.kill();
  }

  async stop(): Promise<void> {
    await this.daemon?.stop(10_000);
  }
}

const WRITER = fileURLToPath(new URL('./storage-network-writer.ts', import.meta.url));

/** A depth-N writer running on a host (storage-network-writer.ts). */
export class HostWriter {
  #out = '';

  constructor(
    readonly host: string,
    readonly child: ChildProcess,
    readonly logFile: string,
  ) {
    child.stdout?.on('data', (c: Buffer) => (this.#out += c.toString()));
  }

  /** Writes completed so far (as last reported, once a second). */
  get writes(): number {
    const all = [...this.#out.matchAll(/^writes (\d+)$/gm)];
    return all.length === 0 ? 0 : Number(all[all.length - 1]?.[1]);
  }

  async waitWrites(n: number, ms = 60_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (this.writes < n) {
      if (exited(this.child)) throw new Error(`writer on ${this.host} exited: ${this.#out.slice(-500)}\n${fileTail(this.logFile)}`);
      if (Date.now() > deadline) throw new Error(`writer on ${this.host}: ${this.writes} writes, not ${n}, within ${ms} ms\n${fileTail(this.logFile)}`);
      await sleep(200);
    }
  }

  /** SIGTERM: it finishes what is in flight and prints its summary (its last line, JSON). */
  async stop<T = WriterSummary>(ms = 180_000): Promise<T> {
    if (!exited(this.child)) this.child.kill('SIGTERM');
    if (!(await waitExit(this.child, ms))) {
      await terminate(this.child, 1000);
      throw new Error(`writer on ${this.host} did not stop within ${ms} ms`);
    }
    const line = this.#out.trim().split('\n').at(-1) ?? '';
    if (!line.startsWith('{')) throw new Error(`writer on ${this.host} ended without a summary: ${this.#out.slice(-500)}\n${fileTail(this.logFile)}`);
    return JSON.parse(line) as T;
  }
}

export interface AgentStart {
  /** Locators: iscsi:// URLs or globs (of files in the host's own directory). */
  containers: readonly string[];
  holdTimeoutS?: number;
  /** --host-id: the host it runs on (agents in namespaces share /etc/machine-id). */
  hostId?: string;
  extra?: readonly string[];
}

export class StorageNetwork {
  readonly tgtd: TgtdNode;
  readonly target: FileTargetNode;
  /** `tabula target` on st3, in topologies that have it (MIRROR_TOPOLOGY). */
  readonly target3: FileTargetNode | undefined;
  controller: Daemon | undefined;
  readonly agents = new Map<Host, Daemon>();
  /** The controller listens beyond loopback, so agents and admins present a token. */
  readonly token = randomBytes(16).toString('hex');
  #starts = 0;

  private constructor(
    readonly t: Topology,
    readonly dir: string,
  ) {
    this.tgtd = new TgtdNode(this, tgtdControlNumber(process.pid));
    this.target = new FileTargetNode(this);
    this.target3 = t.spec.machines.includes('st3') ? new FileTargetNode(this, 'st3', 'san3', TARGET3_IQN) : undefined;
    for (const m of t.spec.machines) mkdirSync(join(dir, m));
  }

  static create(t: Topology, label: string): StorageNetwork {
    return new StorageNetwork(t, mkdtempSync(join(tmpdir(), `tabula-storage-network-${label}-`)));
  }

  /** A new sparse file in the machine's own directory. */
  sparseFile(machine: string, name: string, sizeBytes: number): string {
    const file = join(this.dir, machine, name);
    const fd = openSync(file, 'w');
    try {
      ftruncateSync(fd, sizeBytes);
    } finally {
      closeSync(fd);
    }
    return file;
  }

  get controllerAddress(): string {
    return `${this.t.addr('ctl', 'mgmt')}:${CONTROLLER_PORT}`;
  }

  /** The agent's portal, on the management network (where the hosts' clients reach it). */
  agentPortal(host: Host): string {
    return `${this.t.addr(host, 'mgmt')}:${ISCSI_PORT}`;
  }

  /** iscsi:// URL of a vdisk's LUN 0 on a host's agent. */
  agentUrl(host: Host, vdisk: string): string {
    return `iscsi://${this.agentPortal(host)}/iqn.2026-11.org.tabula:${vdisk}/0`;
  }

  startDaemon(machine: string, label: string, args: readonly string[], ready: RegExp): Promise<Daemon> {
    return startDaemon(args, {
      label: `${label} on ${machine}`,
      logFile: join(this.dir, machine, `${label}.${++this.#starts}.log`),
      ready,
      readyMs: 90_000,
      lifetimeMs: 15 * 60_000,
      env: { TABULA_LOG_LEVEL: 'info', TABULA_TOKEN: this.token },
      netns: this.t.ns(machine),
    });
  }

  /** The controller's Prometheus endpoint on the management network (when started with `metrics: true`). */
  get controllerMetricsAddress(): string {
    return `${this.t.addr('ctl', 'mgmt')}:${CONTROLLER_METRICS_PORT}`;
  }

  async startController(opts: { holdTimeoutS?: number; metrics?: boolean; extra?: readonly string[] } = {}): Promise<Daemon> {
    const args = ['controller', '--db', join(this.dir, 'ctl', 'controller.db'), '--listen', this.controllerAddress];
    if (opts.holdTimeoutS !== undefined) args.push('--hold-timeout', String(opts.holdTimeoutS));
    if (opts.metrics === true) args.push('--metrics-listen', this.controllerMetricsAddress);
    args.push(...(opts.extra ?? []));
    this.controller = await this.startDaemon('ctl', 'controller', args, /controller listening on \S+/);
    return this.controller;
  }

  /** The controller's `/metrics` text, fetched from inside ctl (its address is only there). */
  async controllerMetrics(): Promise<string> {
    const script = 'fetch(process.argv[1]).then(async (r) => process.stdout.write(await r.text()), (e) => { process.stderr.write(String(e)); process.exit(1); });';
    const r = await this.t.execOk('ctl', [process.execPath, '-e', script, `http://${this.controllerMetricsAddress}/metrics`], { timeoutMs: 30_000 });
    return r.stdout;
  }

  async startAgent(host: Host, o: AgentStart): Promise<Daemon> {
    const portal = this.agentPortal(host);
    const args = ['agent', '--controller', this.controllerAddress, '--name', host, '--portal', portal, '--containers', ...o.containers];
    if (o.holdTimeoutS !== undefined) args.push('--hold-timeout', String(o.holdTimeoutS));
    if (o.hostId !== undefined) args.push('--host-id', o.hostId);
    args.push(...(o.extra ?? []));
    const d = await this.startDaemon(host, 'agent', args, new RegExp(`agent ${host} serving on ${portal.replace(/\./g, '\\.')}`));
    this.agents.set(host, d);
    return d;
  }

  agent(host: Host): Daemon {
    const d = this.agents.get(host);
    if (d === undefined) throw new Error(`no agent on ${host}`);
    return d;
  }

  /** One `tabula` command on `machine` (the controller's by default); `--controller` is added unless admin is false. */
  cli(args: readonly string[], o: { machine?: string; admin?: boolean; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
    const full = o.admin === false ? [...args] : [...args, '--controller', this.controllerAddress];
    return runTabula(tabulaLauncher(), full, { timeoutMs: o.timeoutMs ?? 90_000, netns: this.t.ns(o.machine ?? 'ctl'), env: { TABULA_TOKEN: this.token, ...o.env } });
  }

  async cliOk(args: readonly string[], o: { machine?: string; admin?: boolean; timeoutMs?: number } = {}): Promise<string> {
    const r = await this.cli(args, o);
    if (r.exitCode !== 0) throw new Error(describeRun(r));
    return r.stdout;
  }

  async cliJson<T>(args: readonly string[], o: { machine?: string; admin?: boolean } = {}): Promise<T> {
    return JSON.parse(await this.cliOk([...args, '--json'], o)) as T;
  }

  /**
   * Starts a writer at queue depth `depth` on `host`, through the agent on
   * `via` (default: the host's own), to a vdisk of `sizeBytes`; every write
   * also goes to `reference` (created sparse here when missing).
   */
  startWriter(host: Host, vdisk: string, sizeBytes: number, reference: string, o: { via?: Host; depth?: number } = {}): HostWriter {
    const depth = o.depth ?? 16;
    if (!existsSync(reference)) {
      const fd = openSync(reference, 'w');
      try {
        ftruncateSync(fd, sizeBytes);
      } finally {
        closeSync(fd);
      }
    }
    const log = join(this.dir, host, `writer.${++this.#starts}.log`);
    const fd = openSync(log, 'a');
    try {
      const argv = [process.execPath, '--import', 'tsx', WRITER, this.agentPortal(o.via ?? host), `iqn.2026-11.org.tabula:${vdisk}`, String(sizeBytes), reference, String(depth), '600'];
      return new HostWriter(host, this.t.spawn(host, argv, 11 * 60_000, ['ignore', 'pipe', fd]), log);
    } finally {
      closeSync(fd);
    }
  }

  /** A client program (qemu-img, iscsi-inq, ...) run on a host. */
  client(machine: string, argv: readonly string[], timeoutMs = 180_000): Promise<RunResult> {
    return this.t.exec(machine, argv, { timeoutMs });
  }

  async clientOk(machine: string, argv: readonly string[], timeoutMs = 180_000): Promise<RunResult> {
    const r = await this.client(machine, argv, timeoutMs);
    if (r.exitCode !== 0) throw new Error(`on ${machine}: ${describeRun(r)}`);
    return r;
  }

  /** Whether `host` reads `len` bytes at `offset` of `url` (qemu-io) within `timeoutMs`. */
  async readable(host: string, url: string, o: { offset?: number; len?: number; timeoutMs?: number } = {}): Promise<boolean> {
    const r = await this.client(host, ['qemu-io', '-f', 'raw', '-c', `read ${o.offset ?? 0} ${o.len ?? 512}`, url], o.timeoutMs ?? 30_000);
    return r.exitCode === 0 && !/failed|error/i.test(r.stdout + r.stderr);
  }

  /** Waits until `host` reads LBA 0 of a vdisk through the agent on `via` (default: its own). */
  async waitServed(host: Host, vdisk: string, o: { via?: Host; ms?: number } = {}): Promise<void> {
    const url = this.agentUrl(o.via ?? host, vdisk);
    await waitFor(`vdisk ${vdisk} read from ${host} through ${o.via ?? host}`, o.ms ?? 90_000, async () => ((await this.readable(host, url, { timeoutMs: 20_000 })) ? true : undefined), 500);
  }

  /** qemu-img compare of a raw image with a LUN, from `machine`: exit 0 same, 1 different. */
  async compare(machine: string, image: string, url: string, timeoutMs = 180_000): Promise<{ same: boolean; text: string }> {
    const r = await this.client(machine, ['qemu-img', 'compare', '-f', 'raw', '-F', 'raw', image, url], timeoutMs);
    if (r.exitCode !== 0 && r.exitCode !== 1) throw new Error(`on ${machine}: ${describeRun(r)}`);
    return { same: r.exitCode === 0, text: (r.stdout + r.stderr).trim() };
  }

  /** Writes a raw image onto a LUN from `machine` (zeros where the image has holes). */
  async copyTo(machine: string, image: string, url: string, timeoutMs = 180_000): Promise<void> {
    await this.clientOk(machine, ['qemu-img', 'convert', '-n', '-f', 'raw', '-O', 'raw', image, url], timeoutMs);
  }

  /**
   * Files under another machine's directory that processes of `machine` hold
   * open: none, when agents reach storage only over the network.
   */
  foreignFilesOpen(machine: string): string[] {
    const out: string[] = [];
    for (const pid of this.t.pids(machine)) {
      let fds: string[];
      try {
        fds = readdirSync(`/proc/${pid}/fd`);
      } catch {
        continue;
      }
      for (const fd of fds) {
        let target: string;
        try {
          target = readlinkSync(`/proc/${pid}/fd/${fd}`);
        } catch {
          continue;
        }
        if (target.startsWith(this.dir + '/') && !target.startsWith(join(this.dir, machine) + '/')) out.push(`${pid}: ${target}`);
      }
    }
    return out;
  }

  /** Stops every process (agents, controller, targets) and removes the dir unless `keep`. */
  async close(keep: boolean): Promise<void> {
    await Promise.all([...this.agents.values()].map((a) => a.stop(10_000)));
    await this.controller?.stop(10_000);
    await this.target.stop();
    await this.target3?.stop();
    await this.tgtd.stop();
    if (!keep) rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * mocha hooks: the topology, then the storage network on it (set up by
 * `setup`); after the block the processes are stopped and then the topology
 * is torn down, also when a test failed; the dir is kept when anything failed.
 */
export function useStorageNetwork(label: string, setup: (n: StorageNetwork) => Promise<void>, spec: TopologySpec = TOPOLOGY): () => StorageNetwork {
  let topology: Topology | undefined;
  let net: StorageNetwork | undefined;
  let failed = false;
  before(async function () {
    this.timeout(240_000);
    const reason = netnsUnavailable();
    if (reason !== undefined) {
      process.stderr.write(`skipping ${this.test?.parent?.fullTitle() ?? label}: ${reason}\n`);
      this.skip();
    }
    topology = await Topology.create(spec);
    net = StorageNetwork.create(topology, label);
    try {
      await setup(net);
    } catch (err) {
      failed = true;
      throw err;
    }
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });
  after(async function () {
    this.timeout(120_000);
    try {
      if (net !== undefined) {
        await net.close(failed || process.env.TABULA_SYSTEM_KEEP === '1');
        if (failed) process.stderr.write(`system test ${label}: logs, database and files kept in ${net.dir}\n`);
      }
    } finally {
      await topology?.destroy();
    }
  });
  return () => {
    if (net === undefined) throw new Error('storage network not started');
    return net;
  };
}
