// `npm run bench`: Tabula's iSCSI target side by side with tgtd (issue 5).
//
// Both targets serve a copy of the same random-filled backing file on
// loopback; the same qemu-img bench matrix runs against each, alternating
// (tgtd, tabula, raw, tgtd, tabula, raw, ...) so drift on a shared machine
// hits all of them alike; each cell is the median of the repetitions. The
// raw file through the page cache is the ceiling a target doing buffered
// pread/pwrite can approach. Results: a table on stdout and JSON in
// bench/results/latest.json.
//
// Options (flag or environment variable):
//   --quick            BENCH_QUICK=1       1 repetition, few ops: a smoke test in a few minutes
//   --reps N           BENCH_REPS          repetitions per cell (default 3)
//   --size BYTES|NGiB  BENCH_SIZE          LUN size (default 1GiB)
//   --dir DIR          BENCH_DIR           working dir for backing files (default /tmp/tabula-bench)
//   --targets LIST     BENCH_TARGETS       comma list of tgtd, tabula (`tabula target --file`), vdisk-thick and
//                                          vdisk-thin-fill (`tabula up`, see targets.ts), raw, and the
//                                          storage-network rows vdisk-file, vdisk-lun-tabula, vdisk-lun-tgtd
//                                          (a thick vdisk on an agent whose container is a local file or a
//                                          network LUN, see network-lun.ts) (default all). Their CPU
//                                          column is the agent's; "x file" and "CPU x file" compare with
//                                          vdisk-file (issue 15's goals: 0.6x / 0.8x, CPU at most 1.3x),
//                                          e.g. --targets vdisk-file,vdisk-lun-tabula,vdisk-lun-tgtd
//                                          --cases 4k-rand-read-qd32,4k-rand-write-qd32,1M-seq-read-qd8,1M-seq-write-qd8;
//                                          and the mirrored-vdisk rows vdisk-1copy, vdisk-2copy (a thick vdisk
//                                          with 1 or 2 copies over two file containers in two domains, see
//                                          mirror.ts): "x 1copy" compares with vdisk-1copy (issue 16's goals
//                                          for vdisk-2copy: 4k write 0.6x, 4k read 1.0x, 1M write 0.5x), e.g.
//                                          --targets vdisk-1copy,vdisk-2copy
//                                          --cases 4k-rand-write-qd32,4k-rand-read-qd32,1M-seq-write-qd8;
//                                          and vdisk-thin-fill-b: vdisk-thin-fill run by another build
//                                          (BENCH_ENTRY_B=/other/checkout/bin/tabula.js), an in-run A/B
//                                          of the fault path
//   --cases LIST       BENCH_CASES         comma list of case names (default all, see CASES)
//   --run-timeout S    BENCH_RUN_TIMEOUT   seconds per qemu-img run before it is killed (default 120)
//   --out FILE         BENCH_OUT           JSON output (default bench/results/latest.json)
//   --label TEXT       BENCH_LABEL         free text stored in the JSON (e.g. the change measured)
//   --tabula-node-args "ARGS"  BENCH_TABULA_NODE_ARGS  extra node flags for the target (e.g. --cpu-prof)
//   --entry FILE       BENCH_TABULA_ENTRY  the tabula launcher (default bin/tabula.js of this checkout)
//   --nice N           BENCH_NICE          nice level of targets and qemu-img (default 0; e.g. -10 on a shared box)
//
// Table-driven costs (bench/costs/, after the matrix; see docs/performance.md):
//   --costs-only       BENCH_COSTS=only    run only the costs, not the qemu-img matrix
//   --no-costs         BENCH_COSTS=0       run only the matrix
//   --cost-parts LIST  BENCH_COST_PARTS    comma list of fault, load, fanout (default all)
//   --fault-segments N BENCH_FAULT_SEGMENTS  zero segments written once each (default 500)
//   --fanout-agents N  BENCH_FANOUT_AGENTS   agent processes holding the vdisk (default 16)
//   --fanout-changes N BENCH_FANOUT_CHANGES  table changes timed (default 100)
//   --load-cases LIST  BENCH_LOAD_CASES    KIND:SEGMENTS, kinds thick, aged, fragmented
//                                          (default thick:1M,aged:1M,fragmented:1M,thick:16M,aged:16M)
//
// A/B in one run: --targets tgtd,tabula,tabula-uring,raw starts a second Tabula
// target "tabula-uring" whose extra environment comes from
// BENCH_ENV_TABULA_URING="K=V K=V" and whose launcher may come from
// BENCH_ENTRY_TABULA_URING (e.g. a build of another commit).
import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readFileSync, readdirSync, writeFileSync, writeSync, copyFileSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { busyPercent, cpuSeconds, installSignalCleanup, machineCpu, niced, runBounded, runCleanups, setNice } from './proc.js';
import { startTabulaTarget, startTabulaUp, startTgtd, type RunningTarget } from './targets.js';
import { NETWORK_LUN_TARGETS, startAgentVdisk, type NetworkLunTarget } from './network-lun.js';
import { MIRROR_REFERENCE, MIRROR_TARGETS, startMirrorVdisk, type MirrorTarget } from './mirror.js';
import { normalizePageCache } from './page-cache.js';
import { formatTable, median, type CellResult, type Report } from './report.js';
import { COST_PARTS, formatCosts, parseLoadCases, runCosts, type CostPart, type CostsOptions } from './costs/index.js';

export interface BenchCase {
  name: string;
  blockSize: number;
  depth: number;
  write: boolean;
  /** Offset step; 4 KiB * 99991 (an odd multiple) visits every block once per pass, scattered. */
  step?: number;
  count: number;
  quickCount: number;
}

const STEP_4K = 4096 * 99991;
export const CASES: BenchCase[] = [
  { name: '4k-rand-read-qd1', blockSize: 4096, depth: 1, write: false, step: STEP_4K, count: 20_000, quickCount: 3000 },
  { name: '4k-rand-write-qd1', blockSize: 4096, depth: 1, write: true, step: STEP_4K, count: 20_000, quickCount: 3000 },
  { name: '4k-rand-read-qd32', blockSize: 4096, depth: 32, write: false, step: STEP_4K, count: 200_000, quickCount: 20_000 },
  { name: '4k-rand-write-qd32', blockSize: 4096, depth: 32, write: true, step: STEP_4K, count: 200_000, quickCount: 20_000 },
  { name: '1M-seq-read-qd8', blockSize: 1 << 20, depth: 8, write: false, count: 4096, quickCount: 512 },
  { name: '1M-seq-write-qd8', blockSize: 1 << 20, depth: 8, write: true, count: 4096, quickCount: 512 },
];

/** tgtd, raw, vdisk-thick, vdisk-thin-fill, or a `tabula target` variant: "tabula" or "tabula-<anything>" (see variantSettings). */
type TargetName = string;
const FIXED_TARGETS: string[] = ['tgtd', 'raw', 'vdisk-thick', 'vdisk-thin-fill', 'vdisk-thin-fill-b', ...NETWORK_LUN_TARGETS, ...MIRROR_TARGETS];
const isNetworkLun = (t: string): t is NetworkLunTarget => (NETWORK_LUN_TARGETS as readonly string[]).includes(t);
const isMirror = (t: string): t is MirrorTarget => (MIRROR_TARGETS as readonly string[]).includes(t);

interface TargetUnderTest {
  name: TargetName;
  url: string;
  cache: 'none' | 'writeback';
  t?: RunningTarget;
  /** A storage node's process under the target (network-LUN rows): its CPU is counted apart. */
  storagePid?: number;
  /** Backing files whose page cache is normalised before the matrix (page-cache.ts). */
  files?: string[];
  /** Replace the target by a fresh one before every measured run (vdisk-thin-fill). */
  fresh?: () => Promise<RunningTarget>;
}

interface Options {
  quick: boolean;
  reps: number;
  size: number;
  dir: string;
  targets: TargetName[];
  cases: BenchCase[];
  runTimeoutMs: number;
  out: string;
  label: string;
  tabulaNodeArgs: string[];
  entry: string;
  nice: number;
  /** 'only': costs alone; 'no': matrix alone; 'yes': both. */
  costs: 'yes' | 'no' | 'only';
  costOptions: Omit<CostsOptions, 'dir' | 'log'>;
}

const repoRoot = findRepoRoot(dirname(fileURLToPath(import.meta.url)));

function findRepoRoot(dir: string): string {
  for (let d = dir; ; d = dirname(d)) {
    if (existsSync(join(d, 'package.json'))) return d;
    if (dirname(d) === d) return process.cwd();
  }
}

function parseSize(s: string): number {
  const m = /^(\d+)\s*(|k|m|g|kib|mib|gib)$/i.exec(s.trim());
  if (!m) throw new Error(`bad size '${s}' (e.g. 1GiB, 512MiB, 1073741824)`);
  const mult: Record<string, number> = { '': 1, k: 1024, kib: 1024, m: 1 << 20, mib: 1 << 20, g: 1 << 30, gib: 1 << 30 };
  return Number(m[1]) * mult[m[2]!.toLowerCase()]!;
}

function parseOptions(argv: string[]): Options {
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) throw new Error(`unexpected argument '${a}'`);
    const [k, inline] = a.slice(2).split('=', 2) as [string, string | undefined];
    if (k === 'quick' || k === 'costs-only' || k === 'no-costs') flags.set(k, '1');
    else if (k === 'help') flags.set(k, '1');
    else flags.set(k, inline ?? argv[++i] ?? '');
  }
  if (flags.has('help')) {
    const src = readFileSync(fileURLToPath(import.meta.url).replace(/\/dist\/bench\/run\.js$/, '/bench/run.ts'), 'utf8');
    process.stdout.write(src.split('\nimport ')[0]!.replace(/^\/\/ ?/gm, '') + '\n');
    process.exit(0);
  }
  const get = (flag: string, env: string): string | undefined => flags.get(flag) ?? process.env[env];
  const quick = get('quick', 'BENCH_QUICK') === '1';
  const caseNames = get('cases', 'BENCH_CASES')?.split(',').filter(Boolean);
  const cases = caseNames ? caseNames.map((n) => CASES.find((c) => c.name === n) ?? fail(`unknown case '${n}' (have ${CASES.map((c) => c.name).join(', ')})`)) : CASES;
  const targets = (get('targets', 'BENCH_TARGETS') ?? ['tgtd', 'tabula', 'vdisk-thick', 'vdisk-thin-fill', ...NETWORK_LUN_TARGETS, ...MIRROR_TARGETS, 'raw'].join(',')).split(',').filter(Boolean) as TargetName[];
  for (const t of targets) if (!FIXED_TARGETS.includes(t) && !/^tabula(-[\w-]+)?$/.test(t)) fail(`unknown target '${t}' (${FIXED_TARGETS.join(', ')}, tabula, tabula-VARIANT)`);
  const reps = Number(get('reps', 'BENCH_REPS') ?? (quick ? 1 : 3));
  if (!Number.isInteger(reps) || reps < 1) fail(`bad --reps ${reps}`);
  return {
    quick,
    reps,
    size: parseSize(get('size', 'BENCH_SIZE') ?? '1GiB'),
    dir: resolve(get('dir', 'BENCH_DIR') ?? '/tmp/tabula-bench'),
    targets,
    cases,
    runTimeoutMs: 1000 * Number(get('run-timeout', 'BENCH_RUN_TIMEOUT') ?? 120),
    // --costs-only keeps the last full matrix in latest.json
    out: resolve(get('out', 'BENCH_OUT') ?? join(repoRoot, flags.has('costs-only') || process.env.BENCH_COSTS === 'only' ? 'bench/results/costs-latest.json' : 'bench/results/latest.json')),
    label: get('label', 'BENCH_LABEL') ?? '',
    tabulaNodeArgs: (get('tabula-node-args', 'BENCH_TABULA_NODE_ARGS') ?? '').split(' ').filter(Boolean),
    entry: resolve(get('entry', 'BENCH_TABULA_ENTRY') ?? join(repoRoot, 'bin/tabula.js')),
    nice: Number(get('nice', 'BENCH_NICE') ?? 0),
    costs: flags.has('costs-only') || process.env.BENCH_COSTS === 'only' ? 'only' : flags.has('no-costs') || process.env.BENCH_COSTS === '0' ? 'no' : 'yes',
    costOptions: {
      parts: (get('cost-parts', 'BENCH_COST_PARTS') ?? COST_PARTS.join(','))
        .split(',')
        .filter(Boolean)
        .map((p) => (COST_PARTS.includes(p as CostPart) ? (p as CostPart) : fail(`unknown cost part '${p}' (${COST_PARTS.join(', ')})`))),
      faultSegments: Number(get('fault-segments', 'BENCH_FAULT_SEGMENTS') ?? 500),
      fanoutAgents: Number(get('fanout-agents', 'BENCH_FANOUT_AGENTS') ?? 16),
      fanoutChanges: Number(get('fanout-changes', 'BENCH_FANOUT_CHANGES') ?? 100),
      loadCases: get('load-cases', 'BENCH_LOAD_CASES') === undefined ? undefined : parseLoadCases(get('load-cases', 'BENCH_LOAD_CASES')!),
    },
  };
}

/** Environment and launcher of a Tabula variant, from BENCH_ENV_<NAME> and BENCH_ENTRY_<NAME>. */
function variantSettings(name: string, opts: Options): { entry: string; env: NodeJS.ProcessEnv } {
  const key = name.toUpperCase().replace(/-/g, '_');
  const env: NodeJS.ProcessEnv = {};
  for (const kv of (process.env[`BENCH_ENV_${key}`] ?? '').split(' ').filter(Boolean)) {
    const eq = kv.indexOf('=');
    if (eq <= 0) fail(`BENCH_ENV_${key}: '${kv}' is not K=V`);
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const entry = process.env[`BENCH_ENTRY_${key}`];
  return { entry: entry ? resolve(entry) : opts.entry, env };
}

/** `tabula up` finds proto/ above its modules; a launcher outside the checkout needs it named. */
function protoEnv(): NodeJS.ProcessEnv {
  const dir = join(repoRoot, 'proto');
  return process.env.TABULA_PROTO_DIR === undefined && existsSync(dir) ? { TABULA_PROTO_DIR: dir } : {};
}

function fail(msg: string): never {
  throw new Error(msg);
}

function log(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

/** The random-filled master image, made once and reused while its size matches. */
function ensureBaseImage(path: string, size: number): void {
  if (existsSync(path)) {
    const fd = openSync(path, 'r');
    const ok = fstatSync(fd).size === size;
    closeSync(fd);
    if (ok) return;
  }
  log(`bench: filling ${path} with ${size} random bytes (once)`);
  const fd = openSync(path, 'w');
  const chunk = Buffer.allocUnsafe(1 << 20);
  for (let off = 0; off < size; off += chunk.length) {
    randomFillSync(chunk);
    writeSync(fd, chunk, 0, Math.min(chunk.length, size - off), off);
  }
  closeSync(fd);
}

interface RunSample {
  seconds: number;
  cpuSeconds?: number;
  storageCpuSeconds?: number;
  machineBusyPct: number;
  stealPct: number;
}

async function qemuBench(c: BenchCase, count: number, target: string, cache: 'none' | 'writeback', opts: Options, pid?: number, storagePid?: number): Promise<RunSample> {
  const args = ['bench', '-f', 'raw', '-t', cache, '-c', String(count), '-d', String(c.depth), '-s', String(c.blockSize)];
  if (c.step !== undefined) args.push('-S', String(c.step));
  if (c.write) args.push('-w');
  args.push(target);
  const cpu0 = pid === undefined ? 0 : cpuSeconds(pid);
  const s0 = storagePid === undefined ? 0 : cpuSeconds(storagePid);
  const m0 = machineCpu();
  const r = await runBounded(...niced('qemu-img', args), opts.runTimeoutMs);
  const m1 = machineCpu();
  const cpu1 = pid === undefined ? 0 : cpuSeconds(pid);
  const s1 = storagePid === undefined ? 0 : cpuSeconds(storagePid);
  const m = /Run completed in ([0-9.]+) seconds/.exec(r.stdout);
  if (!m) {
    const why = r.timedOut ? `timed out after ${opts.runTimeoutMs / 1000} s` : (r.stderr || r.stdout).trim().split('\n').pop();
    throw new Error(`qemu-img ${args.join(' ')}: ${why}`);
  }
  const load = busyPercent(m0, m1);
  return {
    seconds: Number(m[1]),
    cpuSeconds: pid === undefined ? undefined : cpu1 - cpu0,
    storageCpuSeconds: storagePid === undefined ? undefined : s1 - s0,
    machineBusyPct: load.busy,
    stealPct: load.steal,
  };
}

/** The load average when the bench began (machineInfo runs at the end). */
const loadavgAtStart = loadavg().map((x) => Number(x.toFixed(2)));

function machineInfo(): Omit<Report['machine'], 'qemuImg' | 'tgtd' | 'loadavgAtEnd'> {
  const c = cpus();
  return {
    cpuModel: c[0]?.model ?? 'unknown',
    cpus: c.length,
    memGiB: Math.round(totalmem() / (1 << 30)),
    kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
    node: process.version,
    loadavgAtStart,
  };
}

async function toolVersion(cmd: string, args: string[]): Promise<string> {
  try {
    const r = await runBounded(cmd, args, 5000);
    return (r.stdout || r.stderr).trim().split('\n')[0] ?? '';
  } catch {
    return 'not found';
  }
}

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  installSignalCleanup();
  setNice(opts.nice);
  mkdirSync(opts.dir, { recursive: true });
  mkdirSync(dirname(opts.out), { recursive: true });
  const started = Date.now();
  const cells = opts.costs === 'only' ? [] : await runMatrix(opts);
  const costs = opts.costs === 'no' ? undefined : await runCosts({ ...opts.costOptions, dir: opts.dir, log });

  const report: Report = {
    date: new Date().toISOString(),
    label: opts.label,
    durationSec: Math.round((Date.now() - started) / 1000),
    machine: {
      ...machineInfo(),
      qemuImg: await toolVersion('qemu-img', ['--version']),
      tgtd: await toolVersion('tgtd', ['--version']),
      loadavgAtEnd: loadavg().map((x) => Number(x.toFixed(2))),
    },
    options: {
      quick: opts.quick,
      reps: opts.reps,
      nice: opts.nice,
      sizeBytes: opts.size,
      targets: opts.costs === 'only' ? [] : opts.targets,
      tabulaNodeArgs: opts.tabulaNodeArgs,
      variants: Object.fromEntries(opts.targets.filter((t) => /^tabula(-|$)/.test(t)).map((t) => [t, variantSettings(t, opts)])),
      costs: opts.costs,
      costOptions: opts.costOptions,
    },
    cells,
    costs,
  };
  writeFileSync(opts.out, JSON.stringify(report, null, 2) + '\n');
  if (cells.length > 0) process.stdout.write(formatTable(report) + '\n');
  if (costs) process.stdout.write('\n' + formatCosts(costs) + '\n');
  log(`bench: wrote ${opts.out}`);
}

/** The qemu-img matrix: every case on every target, alternating, medians of the repetitions. */
async function runMatrix(opts: Options): Promise<CellResult[]> {
  const base = join(opts.dir, `base-${opts.size}.img`);
  ensureBaseImage(base, opts.size);

  // Each target gets its own copy: writes by one never show up in another's reads.
  const targets: TargetUnderTest[] = [];
  for (const name of opts.targets) {
    const up = { entry: opts.entry, nodeArgs: opts.tabulaNodeArgs, env: protoEnv(), name };
    if (name === 'vdisk-thick') {
      const t = await startTabulaUp(join(opts.dir, `${name}.data`), opts.size, opts.dir, up);
      log(`bench: ${name} pid ${t.pid} at ${t.url}: copying the base image onto it (allocates every segment)`);
      const r = await runBounded('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', '-t', 'none', base, t.url], 10 * opts.runTimeoutMs);
      if (r.code !== 0) throw new Error(`filling ${name} failed: ${(r.stderr || r.stdout).trim()}`);
      const cdir = join(opts.dir, `${name}.data`, 'containers');
      const files = readdirSync(cdir).filter((f) => f.endsWith('.img')).map((f) => join(cdir, f));
      targets.push({ name, url: t.url, cache: 'none', t, files });
      continue;
    }
    if (isNetworkLun(name) || isMirror(name)) {
      // Needs the iSCSI container driver (container init/add of iscsi:// locators, agents reaching them),
      // or domains and copies (mirror rows): a row that cannot start is left out, not the whole matrix.
      let t;
      try {
        const o = { entry: opts.entry, nodeArgs: opts.tabulaNodeArgs, env: protoEnv() };
        t = isMirror(name) ? await startMirrorVdisk(name, opts.dir, opts.size, opts.dir, o) : await startAgentVdisk(name, opts.dir, opts.size, opts.dir, o);
      } catch (e) {
        log(`bench: ${name} left out: ${(e as Error).message}`);
        continue;
      }
      log(`bench: ${name} agent pid ${t.pid}${t.storagePid === undefined ? '' : `, storage pid ${t.storagePid}`}, container ${t.locator}, at ${t.url}: copying the base image onto it`);
      const r = await runBounded('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', '-t', 'none', base, t.url], 10 * opts.runTimeoutMs);
      if (r.code !== 0) {
        log(`bench: ${name} left out: filling it failed: ${(r.stderr || r.stdout).trim()}`);
        await t.stop();
        continue;
      }
      targets.push({ name, url: t.url, cache: 'none', t, storagePid: t.storagePid, files: t.files });
      continue;
    }
    if (name === 'vdisk-thin-fill' || name === 'vdisk-thin-fill-b') {
      const dataDir = join(opts.dir, `${name}.data`);
      const entryB = process.env.BENCH_ENTRY_B;
      if (name === 'vdisk-thin-fill-b' && (entryB === undefined || entryB === '')) fail('vdisk-thin-fill-b needs BENCH_ENTRY_B (another build\'s bin/tabula.js)');
      const o = name === 'vdisk-thin-fill-b' ? { ...up, entry: entryB as string } : up;
      const t = await startTabulaUp(dataDir, opts.size, opts.dir, o);
      log(`bench: ${name} pid ${t.pid} at ${t.url} (${o.entry}; restarted empty before every run)`);
      targets.push({ name, url: t.url, cache: 'none', t, fresh: () => startTabulaUp(dataDir, opts.size, opts.dir, o) });
      continue;
    }
    const file = join(opts.dir, `${name}.img`);
    copyFileSync(base, file);
    if (name === 'raw') {
      // the ceiling: the same file through the page cache, no network, no target
      targets.push({ name, url: file, cache: 'writeback', files: [file] });
    } else {
      const t = name === 'tgtd' ? await startTgtd(file, opts.dir) : await startTabulaTarget(file, opts.dir, { ...variantSettings(name, opts), nodeArgs: opts.tabulaNodeArgs, name });
      log(`bench: ${name} pid ${t.pid} at ${t.url}`);
      targets.push({ name, url: t.url, cache: 'none', t, files: [file] });
    }
  }

  // The same page-cache state for every backing file (see page-cache.ts).
  for (const t of targets) {
    for (const f of t.files ?? []) {
      const r = normalizePageCache(f);
      log(`bench: page cache of ${t.name} (${f}): evicted and re-read ${(r.bytesRead / 2 ** 20).toFixed(0)} MiB in 4 KiB pages (${r.seconds.toFixed(1)} s)`);
    }
  }

  // Warm-up: Tabula's JIT would otherwise be cold for the first cell.
  for (const t of targets) {
    if (!t.t || t.fresh) continue;
    for (const c of CASES.filter((x) => x.depth === 32 || x.blockSize > 4096)) {
      await qemuBench(c, Math.min(c.quickCount, c.blockSize > 4096 ? 64 : 10_000), t.url, t.cache, opts).catch((e: unknown) => log(`bench: warm-up of ${t.name} failed: ${(e as Error).message}`));
    }
  }

  const samples = new Map<string, RunSample[]>();
  const key = (c: BenchCase, t: TargetName): string => `${c.name}\0${t}`;
  for (let rep = 1; rep <= opts.reps; rep++) {
    for (const c of opts.cases) {
      const count = opts.quick ? c.quickCount : c.count;
      for (const t of targets) {
        let s: RunSample;
        try {
          if (t.fresh) {
            await t.t?.stop();
            t.t = await t.fresh();
            t.url = t.t.url;
            // warm the JIT with reads, which allocate nothing
            await qemuBench(CASES[2]!, 2000, t.url, t.cache, opts).catch(() => undefined);
          }
          s = await qemuBench(c, count, t.url, t.cache, opts, t.t?.pid, t.storagePid);
        } catch (e) {
          log(`bench: ${c.name} on ${t.name} (rep ${rep}) failed: ${(e as Error).message}`);
          continue;
        }
        const list = samples.get(key(c, t.name)) ?? [];
        list.push(s);
        samples.set(key(c, t.name), list);
        const storageCpu = s.storageCpuSeconds === undefined ? '' : `, storage node CPU ${((1e6 * s.storageCpuSeconds) / count).toFixed(1)} us/IO`;
        const cpu = s.cpuSeconds === undefined ? '' : `, target CPU ${((1e6 * s.cpuSeconds) / count).toFixed(1)} us/IO${storageCpu}`;
        log(`bench: rep ${rep}/${opts.reps} ${c.name.padEnd(18)} ${t.name.padEnd(6)} ${(count / s.seconds).toFixed(0).padStart(7)} IOPS (${s.seconds.toFixed(3)} s${cpu}; machine ${s.machineBusyPct.toFixed(0)}% busy)`);
      }
    }
  }

  const cells: CellResult[] = [];
  for (const c of opts.cases) {
    const count = opts.quick ? c.quickCount : c.count;
    for (const t of targets) {
      const list = samples.get(key(c, t.name)) ?? [];
      const sec = median(list.map((s) => s.seconds));
      const cpuList = list.map((s) => s.cpuSeconds).filter((x): x is number => x !== undefined);
      const cpu = cpuList.length > 0 ? median(cpuList) : undefined;
      const storageList = list.map((s) => s.storageCpuSeconds).filter((x): x is number => x !== undefined);
      const storageCpu = storageList.length > 0 ? median(storageList) : undefined;
      cells.push({
        case: c.name,
        target: t.name,
        blockSize: c.blockSize,
        depth: c.depth,
        write: c.write,
        count,
        runs: list.length,
        seconds: list.map((s) => s.seconds),
        iops: sec === undefined ? undefined : count / sec,
        mbps: sec === undefined ? undefined : (count * c.blockSize) / sec / 1e6,
        cpuUsPerIo: cpu === undefined ? undefined : (1e6 * cpu) / count,
        ...(storageCpu === undefined ? {} : { storageCpuUsPerIo: (1e6 * storageCpu) / count }),
        machineBusyPct: median(list.map((s) => s.machineBusyPct)),
      });
    }
  }
  for (const cell of cells) {
    const ref = (n: TargetName): number | undefined => cells.find((x) => x.case === cell.case && x.target === n)?.iops;
    const tg = ref('tgtd');
    const raw = ref('raw');
    if (cell.iops !== undefined && tg) cell.vsTgtd = cell.iops / tg;
    if (cell.iops !== undefined && raw) cell.vsRaw = cell.iops / raw;
    // The storage-network rows against the same vdisk on a local file container (the issue's goals: 0.6x / 0.8x IOPS, CPU at most 1.3x).
    const file = cells.find((x) => x.case === cell.case && x.target === 'vdisk-file');
    if (cell.target.startsWith('vdisk-lun-') && file !== undefined) {
      if (cell.iops !== undefined && file.iops) cell.vsFile = cell.iops / file.iops;
      if (cell.cpuUsPerIo !== undefined && file.cpuUsPerIo) cell.cpuVsFile = cell.cpuUsPerIo / file.cpuUsPerIo;
    }
    // The mirrored rows against the 1-copy vdisk of the same set-up (issue 16's goals: see mirror.ts).
    const one = cells.find((x) => x.case === cell.case && x.target === MIRROR_REFERENCE);
    if (isMirror(cell.target) && cell.target !== MIRROR_REFERENCE && one !== undefined) {
      if (cell.iops !== undefined && one.iops) cell.vs1Copy = cell.iops / one.iops;
      if (cell.cpuUsPerIo !== undefined && one.cpuUsPerIo) cell.cpuVs1Copy = cell.cpuUsPerIo / one.cpuUsPerIo;
    }
  }

  for (const t of targets) await t.t?.stop();
  return cells;
}

main()
  .catch((e: unknown) => {
    log(`bench: ${(e as Error).message}`);
    process.exitCode = 1;
  })
  .finally(() => runCleanups());
