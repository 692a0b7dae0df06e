// A Tabula cluster of real processes for the system tests (and the e2e
// scenarios and cost benches): one controller and any number of agents, each
// a `tabula` daemon started by test/support/tabula-process.ts (the build when
// current, else the sources), on free loopback ports, in one temp dir that is
// kept when a test fails. Admin commands run the real CLI; the admin API
// (AdminClient) is used only to poll for readiness. serveVdisk is the set-up
// most tests share: a vdisk exported on every agent.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeRun, type RunResult } from '../support/bounded-run.js';
import { LOOPBACK, freeLoopbackPort, waitFor } from '../support/process.js';
import { runTabula, startDaemon, tabulaLauncher, type Daemon } from '../support/tabula-process.js';
import { AdminClient } from '../../src/wire/grpc.js';
import type { ExportInfo } from '../../src/wire/proto-types.js';
import { GOOD, LunSession, describeIo } from './scsi-client.js';

export interface AgentProc {
  name: string;
  daemon: Daemon;
  /** HOST:PORT of its iSCSI portal. */
  portal: string;
  port: number;
}

export interface AgentOptions {
  holdTimeoutS?: number;
  /** Its portal's port (default: the one it had, else a free one). */
  port?: number;
  /** HOST:PORT to reach the controller by (a proxy); default the controller's address. */
  controller?: string;
  /** --host-id: the host the agent says it runs on (default: this machine's). */
  hostId?: string;
  /** More flags for `tabula agent` (e.g. --rescan-interval). */
  args?: readonly string[];
}

/** The set-up most system tests share: see Cluster.serveVdisk. */
export interface ServedVdisk {
  /** A thin vdisk of this name and size. */
  vdisk: string;
  size: string;
  /** The size of the one container, c0.img, every agent serves from. */
  containerSize: string;
  /** The agents, each with its own options, in the order they are named; every one exports the vdisk. */
  agents: Readonly<Record<string, AgentOptions>>;
  controller?: ControllerOptions;
}

export interface ControllerOptions {
  /** Seconds agents hold a faulted I/O before NOT READY (the daemon's default 10 when omitted). */
  holdTimeoutS?: number;
  ackTimeoutS?: number;
  /** Base deadline of copy and zero commands (--command-timeout). */
  commandTimeoutS?: number;
  /** More flags for `tabula controller`. */
  args?: readonly string[];
  /** More environment (TABULA_* variables pass only this way). */
  env?: Readonly<Record<string, string>>;
}

/** A controller and agents in one temp dir. */
export class Cluster {
  controller: Daemon | undefined;
  readonly agents = new Map<string, AgentProc>();
  #admin: AdminClient | undefined;
  #starts = 0;
  #controllerOpts: ControllerOptions = {};

  private constructor(
    readonly dir: string,
    readonly controllerPort: number,
  ) {}

  static async create(label: string): Promise<Cluster> {
    const dir = mkdtempSync(join(tmpdir(), `tabula-system-${label}-`));
    return new Cluster(dir, await freeLoopbackPort());
  }

  get controllerAddress(): string {
    return `${LOOPBACK}:${this.controllerPort}`;
  }

  get dbPath(): string {
    return join(this.dir, 'controller.db');
  }

  /** The admin API, for polling; the CLI is what tests assert on. */
  get admin(): AdminClient {
    this.#admin ??= new AdminClient(this.controllerAddress, { deadlineMs: 15_000 });
    return this.#admin;
  }

  /**
   * Starts a `tabula` daemon with its log in the cluster's dir and waits until
   * its stdout matches `ready` (killed if it does not within a minute).
   * TABULA_SYSTEM_NODE_ARGS: node flags for the daemons (e.g. --cpu-prof), for profiling a bench or a test.
   */
  startDaemon(label: string, args: readonly string[], ready: RegExp, lifetimeMs = 10 * 60_000, env: Readonly<Record<string, string>> = {}): Promise<Daemon> {
    const nodeArgs = (process.env.TABULA_SYSTEM_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
    return startDaemon(args, {
      label,
      launcher: [...nodeArgs, ...tabulaLauncher()],
      logFile: join(this.dir, `${label}.${++this.#starts}.log`),
      ready,
      lifetimeMs,
      env: { TABULA_LOG_LEVEL: 'info', ...env },
    });
  }

  /** Starts (or restarts, on the same database and port) the controller; resolves when it listens. */
  async startController(opts?: ControllerOptions, lifetimeMs = 10 * 60_000): Promise<Daemon> {
    if (this.controller?.running) throw new Error('the controller is already running');
    if (opts !== undefined) this.#controllerOpts = opts;
    const o = this.#controllerOpts;
    const args = ['controller', '--db', this.dbPath, '--listen', this.controllerAddress];
    if (o.holdTimeoutS !== undefined) args.push('--hold-timeout', String(o.holdTimeoutS));
    if (o.ackTimeoutS !== undefined) args.push('--ack-timeout', String(o.ackTimeoutS));
    if (o.commandTimeoutS !== undefined) args.push('--command-timeout', String(o.commandTimeoutS));
    args.push(...(o.args ?? []));
    this.controller = await this.startDaemon('controller', args, /controller listening on \S+/, lifetimeMs, o.env);
    return this.controller;
  }

  async killController(): Promise<void> {
    await this.controller?.kill();
  }

  /**
   * Starts (or restarts under the same name and portal) an agent over
   * `containers` globs; resolves when it serves its portal (its tables load
   * in the background: see waitServed).
   */
  async startAgent(
    name: string,
    opts: AgentOptions & { containers: string[] },
    lifetimeMs = 10 * 60_000,
  ): Promise<AgentProc> {
    if (this.agents.get(name)?.daemon.running) throw new Error(`agent ${name} is already running`);
    const port = opts.port ?? this.agents.get(name)?.port ?? (await freeLoopbackPort());
    const portal = `${LOOPBACK}:${port}`;
    const args = ['agent', '--controller', opts.controller ?? this.controllerAddress, '--name', name, '--portal', portal, '--containers', ...opts.containers];
    if (opts.holdTimeoutS !== undefined) args.push('--hold-timeout', String(opts.holdTimeoutS));
    if (opts.hostId !== undefined) args.push('--host-id', opts.hostId);
    args.push(...(opts.args ?? []));
    const d = await this.startDaemon(`agent-${name}`, args, new RegExp(`agent ${name} serving on ${portal.replace(/\./g, '\\.')}`), lifetimeMs);
    const a = { name, daemon: d, portal, port };
    this.agents.set(name, a);
    return a;
  }

  agent(name: string): AgentProc {
    const a = this.agents.get(name);
    if (a === undefined) throw new Error(`no agent ${name}`);
    return a;
  }

  /** iscsi:// URL of a vdisk's default export (LUN 0) on an agent. */
  url(agent: string, vdisk: string): string {
    return `iscsi://${this.agent(agent).portal}/${iqnOf(vdisk)}/0`;
  }

  /** Runs one `tabula` command (60 s at most); `--controller` is added for admin commands. */
  cli(args: readonly string[], opts: { admin?: boolean; timeoutMs?: number } = {}): Promise<RunResult> {
    const full = opts.admin === false ? [...args] : [...args, '--controller', this.controllerAddress];
    return runTabula(tabulaLauncher(), full, { timeoutMs: opts.timeoutMs ?? 60_000 });
  }

  async cliOk(args: readonly string[], opts: { admin?: boolean } = {}): Promise<string> {
    const r = await this.cli(args, opts);
    if (r.exitCode !== 0) throw new Error(describeRun(r));
    return r.stdout;
  }

  async cliJson<T>(args: readonly string[]): Promise<T> {
    return JSON.parse(await this.cliOk([...args, '--json'])) as T;
  }

  /** Creates a sparse container file under dir/containers/ (via the CLI) and registers it. */
  async addContainer(file: string, size: string): Promise<string> {
    const path = join(this.dir, 'containers', file);
    mkdirSync(join(this.dir, 'containers'), { recursive: true });
    const init = JSON.parse(await this.cliOk(['container', 'init', path, '--size', size, '--json'], { admin: false })) as { id: string };
    await this.cliOk(['container', 'add', path]);
    return init.id;
  }

  get containerGlob(): string {
    return join(this.dir, 'containers', '*.img');
  }

  /**
   * Waits until every named agent has acked the vdisk's current table version,
   * unfenced, and answers a READ of LBA 0 on its LUN. (The acked version the
   * controller shows outlives an agent's restart, so the read is what proves
   * a restarted agent has its table again.)
   */
  async waitServed(vdisk: string, agents: readonly string[], ms = 60_000): Promise<void> {
    await waitFor(`vdisk ${vdisk} served by ${agents.join(', ')}`, ms, async () => {
      const v = await this.admin.call('ShowVdisk', { name: vdisk });
      const ex = await this.admin.call('ListExports', { vdisk });
      const ok = agents.every((a) => ex.exports.some((e: ExportInfo) => e.agent === a && !e.fenced && e.ackedVersion === v.version));
      if (!ok) return undefined;
      // ALUA: each agent's port group, as every one of them reports it, must
      // be active too, so that no ASYMMETRIC ACCESS STATE CHANGED from the
      // set-up reaches the sessions of the test.
      const numbers = new Set((await this.admin.call('ListAgents', {})).agents.filter((x) => agents.includes(x.name)).map((x) => x.number ?? 0));
      for (const a of agents) {
        const s = await LunSession.open(this.agent(a).portal, iqnOf(vdisk), v.blockSize);
        try {
          const r = await s.read(0, 1, 5000);
          if (r.status !== GOOD) throw new Error(`agent ${a}: READ of LBA 0 ${describeIo(r)}`);
          const active = await groupsActive(s, numbers);
          if (active !== true) throw new Error(`agent ${a}: ${active}`);
        } finally {
          s.close();
        }
      }
      return true;
    }, 300);
  }

  /**
   * A controller, one container, the agents over it, and one thin vdisk
   * exported (LUN 0) on every agent and served by all of them; returns the
   * container's id.
   */
  async serveVdisk(s: ServedVdisk): Promise<string> {
    await this.startController(s.controller);
    const container = await this.addContainer('c0.img', s.containerSize);
    const names = Object.keys(s.agents);
    await Promise.all([
      ...names.map((name) => this.startAgent(name, { ...s.agents[name], containers: [this.containerGlob] })),
      this.cliOk(['vdisk', 'create', s.vdisk, '--size', s.size]),
    ]);
    await Promise.all(names.map((name) => this.cliOk(['export', 'add', s.vdisk, '--agent', name])));
    await this.waitServed(s.vdisk, names);
    return container;
  }

  /** Stops every daemon (SIGTERM, then SIGKILL) and removes the dir unless `keep`. */
  async close(keep: boolean): Promise<void> {
    this.#admin?.close();
    this.#admin = undefined;
    await Promise.all([...this.agents.values()].map((a) => a.daemon.stop(10_000)));
    await this.controller?.stop(10_000);
    if (!keep) rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * true when REPORT TARGET PORT GROUPS through `s` lists every group of
 * `ids` as active/optimized or active/non-optimized (a target that lists no
 * such group id, e.g. one with no controller, passes), else why not.
 */
async function groupsActive(s: LunSession, ids: ReadonlySet<number>): Promise<true | string> {
  const cdb = Buffer.alloc(12);
  cdb[0] = 0xa3;
  cdb[1] = 0x0a;
  cdb.writeUInt32BE(4096, 6);
  const r = await s.command(cdb, { read: 4096, timeoutMs: 5000 });
  if (r.status !== GOOD) return `REPORT TARGET PORT GROUPS ${describeIo(r)}`;
  const d = r.data;
  const end = Math.min(d.length, d.readUInt32BE(0) + 4);
  for (let off = 4; off + 8 <= end; off += 8 + d[off + 7]! * 4) {
    const id = d.readUInt16BE(off + 2);
    const state = d[off]! & 0x0f;
    if (ids.has(id) && state > 1) return `port group ${id} in state ${state}`;
  }
  return true;
}

export function iqnOf(vdisk: string): string {
  return `iqn.2026-11.org.tabula:${vdisk}`;
}

/**
 * mocha hooks for one describe block: a fresh cluster before, stopped after;
 * its dir (logs, database, containers) is kept when anything failed.
 */
export function useCluster(label: string, setup: (c: Cluster) => Promise<void>): () => Cluster {
  let cluster: Cluster | undefined;
  let failed = false;
  before(async function () {
    this.timeout(180_000);
    cluster = await Cluster.create(label);
    try {
      await setup(cluster);
    } catch (err) {
      failed = true;
      throw err;
    }
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });
  after(async function () {
    this.timeout(60_000);
    if (cluster === undefined) return;
    await cluster.close(failed || process.env.TABULA_SYSTEM_KEEP === '1');
    if (failed) process.stderr.write(`system test ${label}: logs, database and containers kept in ${cluster.dir}\n`);
  });
  return () => {
    if (cluster === undefined) throw new Error('cluster not started');
    return cluster;
  };
}
