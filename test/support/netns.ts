// Many machines on one test host: a topology of Linux network namespaces that
// a test creates and always tears down. Each machine is a namespace with
// loopback up; each network is a bridge, and every bridge lives in one
// namespace of the run's own (so the root namespace's firewall and links are
// never touched); a machine joins a network through a veth pair whose bridge
// end is named NET-MACHINE. Addresses (10.231.R.0/24, one /26 per network) are
// assigned only inside the namespaces. Namespaces are named tbn<pid>-<rand>-X,
// unique per run, so a sweep can remove what a run that died left behind.
//
// Cutting a link is `ip link set down` on the bridge end of one machine's
// veth: the machine sees its carrier go (as with a pulled cable) and packets
// between it and that network are dropped silently. With one network per
// storage node (see the storage-network tests) this cuts exactly one host from
// one storage node.
//
// Teardown kills every process left in the run's namespaces, then deletes
// them; it runs from the mocha after hook, on process exit and on
// SIGINT/SIGTERM, is idempotent and bounded in time.
import type { ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { describeRun, runBounded, spawnBounded, type RunOptions, type RunResult } from './bounded-run.js';
import { sleep } from './process.js';
import { onPath } from './tools.js';

/** The machines (namespaces) and, per network, which machines are on it. */
export interface TopologySpec {
  machines: readonly string[];
  /** Network name -> its members, in any order. At most 4 networks. */
  networks: Readonly<Record<string, readonly string[]>>;
}

const NAME = /^[a-z][a-z0-9]{0,5}$/;
const MAX_NETWORKS = 4;
const RUN_PREFIX = 'tbn';
/** Every ip(8) call is bounded by this. */
const IP_TIMEOUT_MS = 15_000;

/** Why the topology cannot be built here, or undefined when it can. */
export function netnsUnavailable(): string | undefined {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (process.getuid?.() !== 0) return 'network namespaces need root (run as root, as CI does)';
  if (!onPath('ip')) return 'ip(8) is missing (apt-get install iproute2)';
  try {
    execFileSync('ip', ['netns', 'list'], { timeout: 5000, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    return `ip netns does not work here: ${(err as Error).message.split('\n')[0]}`;
  }
  return undefined;
}

/** The namespaces that exist now (first word of each `ip netns list` line). */
export function listNamespaces(): string[] {
  const out = execFileSync('ip', ['netns', 'list'], { timeout: 5000, encoding: 'utf8' });
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n !== '');
}

/** Synchronous teardown of namespaces: for the exit and signal handlers, which cannot wait. */
function destroySync(namespaces: readonly string[]): void {
  const existing = new Set(listNamespaces());
  for (const ns of namespaces) {
    if (!existing.has(ns)) continue;
    for (const pid of pidsIn(ns)) killPid(pid);
  }
  for (const ns of namespaces) {
    if (!existing.has(ns)) continue;
    try {
      execFileSync('ip', ['netns', 'del', ns], { timeout: 5000, stdio: 'ignore' });
    } catch {
      // Best effort: the next run's sweep removes it.
    }
  }
}

function pidsIn(ns: string): number[] {
  try {
    const out = execFileSync('ip', ['netns', 'pids', ns], { timeout: 5000, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return out.split(/\s+/).filter((s) => /^\d+$/.test(s)).map(Number).filter((p) => p !== process.pid);
  } catch {
    return [];
  }
}

function killPid(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes the namespaces of earlier runs whose test process is gone (a run
 * SIGKILLed before its exit handler could clean up).
 */
export function sweepStaleNamespaces(): string[] {
  const re = new RegExp(`^${RUN_PREFIX}(\\d+)-[0-9a-f]+-`);
  const stale = listNamespaces().filter((ns) => {
    const m = re.exec(ns);
    return m !== null && Number(m[1]) !== process.pid && !pidAlive(Number(m[1]));
  });
  destroySync(stale);
  return stale;
}

/** Live topologies of this process, torn down on exit and on SIGINT/SIGTERM. */
const live = new Set<Topology>();
let hooksInstalled = false;

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => {
    for (const t of live) destroySync(t.namespaces);
    live.clear();
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    const handler = (): void => {
      for (const t of live) destroySync(t.namespaces);
      live.clear();
      // A listener replaces node's default action: when nobody else handles
      // the signal, die of it as we would have.
      process.off(sig, handler);
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.on(sig, handler);
  }
}

async function ip(args: readonly string[]): Promise<RunResult> {
  const r = await runBounded('ip', args, { timeoutMs: IP_TIMEOUT_MS });
  if (r.exitCode !== 0) throw new Error(describeRun(r));
  return r;
}

/** One machine's place on one network. */
interface Attachment {
  network: string;
  machine: string;
  address: string;
  /** The veth end on the bridge, in the bridge namespace. */
  bridgePort: string;
}

export class Topology {
  /** The run's namespace prefix, tbn<pid>-<rand>. */
  readonly prefix: string;
  /** Third octet of this run's addresses. */
  readonly run: number;
  readonly #attachments: Attachment[] = [];
  #destroyed = false;

  private constructor(readonly spec: TopologySpec) {
    this.prefix = `${RUN_PREFIX}${process.pid}-${randomBytes(2).toString('hex')}`;
    this.run = 1 + (process.pid % 250);
    const nets = Object.keys(spec.networks);
    if (nets.length === 0 || nets.length > MAX_NETWORKS) throw new Error(`a topology has 1..${MAX_NETWORKS} networks, not ${nets.length}`);
    for (const n of [...spec.machines, ...nets]) {
      if (!NAME.test(n)) throw new Error(`machine or network name ${JSON.stringify(n)}: 1-6 lower-case letters and digits`);
    }
    if (spec.machines.includes('br')) throw new Error('"br" names the bridges\' namespace, not a machine');
    nets.forEach((network, i) => {
      for (const machine of spec.networks[network] ?? []) {
        const index = spec.machines.indexOf(machine);
        if (index < 0) throw new Error(`network ${network}: no machine ${machine}`);
        // The machine's index is the same on every network, so its address
        // ends alike everywhere: .(64i + 2 + index).
        this.#attachments.push({ network, machine, address: `10.231.${this.run}.${64 * i + 2 + index}`, bridgePort: `${network}-${machine}` });
      }
    });
  }

  /**
   * Builds the namespaces, bridges and links; on any failure what was built
   * is torn down again and the error is thrown.
   */
  static async create(spec: TopologySpec): Promise<Topology> {
    const reason = netnsUnavailable();
    if (reason !== undefined) throw new Error(reason);
    sweepStaleNamespaces();
    const t = new Topology(spec);
    installHooks();
    live.add(t);
    try {
      await t.#build();
    } catch (err) {
      await t.destroy();
      throw err;
    }
    return t;
  }

  /** Every namespace of the run: the machines' and the bridges'. */
  get namespaces(): string[] {
    return [...this.spec.machines.map((m) => this.ns(m)), this.bridgeNs];
  }

  get bridgeNs(): string {
    return `${this.prefix}-br`;
  }

  /** The namespace of a machine. */
  ns(machine: string): string {
    if (!this.spec.machines.includes(machine)) throw new Error(`no machine ${machine} in this topology`);
    return `${this.prefix}-${machine}`;
  }

  /** The machine's address on `network` (default: the first network it is on). */
  addr(machine: string, network?: string): string {
    const a = this.#attachments.find((x) => x.machine === machine && (network === undefined || x.network === network));
    if (a === undefined) throw new Error(`machine ${machine} is not on ${network ?? 'any network'}`);
    return a.address;
  }

  async #build(): Promise<void> {
    for (const ns of this.namespaces) {
      await ip(['netns', 'add', ns]);
      await ip(['-n', ns, 'link', 'set', 'dev', 'lo', 'up']);
    }
    const br = this.bridgeNs;
    for (const network of Object.keys(this.spec.networks)) {
      await ip(['-n', br, 'link', 'add', 'name', network, 'type', 'bridge']);
      await ip(['-n', br, 'link', 'set', 'dev', network, 'up']);
    }
    for (const a of this.#attachments) {
      const inside = this.ns(a.machine);
      // Both ends are created directly in their namespaces: nothing ever
      // appears in the root namespace, even if the run dies right here.
      await ip(['-n', br, 'link', 'add', 'name', a.bridgePort, 'type', 'veth', 'peer', 'name', a.network, 'netns', inside]);
      await ip(['-n', br, 'link', 'set', 'dev', a.bridgePort, 'master', a.network]);
      await ip(['-n', br, 'link', 'set', 'dev', a.bridgePort, 'up']);
      await ip(['-n', inside, 'addr', 'add', `${a.address}/26`, 'dev', a.network]);
      await ip(['-n', inside, 'link', 'set', 'dev', a.network, 'up']);
    }
  }

  /** argv as run inside the machine's namespace. */
  wrap(machine: string, argv: readonly string[]): string[] {
    return ['netns', 'exec', this.ns(machine), ...argv];
  }

  /** Runs argv inside the machine's namespace, bounded like runBounded; never rejects for a non-zero exit. */
  exec(machine: string, argv: readonly string[], opts: RunOptions): Promise<RunResult> {
    return runBounded('ip', this.wrap(machine, argv), opts);
  }

  /** exec, requiring exit status 0. */
  async execOk(machine: string, argv: readonly string[], opts: RunOptions): Promise<RunResult> {
    const r = await this.exec(machine, argv, opts);
    if (r.exitCode !== 0) throw new Error(`in ${machine}: ${describeRun(r)}`);
    return r;
  }

  /** Starts argv inside the machine's namespace as spawnBounded does (time-bounded, own process group). */
  spawn(
    machine: string,
    argv: readonly string[],
    limitMs: number,
    stdio: ['ignore' | 'pipe', 'pipe' | 'ignore' | number, 'pipe' | 'ignore' | number],
    env?: NodeJS.ProcessEnv,
  ): ChildProcess {
    return spawnBounded('ip', this.wrap(machine, argv), limitMs, stdio, env);
  }

  #attachment(machine: string, network: string): Attachment {
    const a = this.#attachments.find((x) => x.machine === machine && x.network === network);
    if (a === undefined) throw new Error(`machine ${machine} is not on network ${network}`);
    return a;
  }

  /** Pulls the machine's cable to `network`: its traffic on that network is dropped silently until restore(). */
  async cut(machine: string, network: string): Promise<void> {
    await ip(['-n', this.bridgeNs, 'link', 'set', 'dev', this.#attachment(machine, network).bridgePort, 'down']);
  }

  async restore(machine: string, network: string): Promise<void> {
    await ip(['-n', this.bridgeNs, 'link', 'set', 'dev', this.#attachment(machine, network).bridgePort, 'up']);
  }

  /**
   * Whether `from` reaches `to`'s address on `network` within `ms`: a TCP
   * connection to a closed port is refused at once when the peer is
   * reachable, and times out or fails with an unreachable error when not.
   * (No ping: a minimal Debian has none; node is always here.)
   */
  async reaches(from: string, to: string, network?: string, ms = 2000): Promise<boolean> {
    const script = [
      "const s = require('node:net').connect({ host: process.argv[1], port: 9 });",
      `s.setTimeout(${ms});`,
      "const end = (w) => { process.stdout.write(w); process.exit(0); };",
      "s.on('connect', () => end('open'));",
      "s.on('timeout', () => end('timeout'));",
      "s.on('error', (e) => end(String(e.code)));",
    ].join(' ');
    const r = await this.execOk(from, [process.execPath, '-e', script, this.addr(to, network)], { timeoutMs: ms + 15_000 });
    return r.stdout === 'open' || r.stdout === 'ECONNREFUSED';
  }

  /** Pids of the processes inside the machine's namespace. */
  pids(machine: string): number[] {
    return pidsIn(this.ns(machine));
  }

  /**
   * Kills whatever still runs in the namespaces (every such process is one
   * this run started), deletes them, and checks that none is left. Idempotent;
   * bounded (each ip call 15 s, the wait for killed processes 10 s).
   */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    const existing = new Set(listNamespaces());
    const mine = this.namespaces.filter((ns) => existing.has(ns));
    for (const ns of mine) for (const pid of pidsIn(ns)) killPid(pid);
    const deadline = Date.now() + 10_000;
    while (mine.some((ns) => pidsIn(ns).length > 0) && Date.now() < deadline) await sleep(100);
    const problems: string[] = [];
    for (const ns of mine) {
      const r = await runBounded('ip', ['netns', 'del', ns], { timeoutMs: IP_TIMEOUT_MS });
      if (r.exitCode !== 0) problems.push(describeRun(r));
    }
    live.delete(this);
    const left = listNamespaces().filter((ns) => ns.startsWith(this.prefix));
    if (left.length > 0 || problems.length > 0) throw new Error(`namespaces of ${this.prefix} not removed: ${left.join(', ')} ${problems.join('; ')}`);
  }
}

/**
 * mocha hooks for one describe block: the topology is built before (the
 * block is skipped, with the reason, when namespaces cannot be made here)
 * and destroyed after, also when a test failed.
 */
export function useTopology(spec: TopologySpec): () => Topology {
  let topology: Topology | undefined;
  before(async function () {
    this.timeout(120_000);
    const reason = netnsUnavailable();
    if (reason !== undefined) {
      process.stderr.write(`skipping ${this.test?.parent?.fullTitle() ?? 'namespace tests'}: ${reason}\n`);
      this.skip();
    }
    topology = await Topology.create(spec);
  });
  after(async function () {
    this.timeout(60_000);
    await topology?.destroy();
  });
  return () => {
    if (topology === undefined) throw new Error('topology not built');
    return topology;
  };
}
