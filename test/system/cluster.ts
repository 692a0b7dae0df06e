// A Tabula cluster of real processes for the system tests: one controller and
// any number of agents, each `tabula` daemon in its own time-bounded process
// group (test/support/bounded-run.ts), on free loopback ports, in one temp
// dir that is kept when a test fails. Admin commands run the real CLI; the
// admin API (AdminClient) is used only to poll for readiness.
//
// The processes run the compiled dist/ when it is at least as new as every
// source file (as under `npm test`, which builds first), else the sources
// through tsx, so a stale build is never what gets tested.
import type { ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeRun, killGroup, runBounded, spawnBounded, type RunResult } from '../support/bounded-run.js';
import { freeLoopbackPort, repoRoot } from '../support/target-process.js';
import { AdminClient } from '../../src/wire/grpc.js';
import type { ExportInfo } from '../../src/wire/proto-types.js';
import { GOOD, LunSession, describeIo } from './scsi-client.js';

export const LOOPBACK = '127.0.0.1';
const ENTRY = fileURLToPath(new URL('./tabula-entry.ts', import.meta.url));

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it returns a value other than undefined; throws `what` with the last error after `ms`. */
export async function waitFor<T>(what: string, ms: number, probe: () => Promise<T | undefined>, everyMs = 200): Promise<T> {
  const deadline = Date.now() + ms;
  let last = '';
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms${last ? ` (last: ${last})` : ''}`);
    await sleep(everyMs);
  }
}

function newestMtime(dir: string, ext: string): Map<string, number> {
  const out = new Map<string, number>();
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(ext)) out.set(p, statSync(p).mtimeMs);
    }
  };
  walk(dir);
  return out;
}

let launcher: string[] | undefined;

/** node arguments that run `tabula`: the build when it is current, else the sources. */
export function tabulaLauncher(): string[] {
  if (launcher !== undefined) return launcher;
  const root = repoRoot();
  let fresh = existsSync(join(root, 'dist', 'src', 'cli', 'main.js'));
  if (fresh) {
    for (const [src, mtime] of newestMtime(join(root, 'src'), '.ts')) {
      const js = join(root, 'dist', relative(root, src)).replace(/\.ts$/, '.js');
      if (!existsSync(js) || statSync(js).mtimeMs < mtime) {
        fresh = false;
        break;
      }
    }
  }
  launcher = fresh ? [join(root, 'bin', 'tabula.js')] : ['--import', 'tsx', ENTRY];
  return launcher;
}

/** Environment for tabula processes: no TABULA_* settings leak in from the caller. */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('TABULA_')) env[k] = v;
  return { ...env, ...extra };
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

/** One running `tabula` daemon. */
export class Daemon {
  #out = '';

  constructor(
    readonly label: string,
    readonly child: ChildProcess,
    readonly logFile: string,
  ) {
    child.stdout?.on('data', (c: Buffer) => (this.#out += c.toString()));
  }

  get stdout(): string {
    return this.#out;
  }

  get running(): boolean {
    return !exited(this.child);
  }

  /**
   * The tabula process itself: `child` is the timeout(1) wrapper it runs
   * under, so a signal meant for the daemon alone (SIGTERM without the
   * wrapper's later SIGKILL) or its /proc figures go to this pid.
   */
  get processPid(): number {
    const pid = this.child.pid;
    if (pid === undefined) throw new Error(`${this.label}: not started`);
    const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
    if (kids.length !== 1) throw new Error(`${this.label}: expected one process under timeout ${pid}, found ${kids.length}`);
    return kids[0] as number;
  }

  log(): string {
    try {
      return readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  logTail(lines = 10): string {
    return this.log().trimEnd().split('\n').slice(-lines).join('\n');
  }

  /** Resolves when stdout matches `re`; rejects if the process exits first or after `ms`. */
  waitStdout(re: RegExp, ms: number): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.child.stdout?.off('data', check);
        this.child.off('exit', onExit);
      };
      const check = (): void => {
        const m = re.exec(this.#out);
        if (m) {
          done();
          resolve(m);
        }
      };
      const onExit = (): void => {
        // The last stdout chunk may come with the exit.
        const m = re.exec(this.#out);
        done();
        if (m) resolve(m);
        else reject(new Error(`${this.label} exited (${this.child.signalCode ?? `status ${this.child.exitCode}`}) before printing ${re}; stdout: ${this.#out.trim()}\n${this.logTail()}`));
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.label} did not print ${re} within ${ms} ms; stdout: ${this.#out.trim()}\n${this.logTail()}`));
      }, ms);
      this.child.stdout?.on('data', check);
      this.child.once('exit', onExit);
      check();
    });
  }

  /** SIGKILL the daemon's whole process group: a crash, no cleanup. */
  async kill(): Promise<void> {
    if (this.child.pid !== undefined) killGroup(this.child.pid, 'SIGKILL');
    await waitExit(this.child, 5000);
  }

  /** SIGTERM (the `timeout` wrapper passes it on), SIGKILL after `graceMs`; the exit status, null when it had to be killed. */
  async stop(graceMs = 15_000): Promise<number | null> {
    if (!exited(this.child)) {
      this.child.kill('SIGTERM');
      if (!(await waitExit(this.child, graceMs))) {
        await this.kill();
        return null;
      }
    }
    if (this.child.pid !== undefined) killGroup(this.child.pid, 'SIGKILL');
    return this.child.exitCode;
  }
}

export interface AgentProc {
  name: string;
  daemon: Daemon;
  /** HOST:PORT of its iSCSI portal. */
  portal: string;
  port: number;
}

export interface ControllerOptions {
  /** Seconds agents hold a faulted I/O before NOT READY (the daemon's default 10 when omitted). */
  holdTimeoutS?: number;
  ackTimeoutS?: number;
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

  #spawn(label: string, args: readonly string[], lifetimeMs: number): Daemon {
    const logFile = join(this.dir, `${label}.${++this.#starts}.log`);
    const fd = openSync(logFile, 'a');
    try {
      // TABULA_SYSTEM_NODE_ARGS: node flags for the daemons (e.g. --cpu-prof), for profiling a bench or a test.
      const nodeArgs = (process.env.TABULA_SYSTEM_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
      const child = spawnBounded(process.execPath, [...nodeArgs, ...tabulaLauncher(), ...args], lifetimeMs, ['ignore', 'pipe', fd], cleanEnv({ TABULA_LOG_LEVEL: 'info' }));
      return new Daemon(label, child, logFile);
    } finally {
      closeSync(fd);
    }
  }

  /** Starts (or restarts, on the same database and port) the controller; resolves when it listens. */
  async startController(opts?: ControllerOptions, lifetimeMs = 10 * 60_000): Promise<Daemon> {
    if (this.controller?.running) throw new Error('the controller is already running');
    if (opts !== undefined) this.#controllerOpts = opts;
    const o = this.#controllerOpts;
    const args = ['controller', '--db', this.dbPath, '--listen', this.controllerAddress];
    if (o.holdTimeoutS !== undefined) args.push('--hold-timeout', String(o.holdTimeoutS));
    if (o.ackTimeoutS !== undefined) args.push('--ack-timeout', String(o.ackTimeoutS));
    const d = this.#spawn('controller', args, lifetimeMs);
    this.controller = d;
    try {
      await d.waitStdout(/controller listening on \S+/, 60_000);
    } catch (err) {
      await d.kill();
      throw err;
    }
    return d;
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
    opts: { containers: string[]; holdTimeoutS?: number; port?: number; /** HOST:PORT to reach the controller by (a proxy); default the controller's address. */ controller?: string },
    lifetimeMs = 10 * 60_000,
  ): Promise<AgentProc> {
    if (this.agents.get(name)?.daemon.running) throw new Error(`agent ${name} is already running`);
    const port = opts.port ?? this.agents.get(name)?.port ?? (await freeLoopbackPort());
    const portal = `${LOOPBACK}:${port}`;
    const args = ['agent', '--controller', opts.controller ?? this.controllerAddress, '--name', name, '--portal', portal, '--containers', ...opts.containers];
    if (opts.holdTimeoutS !== undefined) args.push('--hold-timeout', String(opts.holdTimeoutS));
    const d = this.#spawn(`agent-${name}`, args, lifetimeMs);
    try {
      await d.waitStdout(new RegExp(`agent ${name} serving on ${portal.replace(/\./g, '\\.')}`), 60_000);
    } catch (err) {
      await d.kill();
      throw err;
    }
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
    return runBounded(process.execPath, [...tabulaLauncher(), ...full], { timeoutMs: opts.timeoutMs ?? 60_000, env: cleanEnv() });
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
      for (const a of agents) {
        const s = await LunSession.open(this.agent(a).portal, iqnOf(vdisk), v.blockSize);
        try {
          const r = await s.read(0, 1, 5000);
          if (r.status !== GOOD) throw new Error(`agent ${a}: READ of LBA 0 ${describeIo(r)}`);
        } finally {
          s.close();
        }
      }
      return true;
    }, 300);
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
