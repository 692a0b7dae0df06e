// The soak: a controller and two agents (test/system/cluster.ts) over two
// containers, three vdisks (thin 512-byte blocks, thin 4096-byte blocks,
// thick) under the I/O of workload.ts, while an operations loop takes
// snapshots, clones them, writes to the clones, deletes clones and
// snapshots, and migrates the thick vdisk between the containers, and a kill
// loop SIGKILLs the controller and agent `a` at seeded random moments and
// restarts them. Agent `b` is never killed, so one daemon's memory is
// followed over the whole run. At the end every vdisk, snapshot and clone
// is read through every agent exporting it and checked against the model
// (model.ts), and `tabula check` must be clean. docs/soak.md says more.
import Database from 'better-sqlite3';
import { existsSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { prng } from '../support/prng.js';
import { sleep, waitFor } from '../support/process.js';
import { requireTools } from '../support/tools.js';
import { Cluster, iqnOf } from '../system/cluster.js';
import { GOOD, LunSession, describeIo, type IoResult } from '../system/scsi-client.js';
import { VdiskModel, type Mismatch } from './model.js';
import { HOLD_S, Stats, Worker, type Live, type Op, type WorkerEnv } from './workload.js';

const MiB = 1 << 20;
const VDISK_MIB = 64;
const CONTAINER_MIB = 1024;
const DAEMONS = ['controller', 'agent-a', 'agent-b'] as const;
type DaemonName = (typeof DAEMONS)[number];

export interface SoakOptions {
  minutes: number;
  seed: number;
  /** Keep the temp dir (logs, database; container images are removed) even when the run passes. */
  keep: boolean;
}

export interface RssSample {
  t: number;
  daemon: DaemonName;
  /** Which start of the daemon (1 = the first). */
  incarnation: number;
  kib: number;
}

export interface MinuteRow {
  minute: number;
  writerWriteMiB: number;
  writerReadMiB: number;
  benchMiB: number;
  benchRuns: number;
  benchFailed: number;
  failedIo: number;
  rssKiB: Partial<Record<DaemonName, number>>;
  dbBytes: number;
  faultRows: number;
  eventRows: number;
  events: string[];
}

export interface SoakReport {
  seed: number;
  minutes: number;
  warmupS: number;
  dir: string;
  /**
   * Per daemon, in KiB: its first sample (`start`); for its last start, the
   * sample a warm-up after it (`warm`, taken at `warmAtS`), the last one under
   * load (`end`) and the last one of all, after the final verification (`final`).
   */
  rss: Record<DaemonName, { start: number; warm: number; end: number; final: number; incarnation: number; starts: number; warmAtS: number; withinTenPercent: boolean }>;
  dbBytes: number;
  faultRows: number;
  eventRows: number;
  faultsRecorded: number;
  perMinute: MinuteRow[];
  kills: string[];
  ops: Record<string, number>;
  opFailures: string[];
  statuses: Record<string, number>;
  verified: string[];
  mismatchCount: number;
  mismatches: Mismatch[];
  check: { ok: boolean; text: string };
  passed: boolean;
  failures: string[];
}

const log = (msg: string): void => {
  process.stderr.write(`${new Date().toISOString().slice(11, 19)} soak: ${msg}\n`);
};

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

/** Bytes of the controller's database with its WAL. */
function dbBytes(path: string): number {
  let n = 0;
  for (const f of [path, `${path}-wal`]) if (existsSync(f)) n += statSync(f).size;
  return n;
}

/** Rows in the faults and events tables, read-only beside the running controller. */
function rowCounts(path: string): { faults: number; events: number } {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const n = (t: string): number => (db.prepare(`SELECT count(*) AS n FROM ${t}`).get() as { n: number }).n;
    return { faults: n('faults'), events: n('events') };
  } finally {
    db.close();
  }
}

export class Soak {
  readonly stats: Stats;
  readonly live = new Map<string, Live>();
  readonly rss: RssSample[] = [];
  readonly kills: string[] = [];
  readonly ops: Record<string, number> = {};
  readonly opFailures: string[] = [];
  readonly verified: string[] = [];
  readonly failures: string[] = [];
  readonly rows: MinuteRow[] = [];
  readonly #rng: () => number;
  readonly #start = Date.now();
  readonly #incarnation: Record<DaemonName, number> = { controller: 0, 'agent-a': 0, 'agent-b': 0 };
  readonly #starts: Record<DaemonName, number[]> = { controller: [], 'agent-a': [], 'agent-b': [] };
  #seq = 0;
  #tags = 0;
  #names = 0;
  #containers: string[] = [];
  #migration: Promise<void> | undefined;
  #migrationEnded = 0;
  #stopping = false;
  #minuteEvents: string[] = [];

  private constructor(
    readonly c: Cluster,
    readonly o: SoakOptions,
  ) {
    this.stats = new Stats(this.#start);
    this.#rng = prng(o.seed);
  }

  static async create(o: SoakOptions): Promise<Soak> {
    return new Soak(await Cluster.create('soak'), o);
  }

  get durationMs(): number {
    return this.o.minutes * 60_000;
  }

  /** Warm-up: 10% of the run, at least 30 s and at most 3 minutes. */
  get warmupMs(): number {
    return Math.min(180_000, Math.max(30_000, this.durationMs / 10));
  }

  /** Daemons live as long as the run and its end may take, then `timeout` kills them. */
  get lifetimeMs(): number {
    return this.durationMs + 30 * 60_000;
  }

  #elapsed(): string {
    return `${((Date.now() - this.#start) / 1000).toFixed(0)}s`;
  }

  #event(msg: string): void {
    log(`[${this.#elapsed()}] ${msg}`);
    this.#minuteEvents.push(msg);
  }

  #count(op: string): void {
    this.ops[op] = (this.ops[op] ?? 0) + 1;
  }

  #started(d: DaemonName): void {
    this.#incarnation[d]++;
    this.#starts[d].push(Date.now());
  }

  async #startController(): Promise<void> {
    await this.c.startController({ holdTimeoutS: HOLD_S, ackTimeoutS: 5 }, this.lifetimeMs);
    this.#started('controller');
  }

  async #startAgent(name: 'a' | 'b'): Promise<void> {
    await this.c.startAgent(name, { containers: [this.c.containerGlob] }, this.lifetimeMs);
    this.#started(`agent-${name}`);
  }

  #daemon(d: DaemonName): { running: boolean; processPid: number } | undefined {
    if (d === 'controller') return this.c.controller;
    return this.c.agents.get(d.slice('agent-'.length))?.daemon;
  }

  #sampleRss(): void {
    for (const d of DAEMONS) {
      const x = this.#daemon(d);
      if (x === undefined || !x.running) continue;
      try {
        this.rss.push({ t: Date.now() - this.#start, daemon: d, incarnation: this.#incarnation[d], kib: rssKiB(x.processPid) });
      } catch {
        // between a kill and its restart
      }
    }
  }

  #env(): WorkerEnv {
    return {
      portal: (a) => this.c.agent(a).portal,
      iqn: iqnOf,
      url: (a, v) => this.c.url(a, v),
      stats: this.stats,
      rng: this.#rng,
      nextSeq: () => ++this.#seq,
      log: (m) => this.#event(m),
    };
  }

  /** Runs `act` until `done` says it took effect (a controller killed under it may have done it anyway), for at most `ms`. */
  async #ensure(what: string, act: () => Promise<unknown>, done: () => Promise<boolean>, ms = 180_000): Promise<boolean> {
    const deadline = Date.now() + ms;
    let last = '';
    while (Date.now() < deadline) {
      try {
        if (await done()) return true;
      } catch {
        // the controller is down: try again
      }
      try {
        await act();
        return true;
      } catch (err) {
        last = (err as Error).message.split('\n').slice(0, 2).join(' ');
      }
      await sleep(1000);
    }
    try {
      if (await done()) return true;
    } catch {
      // still down
    }
    this.opFailures.push(`${what}: ${last}`);
    this.#event(`${what} FAILED: ${last}`);
    return false;
  }

  async #exists(name: string): Promise<boolean> {
    const vs = (await this.c.admin.call('ListVdisks', {})).vdisks;
    return vs.some((v) => v.name === name);
  }

  async #exported(vdisk: string, agent: string): Promise<boolean> {
    const ex = (await this.c.admin.call('ListExports', { vdisk, agent })).exports;
    return ex.length > 0;
  }

  async #export(v: Live, agent: string, readOnly: boolean): Promise<boolean> {
    const args = ['export', 'add', v.name, '--agent', agent];
    if (readOnly) args.push('--read-only');
    return this.#ensure(`export ${v.name} on ${agent}`, () => this.c.cliOk(args), () => this.#exported(v.name, agent));
  }

  async #served(v: Live): Promise<boolean> {
    return this.#ensure(`${v.name} served by ${v.agents.join(', ')}`, () => this.c.waitServed(v.name, v.agents, 60_000), async () => false, 240_000);
  }

  async #createBase(name: string, args: string[], blockSize: number, thin: boolean): Promise<Live> {
    await this.c.cliOk(['vdisk', 'create', name, '--size', `${VDISK_MIB}MiB`, '--block-size', String(blockSize), ...args]);
    const v = this.#newLive(name, new VdiskModel(name, VDISK_MIB * MiB), blockSize, 'vdisk', thin, ['a', 'b']);
    return v;
  }

  #newLive(name: string, model: VdiskModel, blockSize: number, kind: Live['kind'], thin: boolean, agents: string[]): Live {
    const v: Live = { name, tag: this.#tags++ % 256, model, blockSize, kind, thin, agents, inflight: new Set(), windows: new Set() };
    this.live.set(name, v);
    return v;
  }

  async setup(): Promise<void> {
    requireTools(['timeout', 'qemu-img']);
    await this.#startController();
    this.#containers.push(await this.c.addContainer('c0.img', `${CONTAINER_MIB}MiB`));
    // The thick vdisk is made while c0 is the only container, so the migration has one place to go.
    const thick = await this.#createBase('thick', ['--thick'], 512, false);
    this.#containers.push(await this.c.addContainer('c1.img', `${CONTAINER_MIB}MiB`));
    const thin = await this.#createBase('thin', [], 512, true);
    const thin4k = await this.#createBase('thin4k', [], 4096, true);
    await Promise.all([this.#startAgent('a'), this.#startAgent('b')]);
    for (const v of [thick, thin, thin4k]) for (const a of v.agents) await this.c.cliOk(['export', 'add', v.name, '--agent', a]);
    for (const v of [thick, thin, thin4k]) await this.c.waitServed(v.name, v.agents);
    this.#sampleRss();
    for (const v of [thick, thin, thin4k]) v.worker = new Worker(v, this.#env());
    this.#event(`started: seed ${this.o.seed}, ${this.o.minutes} min, warm-up ${this.warmupMs / 1000}s, dir ${this.c.dir}`);
  }

  // ---- operations ----

  async #snapshot(): Promise<void> {
    const bases = [...this.live.values()].filter((v) => v.kind === 'vdisk' && v.thin);
    const v = bases[Math.floor(this.#rng() * bases.length)] as Live;
    const name = `snap${++this.#names}`;
    const model = v.model.copy(name);
    const window: Op[] = [...v.inflight];
    v.windows.add(window);
    let ok: boolean;
    try {
      ok = await this.#ensure(`snapshot ${v.name} ${name}`, () => this.c.cliOk(['vdisk', 'snapshot', v.name, name]), () => this.#exists(name));
    } finally {
      v.windows.delete(window);
    }
    if (!ok) return;
    // Writes in flight while the table was frozen may or may not be in it.
    for (const op of window) for (const [first, count] of op.ranges) model.maybe(first, count, op.content);
    const agent = this.#rng() < 0.5 ? 'a' : 'b';
    const s = this.#newLive(name, model, v.blockSize, 'snapshot', true, [agent]);
    this.#count('snapshot');
    this.#event(`snapshot ${name} of ${v.name} (${window.length} writes in flight), exported read-only on ${agent}`);
    if (!(await this.#export(s, agent, true)) || !(await this.#served(s))) return;
    await this.#verify(s, 'after it was taken');
  }

  async #clone(): Promise<void> {
    const snaps = [...this.live.values()].filter((v) => v.kind === 'snapshot');
    const s = snaps[Math.floor(this.#rng() * snaps.length)] as Live;
    const name = `clone${++this.#names}`;
    if (!(await this.#ensure(`clone ${s.name} ${name}`, () => this.c.cliOk(['vdisk', 'clone', s.name, name]), () => this.#exists(name)))) return;
    const v = this.#newLive(name, s.model.copy(name), s.blockSize, 'clone', true, ['a', 'b']);
    this.#count('clone');
    for (const a of v.agents) if (!(await this.#export(v, a, false))) return;
    if (!(await this.#served(v))) return;
    v.worker = new Worker(v, this.#env());
    this.#event(`clone ${name} of ${s.name}, exported on a and b, under I/O`);
  }

  async #remove(v: Live): Promise<void> {
    await v.worker?.stop();
    v.worker = undefined;
    await this.#served(v);
    await this.#verify(v, 'before its removal');
    for (const a of v.agents) {
      await this.#ensure(`export rm ${v.name} ${a}`, () => this.c.cliOk(['export', 'rm', v.name, '--agent', a]), async () => !(await this.#exported(v.name, a)));
    }
    if (await this.#ensure(`vdisk rm ${v.name}`, () => this.c.cliOk(['vdisk', 'rm', v.name]), async () => !(await this.#exists(v.name)))) {
      this.live.delete(v.name);
      this.#count(`rm ${v.kind}`);
      this.#event(`removed ${v.kind} ${v.name}`);
    }
  }

  async #migrate(): Promise<void> {
    const t = await this.c.admin.call('GetTable', { name: 'thick', fullIds: true });
    const from = t.extents[0]?.container ?? '';
    const to = this.#containers.find((x) => x !== from) as string;
    const started = await this.#ensure(
      `migrate thick to ${to.slice(0, 8)}`,
      () => this.c.cliOk(['vdisk', 'migrate', 'thick', '--to', to]),
      async () => {
        const m = await this.c.admin.call('GetMigration', { vdisk: 'thick' });
        return m.toContainer === to && m.state === 'running';
      },
    );
    if (!started) return;
    this.#count('migrate');
    this.#event(`migration of thick to ${to.slice(0, 8)} started`);
    this.#migration = (async () => {
      const end = await waitFor('the migration of thick ends', 20 * 60_000, async () => {
        try {
          const m = await this.c.admin.call('GetMigration', { vdisk: 'thick' });
          return m.state === 'running' ? undefined : m;
        } catch {
          return undefined; // the controller is down
        }
      }, 1000).catch((err: Error) => ({ state: 'unknown', error: err.message, segmentsDone: 0, segmentsTotal: 0 }));
      if (end.state !== 'done') this.opFailures.push(`migration of thick: ${end.state}: ${end.error}`);
      this.#event(`migration of thick to ${to.slice(0, 8)} ${end.state} (${end.segmentsDone}/${end.segmentsTotal} segments)${end.error ? `: ${end.error}` : ''}`);
      this.#migration = undefined;
      this.#migrationEnded = Date.now();
    })();
  }

  /** One operation, chosen at random among those that make sense now. */
  async #operation(): Promise<void> {
    const all = [...this.live.values()];
    const snaps = all.filter((v) => v.kind === 'snapshot');
    const clones = all.filter((v) => v.kind === 'clone');
    const choices: Array<() => Promise<void>> = [];
    if (snaps.length < 3) choices.push(() => this.#snapshot());
    if (snaps.length > 0 && clones.length < 2) choices.push(() => this.#clone());
    if (clones.length > 0) choices.push(() => this.#remove(clones[0] as Live));
    if (snaps.length > 1) choices.push(() => this.#remove(snaps[0] as Live));
    if (this.#migration === undefined && Date.now() - this.#migrationEnded > 30_000) choices.push(() => this.#migrate());
    await (choices[Math.floor(this.#rng() * choices.length)] as () => Promise<void>)();
  }

  async #operations(until: number): Promise<void> {
    while (!this.#stopping && Date.now() < until) {
      try {
        await this.#operation();
      } catch (err) {
        this.opFailures.push(`operation: ${(err as Error).message.split('\n')[0]}`);
        this.#event(`operation FAILED: ${(err as Error).message.split('\n')[0]}`);
      }
      await sleep(2000 + this.#rng() * 6000);
    }
  }

  // ---- kills ----

  async #kills(): Promise<void> {
    // Kills between the warm-up and 70% of the run, so the last start of each killed daemon has time to warm up before the end.
    const from = this.warmupMs;
    const to = Math.max(from + 10_000, this.durationMs * 0.7);
    const n = Math.max(1, Math.round(this.o.minutes / 5));
    const plan: Array<{ at: number; who: 'controller' | 'agent-a' }> = [];
    for (let i = 0; i < n; i++) {
      plan.push({ at: from + this.#rng() * (to - from), who: 'controller' });
      plan.push({ at: from + this.#rng() * (to - from), who: 'agent-a' });
    }
    plan.sort((x, y) => x.at - y.at);
    // A migration takes seconds, so a kill at a random moment seldom meets one: the first kill of each
    // daemon waits (up to 2 minutes) for a migration to be running and strikes in its middle.
    const aimed = new Set([plan.find((k) => k.who === 'controller'), plan.find((k) => k.who === 'agent-a')]);
    for (const k of plan) {
      const wait = this.#start + k.at - Date.now();
      if (wait > 0) await sleep(wait);
      if (this.#stopping) return;
      let during = '';
      if (aimed.has(k)) {
        const deadline = Date.now() + 120_000;
        while (this.#migration === undefined && Date.now() < deadline && !this.#stopping) await sleep(100);
        if (this.#migration !== undefined) {
          await sleep(500 + this.#rng() * 1000);
          if (this.#migration !== undefined) during = ' during a migration';
        }
      }
      const down = 200 + this.#rng() * 3000;
      this.#event(`SIGKILL ${k.who}${during}, restart after ${(down / 1000).toFixed(1)}s`);
      this.kills.push(`${this.#elapsed()} ${k.who}${during} (down ${(down / 1000).toFixed(1)}s)`);
      if (k.who === 'controller') await this.c.killController();
      else await this.c.agent('a').daemon.kill();
      await sleep(down);
      // A restart may fail under load (not ready in a minute): try again.
      for (let i = 0; ; i++) {
        try {
          if (k.who === 'controller') await this.#startController();
          else await this.#startAgent('a');
          break;
        } catch (err) {
          if (i >= 3) throw err;
          this.#event(`restart of ${k.who} failed, again: ${(err as Error).message.split('\n')[0]}`);
        }
      }
      this.#event(`${k.who} restarted`);
    }
  }

  // ---- verification ----

  /**
   * Reads all of `v` through every agent exporting it and checks it against
   * the model. A session that dies under it (its agent killed) is opened again
   * and the read repeated, a few times.
   */
  async #verify(v: Live, when: string): Promise<void> {
    for (const agent of v.agents) {
      const open = (): Promise<LunSession> => waitFor(`session to ${v.name} on ${agent}`, 180_000, () => LunSession.open(this.c.agent(agent).portal, iqnOf(v.name), v.blockSize), 1000);
      let s = await open();
      let bad = 0;
      try {
        const chunk = MiB;
        for (let off = 0; off < v.model.size; off += chunk) {
          let r: IoResult | undefined;
          for (let attempt = 1; r?.status !== GOOD; attempt++) {
            try {
              r = await s.read(off / v.blockSize, chunk / v.blockSize, 120_000);
            } catch (err) {
              if (attempt >= 5) throw err;
              s.close();
              s = await open();
              continue;
            }
            // A UNIT ATTENTION (an ALUA change after a restart) is answered, then the read is repeated.
            if (r.status !== GOOD && attempt >= 5) throw new Error(`READ of ${v.name} at ${off} through ${agent}: ${describeIo(r)}`);
          }
          const ms = v.model.verify(off, r.data);
          bad += ms.length;
          this.stats.mismatch(ms.map((m) => ({ ...m, vdisk: `${m.vdisk} (${when}, through ${agent})` })));
        }
      } finally {
        s.close();
      }
      this.verified.push(`${v.kind} ${v.name} through ${agent} ${when}: ${bad === 0 ? 'ok' : `${bad} blocks MISMATCH`} (${v.model.uncertainUnits} of ${v.model.units} 4 KiB units with more than one allowed content)`);
      this.#event(`verified ${v.kind} ${v.name} through ${agent} ${when}: ${bad === 0 ? 'ok' : `${bad} blocks MISMATCH`}${v.model.uncertainUnits > 0 ? ` (${v.model.uncertainUnits} units with more than one allowed content)` : ''}`);
    }
  }

  // ---- figures ----

  #minuteRow(minute: number): MinuteRow {
    const b = this.stats.buckets[minute];
    const last = (d: DaemonName): number | undefined => this.rss.filter((x) => x.daemon === d).at(-1)?.kib;
    let counts = { faults: -1, events: -1 };
    try {
      counts = rowCounts(this.c.dbPath);
    } catch {
      // the database is being recovered by a restarting controller
    }
    const row: MinuteRow = {
      minute: minute + 1,
      writerWriteMiB: (b?.writerWriteBytes ?? 0) / MiB,
      writerReadMiB: (b?.writerReadBytes ?? 0) / MiB,
      benchMiB: (b?.benchBytes ?? 0) / MiB,
      benchRuns: b?.benchRuns ?? 0,
      benchFailed: b?.benchFailed ?? 0,
      failedIo: b?.failedIo ?? 0,
      rssKiB: { controller: last('controller'), 'agent-a': last('agent-a'), 'agent-b': last('agent-b') },
      dbBytes: dbBytes(this.c.dbPath),
      faultRows: counts.faults,
      eventRows: counts.events,
      events: this.#minuteEvents.splice(0),
    };
    return row;
  }

  async #sampler(until: () => boolean): Promise<void> {
    let minute = 0;
    while (!until()) {
      await sleep(5000);
      this.#sampleRss();
      const now = Math.floor((Date.now() - this.#start) / 60_000);
      while (minute < now) {
        const row = this.#minuteRow(minute++);
        this.rows.push(row);
        log(`minute ${row.minute}: writer ${row.writerWriteMiB.toFixed(1)} MiB written, ${row.writerReadMiB.toFixed(1)} MiB read; bench ${row.benchMiB.toFixed(1)} MiB in ${row.benchRuns} runs; RSS MiB ${DAEMONS.map((d) => `${d} ${((row.rssKiB[d] ?? 0) / 1024).toFixed(0)}`).join(', ')}; db ${(row.dbBytes / MiB).toFixed(1)} MiB, ${row.faultRows} fault rows`);
      }
    }
  }

  // ---- the run ----

  async run(): Promise<SoakReport> {
    let samplerDone = false;
    const sampler = this.#sampler(() => samplerDone);
    const end = this.#start + this.durationMs;
    const kills = this.#kills();
    const ops = this.#operations(end);
    await sleep(Math.max(0, end - Date.now()));
    this.#event('time is up: stopping the kills, the operations and the I/O');
    this.#stopping = true;
    await kills;
    await ops;
    // A migration left running is given 5 minutes to end, then cancelled (the cancel is a failure of the run's operations).
    if (this.#migration !== undefined && (await Promise.race([this.#migration.then(() => true), sleep(5 * 60_000).then(() => false)])) === false) {
      this.opFailures.push('migration of thick: still running 5 minutes after the end, cancelled');
      await this.#ensure('migrate-cancel thick', () => this.c.cliOk(['vdisk', 'migrate-cancel', 'thick']), async () => false, 60_000);
      await this.#migration;
    }
    for (const v of this.live.values()) await v.worker?.stop();
    this.#sampleRss();
    samplerDone = true;
    await sampler;
    this.rows.push(this.#minuteRow(this.rows.length));

    // Every daemon up, every export served, then every vdisk, snapshot and clone read back.
    for (const v of this.live.values()) await this.#served(v);
    for (const v of this.live.values()) await this.#verify(v, 'at the end');
    await waitFor('the controller answers', 120_000, async () => (await this.c.admin.call('ListAgents', {})).agents.every((a) => a.online) || undefined, 1000);
    const r = await this.c.cli(['check']);
    const check = { ok: r.exitCode === 0, text: `${r.stdout}${r.stderr}`.trim() };
    this.#sampleRss();
    let counts = { faults: -1, events: -1 };
    try {
      counts = rowCounts(this.c.dbPath);
    } catch (err) {
      this.failures.push(`counting rows: ${(err as Error).message}`);
    }
    let faultsRecorded = -1;
    try {
      faultsRecorded = (await this.c.admin.call('ListFaults', { limit: 1 })).faults[0]?.id ?? 0;
    } catch {
      // reported as -1
    }
    const report = this.#report(check, counts, faultsRecorded);
    return report;
  }

  #rssFigures(d: DaemonName): SoakReport['rss'][DaemonName] {
    const samples = this.rss.filter((x) => x.daemon === d);
    const final = samples.at(-1);
    const last = samples.filter((x) => x.t <= this.durationMs).at(-1) ?? final;
    const inc = last?.incarnation ?? 0;
    const mine = samples.filter((x) => x.incarnation === inc);
    const startedAt = (this.#starts[d][inc - 1] ?? this.#start) - this.#start;
    // After warm-up: the first sample at least a warm-up after this start of the daemon.
    const warm = mine.find((x) => x.t >= startedAt + this.warmupMs) ?? mine.at(-1);
    const first = samples[0];
    const end = last?.kib ?? 0;
    return {
      start: first?.kib ?? 0,
      warm: warm?.kib ?? 0,
      warmAtS: Math.round((warm?.t ?? 0) / 1000),
      end,
      final: final?.kib ?? 0,
      incarnation: inc,
      starts: this.#incarnation[d],
      withinTenPercent: warm !== undefined && Math.abs(end - warm.kib) <= warm.kib * 0.1,
    };
  }

  #report(check: { ok: boolean; text: string }, counts: { faults: number; events: number }, faultsRecorded: number): SoakReport {
    const failures = [...this.failures];
    if (this.stats.mismatchCount > 0) failures.push(`${this.stats.mismatchCount} blocks hold none of their allowed contents`);
    if (!check.ok) failures.push(`tabula check: ${check.text}`);
    return {
      seed: this.o.seed,
      minutes: this.o.minutes,
      warmupS: this.warmupMs / 1000,
      dir: this.c.dir,
      rss: { controller: this.#rssFigures('controller'), 'agent-a': this.#rssFigures('agent-a'), 'agent-b': this.#rssFigures('agent-b') },
      dbBytes: dbBytes(this.c.dbPath),
      faultRows: counts.faults,
      eventRows: counts.events,
      faultsRecorded,
      perMinute: this.rows,
      kills: this.kills,
      ops: this.ops,
      opFailures: this.opFailures,
      statuses: Object.fromEntries(this.stats.statuses),
      verified: this.verified,
      mismatchCount: this.stats.mismatchCount,
      mismatches: this.stats.mismatches,
      check,
      passed: failures.length === 0,
      failures,
    };
  }

  /**
   * Stops every process; removes the temp dir, or when the run failed (or
   * `keep`) keeps its logs and database and removes only the container images.
   */
  async close(failed: boolean): Promise<void> {
    this.#stopping = true;
    for (const v of this.live.values()) {
      await Promise.race([v.worker?.stop(), sleep(30_000)]);
    }
    const keep = failed || this.o.keep;
    await this.c.close(keep);
    if (keep) {
      const dir = join(this.c.dir, 'containers');
      if (existsSync(dir)) for (const f of readdirSync(dir)) rmSync(join(dir, f), { force: true });
      log(`logs and database kept in ${this.c.dir}`);
    }
  }
}
