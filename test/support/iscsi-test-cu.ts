// Run libiscsi's conformance suite (iscsi-test-cu, Debian libiscsi-bin 1.19)
// against one LUN, one suite per process under a time limit, and collect one
// result per test. A suite whose process hangs or dies is resumed with the
// tests that have no result yet, so one bad test cannot hide the rest.
import { mkdirSync, readFileSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { runBounded, describeRun } from './bounded-run.js';
import { parseCunitLog } from './cunit-log.js';

/**
 * passed; failed (a CUnit assertion failed); skipped (CUnit passed but the
 * test logged [SKIPPED]); hung (no result at the time limit); crashed (the
 * process died mid-test); notrun (excluded, out of time, or iscsi-test-cu
 * could not run it: then the note starts with "error:").
 */
export type TestStatus = 'passed' | 'failed' | 'skipped' | 'hung' | 'crashed' | 'notrun';

export interface TestResult {
  family: string;
  suite: string;
  test: string;
  status: TestStatus;
  note: string;
}

export interface Counts {
  run: number;
  passed: number;
  failed: number;
  skipped: number;
  hung: number;
  crashed: number;
  notrun: number;
  /** notrun because iscsi-test-cu could not run them (login failure, ...). */
  errors: number;
}

export interface ConformanceOptions {
  /** iscsi://127.0.0.1:PORT/IQN/LUN (loopback only) */
  url: string;
  /** Receives logs/, results.tsv, summary.tsv, summary.txt. */
  outDir: string;
  /** Second URL for the MultipathIO suite (default: url again: a second session to the same LU). */
  mpathUrl?: string;
  /**
   * FAMILY.SUITE names run with the first URL only. iscsi-test-cu keeps the
   * second session for a whole suite, so state one test leaves on it (e.g. an
   * SPC-2 reservation) reaches the next tests; without a second URL those tests
   * open and close their own second session instead.
   */
  singleSessionSuites?: readonly string[];
  /** FAMILY[.SUITE[.TEST]] globs to run (default SCSI and iSCSI). */
  tests?: readonly string[];
  /** FAMILY[.SUITE[.TEST]] globs to leave out (status notrun, note "excluded"). */
  exclude?: readonly string[];
  /** Time limit per iscsi-test-cu process (default 120 s). */
  suiteTimeoutMs?: number;
  /** No new process is started after this (default 15 min); the rest is notrun. */
  totalTimeoutMs?: number;
  /** Pass --dataloss (default true). */
  dataloss?: boolean;
  /** Pass --allow-sanitize (default true). */
  sanitize?: boolean;
  /** Called with one line after each iscsi-test-cu process. */
  onProgress?: (line: string) => void;
}

export interface ConformanceRun {
  url: string;
  outDir: string;
  results: TestResult[];
  counts: Counts;
  /** iscsi-test-cu processes started. */
  runs: number;
  elapsedMs: number;
  /** The text of summary.txt. */
  summary: string;
}

const FAMILIES_DEFAULT = ['SCSI', 'iSCSI'];

/** Refuse anything but iscsi:// on a loopback address: the suite destroys data. */
export function assertLoopbackUrl(url: string): void {
  const m = /^iscsi:\/\/(?:[^@/]*@)?(\[[^\]]+\]|[^:/]+)(?::\d+)?\/[^/]+\/\d+$/.exec(url);
  const host = m?.[1];
  const ok = host !== undefined && (/^127\.\d+\.\d+\.\d+$/.test(host) || host === 'localhost' || host === '[::1]');
  if (!ok) throw new Error(`refusing non-loopback or malformed iSCSI URL: ${url}`);
}

function globToRegExp(glob: string): RegExp {
  const esc = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${esc}$`);
}

/** Does FAMILY.SUITE.TEST match a FAMILY[.SUITE[.TEST]] glob (missing parts match anything)? */
export function matchesTestGlob(name: string, pattern: string): boolean {
  const n = name.split('.');
  const p = pattern.split('.');
  if (n.length !== 3 || p.length > 3) return false;
  for (let i = 0; i < 3; i++) {
    const part = p[i];
    if (part === undefined || part === '') continue;
    if (!globToRegExp(part).test(n[i] as string)) return false;
  }
  return true;
}

/** All FAMILY.SUITE.TEST names iscsi-test-cu knows, in its order. */
export async function listTests(): Promise<string[]> {
  const r = await runBounded('iscsi-test-cu', ['--list'], { timeoutMs: 30_000 });
  if (r.exitCode !== 0) throw new Error(`cannot list iscsi-test-cu tests: ${describeRun(r)}`);
  return r.stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => /^[^.\s]+\.[^.\s]+\.[^.\s]+$/.test(l));
}

export function emptyCounts(): Counts {
  return { run: 0, passed: 0, failed: 0, skipped: 0, hung: 0, crashed: 0, notrun: 0, errors: 0 };
}

export function countResults(results: readonly TestResult[]): Counts {
  const c = emptyCounts();
  for (const r of results) {
    c[r.status]++;
    if (r.status === 'notrun' && r.note.startsWith('error')) c.errors++;
    else if (r.status !== 'notrun') c.run++;
  }
  return c;
}

/** failed, hung, crashed and could-not-run tests: what makes a run bad. */
export function badResults(results: readonly TestResult[]): TestResult[] {
  return results.filter(
    (r) => r.status === 'failed' || r.status === 'hung' || r.status === 'crashed' || (r.status === 'notrun' && r.note.startsWith('error')),
  );
}

export const fullName = (r: TestResult): string => `${r.family}.${r.suite}.${r.test}`;

export async function runConformance(opts: ConformanceOptions): Promise<ConformanceRun> {
  assertLoopbackUrl(opts.url);
  const mpathUrl = opts.mpathUrl ?? opts.url;
  assertLoopbackUrl(mpathUrl);
  const suiteTimeoutMs = opts.suiteTimeoutMs ?? 120_000;
  const totalTimeoutMs = opts.totalTimeoutMs ?? 15 * 60_000;
  const include = opts.tests ?? FAMILIES_DEFAULT;
  const exclude = opts.exclude ?? [];
  const logDir = join(opts.outDir, 'logs');
  mkdirSync(logDir, { recursive: true });
  for (const f of readdirSync(logDir)) if (f.endsWith('.log')) rmSync(join(logDir, f));

  const all = await listTests();
  writeFileSync(join(opts.outDir, 'testlist.txt'), all.join('\n') + '\n');
  const order = all.filter((n) => include.some((p) => matchesTestGlob(n, p)));
  if (order.length === 0) throw new Error(`no iscsi-test-cu tests match ${include.join(',')}`);

  const status = new Map<string, { status: TestStatus; note: string }>();
  const suites: string[] = [];
  for (const name of order) {
    const fs = name.slice(0, name.lastIndexOf('.'));
    if (!suites.includes(fs)) suites.push(fs);
    if (exclude.some((p) => matchesTestGlob(name, p))) status.set(name, { status: 'notrun', note: 'excluded' });
  }

  const baseArgs: string[] = [];
  if (opts.dataloss ?? true) baseArgs.push('--dataloss');
  if (opts.sanitize ?? true) baseArgs.push('--allow-sanitize');

  const started = Date.now();
  let runs = 0;
  for (const fs of suites) {
    const family = fs.slice(0, fs.indexOf('.'));
    for (let attempt = 1; ; attempt++) {
      const members = order.filter((n) => n.startsWith(fs + '.'));
      const remaining = members.filter((n) => !status.has(n));
      if (remaining.length === 0) break;
      const left = started + totalTimeoutMs - Date.now();
      if (left < 5000) {
        for (const n of remaining) status.set(n, { status: 'notrun', note: 'total time limit reached' });
        break;
      }
      const limit = Math.min(left, suiteTimeoutMs);
      // A whole suite by name when nothing in it has a result yet; otherwise
      // the remaining tests as a comma list, which iscsi-test-cu 1.19 registers
      // last-first: reverse it so they run in list order.
      const selection = remaining.length === members.length ? fs : [...remaining].reverse().join(',');
      const log = join(logDir, attempt === 1 ? `${fs}.log` : `${fs}.${attempt}.log`);
      const urls = opts.singleSessionSuites?.includes(fs) ? [opts.url] : [opts.url, mpathUrl];
      const args = [...baseArgs, '-t', selection, ...urls];
      writeFileSync(log, `+ iscsi-test-cu ${args.join(' ')}\n`);
      // stdbuf: unbuffered output, so a killed run still shows which test was running.
      const r = await runBounded('stdbuf', ['-o0', '-e0', 'iscsi-test-cu', ...args], { timeoutMs: limit, outputFile: log });
      runs++;
      const text = readFileSync(log, 'utf8');
      writeFileSync(log, `+ ${r.timedOut ? `time limit ${limit} ms reached` : `exit status ${r.exitCode ?? r.signal}`}\n`, { flag: 'a' });

      let progress = 0;
      for (const t of parseCunitLog(text)) {
        const name = `${family}.${t.suite}.${t.test}`;
        // Only tests we asked for and have no result for yet.
        if (!remaining.includes(name) || status.has(name)) continue;
        let st: TestStatus;
        let note = t.note;
        if (t.outcome === 'incomplete') {
          st = r.timedOut ? 'hung' : 'crashed';
          const why = r.timedOut ? `no result after ${Math.round(limit / 1000)} s` : `iscsi-test-cu ${r.signal ?? `exit ${r.exitCode}`}`;
          note = `${why}${t.note ? `; last output: ${t.note}` : ''}`;
        } else {
          st = t.outcome;
        }
        status.set(name, { status: st, note });
        progress++;
      }
      opts.onProgress?.(`${fs.padEnd(40)} run ${attempt}: ${progress} results (${r.timedOut ? 'time limit' : `exit ${r.exitCode ?? r.signal}`})`);
      if (progress === 0) {
        // Nothing ran (login refused, bad URL, ...): say why, do not loop.
        const why = text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('+ ')).slice(-1)[0] ?? 'no output';
        for (const n of remaining) status.set(n, { status: 'notrun', note: `error: iscsi-test-cu ${r.timedOut ? 'time limit' : `exit ${r.exitCode ?? r.signal}`}: ${why}` });
        break;
      }
    }
  }
  const elapsedMs = Date.now() - started;

  const results: TestResult[] = order.map((name) => {
    const [family, suite, test] = name.split('.') as [string, string, string];
    const s = status.get(name) ?? { status: 'notrun' as const, note: '' };
    return { family, suite, test, status: s.status, note: s.note };
  });
  const counts = countResults(results);
  writeResults(opts.outDir, results);
  const summary = formatSummary(opts.url, results, runs, elapsedMs);
  writeFileSync(join(opts.outDir, 'summary.txt'), summary);
  return { url: opts.url, outDir: opts.outDir, results, counts, runs, elapsedMs, summary };
}

function writeResults(outDir: string, results: readonly TestResult[]): void {
  const rows = results.map((r) => [r.family, r.suite, r.test, r.status, r.note].join('\t'));
  writeFileSync(join(outDir, 'results.tsv'), ['family\tsuite\ttest\tstatus\tnote', ...rows].join('\n') + '\n');
  const groups = groupCounts(results);
  const tsv = ['group\trun\tpassed\tfailed\tskipped\thung\tcrashed\tnotrun'];
  for (const [label, c] of groups) tsv.push([label, c.run, c.passed, c.failed, c.skipped, c.hung, c.crashed, c.notrun].join('\t'));
  writeFileSync(join(outDir, 'summary.tsv'), tsv.join('\n') + '\n');
}

/** Counts per FAMILY.SUITE, then per family, then TOTAL. */
function groupCounts(results: readonly TestResult[]): Array<[string, Counts]> {
  const bySuite = new Map<string, TestResult[]>();
  const byFamily = new Map<string, TestResult[]>();
  for (const r of results) {
    const k = `${r.family}.${r.suite}`;
    bySuite.set(k, [...(bySuite.get(k) ?? []), r]);
    byFamily.set(r.family, [...(byFamily.get(r.family) ?? []), r]);
  }
  const out: Array<[string, Counts]> = [];
  for (const [k, rs] of bySuite) out.push([k, countResults(rs)]);
  for (const [k, rs] of byFamily) out.push([`${k} (all suites)`, countResults(rs)]);
  out.push(['TOTAL', countResults(results)]);
  return out;
}

export function formatSummary(url: string, results: readonly TestResult[], runs: number, elapsedMs: number): string {
  const lines: string[] = [];
  lines.push(`iscsi-test-cu against ${url}  (${runs} iscsi-test-cu runs, ${(elapsedMs / 1000).toFixed(1)} s)`, '');
  const row = (label: string, c: Counts | string[]): string => {
    const v = Array.isArray(c) ? c : [c.run, c.passed, c.failed, c.skipped, c.hung, c.crashed, c.notrun].map(String);
    return label.padEnd(36) + v.map((x, i) => x.padStart([5, 7, 7, 8, 5, 8, 7][i] ?? 7)).join('');
  };
  lines.push(row('family.suite', ['run', 'passed', 'failed', 'skipped', 'hung', 'crashed', 'notrun']));
  const groups = groupCounts(results);
  let prevFamilyRow = false;
  for (const [label, c] of groups) {
    const familyRow = label.endsWith('(all suites)') || label === 'TOTAL';
    if (familyRow && !prevFamilyRow) lines.push('');
    prevFamilyRow = familyRow;
    lines.push(row(label, c));
  }
  const bad = badResults(results);
  lines.push('', bad.length === 0 ? 'No failed, hung, crashed or unrunnable tests.' : 'Failed / hung / crashed / unrunnable tests:');
  for (const r of bad) lines.push(`  ${r.status.padEnd(8)} ${fullName(r)}  ${r.note}`);
  const reasons = new Map<string, number>();
  for (const r of results) if (r.status === 'skipped') reasons.set(r.note, (reasons.get(r.note) ?? 0) + 1);
  if (reasons.size > 0) {
    lines.push('', 'Skip reasons (count):');
    for (const [why, n] of [...reasons].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))) lines.push(`  ${String(n).padStart(3)}  ${why}`);
  }
  return lines.join('\n') + '\n';
}
