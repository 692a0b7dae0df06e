// libiscsi's conformance suite (iscsi-test-cu) in full against a thin
// table-driven vdisk: a controller and two agents as separate processes, the
// LUN on agent a (second sessions to agent a too). Same bar as
// test/interop/conformance.test.ts: no failed, hung or crashed test, skips only
// from the allow-list; the thin-provisioning suites (GetLBAStatus, Unmap,
// WriteSame with UNMAP) pass. Before that, on the fresh LUN, the MultipathIO
// suite with its second path through agent b: the same data and
// compare-and-write through both agents. (Reservations, mode pages and unit
// attentions live in each agent, so the suites that need them shared run on
// one agent.) The outdir is kept when anything fails.
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireTools } from '../support/tools.js';
import { runConformance, badResults, fullName, matchesTestGlob, type ConformanceRun, type TestResult } from '../support/iscsi-test-cu.js';
import { TABULA_SKIPS, excuse } from '../interop/expectations.js';
import { log } from '../../src/util/log.js';
import { useCluster } from './cluster.js';
import { check } from './table.js';

const VDISK = 'cu';
/** Per iscsi-test-cu process: Sanitize.Reset polls TEST UNIT READY with 60 s sleeps until its SANITIZE ends. */
const SUITE_TIMEOUT = 150_000;
const TOTAL_TIMEOUT = 10 * 60_000;
/** Thin-provisioning tests that must pass on a thin table-driven LUN. */
const THIN_MUST_PASS = ['SCSI.GetLBAStatus.*', 'SCSI.Unmap.*', 'SCSI.WriteSame10.Unmap*', 'SCSI.WriteSame16.Unmap*'];

const line = (r: TestResult): string => `  ${r.status.padEnd(8)} ${fullName(r)}  ${r.note}`;

describe('system: iscsi-test-cu against a thin table-driven vdisk (two agents)', function () {
  this.timeout(TOTAL_TIMEOUT + 120_000);
  let run: ConformanceRun | undefined;
  let paths: ConformanceRun | undefined;
  let outDir = '';
  let failed = false;

  const cluster = useCluster('conformance', async (c) => {
    requireTools(['timeout', 'stdbuf', 'iscsi-test-cu']);
    await c.serveVdisk({ vdisk: VDISK, size: '1GiB', containerSize: '2GiB', agents: { a: {}, b: {} } });
  });

  before(async function () {
    this.timeout(TOTAL_TIMEOUT + 60_000);
    const c = cluster();
    outDir = mkdtempSync(join(tmpdir(), 'tabula-system-conformance-'));
    // First, on the fresh LUN (MultipathIO.CompareAndWrite expects block 256 to read
    // zeros, which the full run does not leave behind): MultipathIO with the second
    // path through the other agent, one LU seen by two agents.
    paths = await runConformance({
      url: c.url('a', VDISK),
      mpathUrl: c.url('b', VDISK),
      outDir: join(outDir, 'two-agents'),
      tests: ['SCSI.MultipathIO'],
      suiteTimeoutMs: SUITE_TIMEOUT,
      totalTimeoutMs: 5 * 60_000,
      dataloss: true,
      sanitize: false,
    });
    log.warn(`MultipathIO across agents a and b: ${paths.results.map((r) => `${r.test} ${r.status}`).join(', ')}`);
    run = await runConformance({
      url: c.url('a', VDISK),
      // A second session to the same agent for the suites that want another I_T nexus (reservations,
      // multipath): reservations and mode pages live in each agent, so across agents they are not one LU's.
      mpathUrl: c.url('a', VDISK),
      // As test/interop/conformance.test.ts: Sanitize.Reservations leaves a RESERVE(6) on the
      // suite-wide second session, so that suite runs with per-test second sessions.
      singleSessionSuites: ['SCSI.Sanitize'],
      outDir,
      suiteTimeoutMs: SUITE_TIMEOUT,
      totalTimeoutMs: TOTAL_TIMEOUT,
      dataloss: true,
      sanitize: true,
    });
    const n = run.counts;
    log.warn(
      `iscsi-test-cu against a thin table-driven vdisk: ${n.passed} passed, ${n.failed} failed, ${n.skipped} skipped, ` +
        `${n.hung} hung, ${n.crashed} crashed, ${n.notrun} not run; ${run.runs} processes, ${(run.elapsedMs / 1000).toFixed(1)} s`,
    );
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });

  after(function () {
    const keep = failed || run === undefined || process.env.TABULA_SYSTEM_KEEP === '1';
    if (outDir !== '' && !keep) rmSync(outDir, { recursive: true, force: true });
    if (keep && outDir !== '') log.warn(`conformance results kept in ${outDir}`);
  });

  const done = (): ConformanceRun => {
    if (run === undefined) throw new Error('the conformance run did not complete');
    return run;
  };
  const context = (): string => `\n(results: ${outDir}/results.tsv, logs: ${outDir}/logs/)\n\n${done().summary}`;

  it('runs every test: none hung, crashed or unable to run', function () {
    const broken = badResults(done().results).filter((r) => r.status !== 'failed');
    expect(broken.map(line), `hung / crashed / unrunnable:\n${broken.map(line).join('\n')}${context()}`).to.deep.equal([]);
  });

  it('has no failed tests', function () {
    const failures = done().results.filter((r) => r.status === 'failed');
    expect(failures.map(line), `failed:\n${failures.map(line).join('\n')}${context()}`).to.deep.equal([]);
  });

  it('skips only allow-listed tests', function () {
    const unexcused = done().results.filter((r) => r.status === 'skipped' && excuse(r, TABULA_SKIPS) === undefined);
    expect(unexcused.map(line), `skipped, not allow-listed:\n${unexcused.map(line).join('\n')}${context()}`).to.deep.equal([]);
  });

  it('passes GetLBAStatus, Unmap and WriteSame with UNMAP on the thin LUN', function () {
    const thin = done().results.filter((r) => THIN_MUST_PASS.some((p) => matchesTestGlob(fullName(r), p)));
    expect(thin.length, 'thin-provisioning tests found').to.be.at.least(10);
    // UnmapUnaligned skips by design when there are fewer than 2 logical blocks per physical block.
    const notPassed = thin.filter((r) => r.status !== 'passed' && !(r.status === 'skipped' && excuse(r, TABULA_SKIPS) !== undefined));
    expect(notPassed.map(line), `thin-provisioning tests not passed:\n${notPassed.map(line).join('\n')}${context()}`).to.deep.equal([]);
  });

  it('passes at least 210 tests', function () {
    expect(done().counts.passed, `passed count too low${context()}`).to.be.at.least(210);
  });

  it('MultipathIO through two agents: the same data on both paths, compare-and-write across paths', function () {
    if (paths === undefined) throw new Error('the two-agent MultipathIO run did not complete');
    const want = ['Simple', 'CompareAndWrite'];
    const got = paths.results.filter((r) => want.includes(r.test));
    expect(got.map(line), paths.summary).to.deep.equal(got.filter((r) => r.status === 'passed').map(line));
    expect(got.map((r) => r.test).sort()).to.deep.equal([...want].sort());
  });

  it('leaves the database consistent: tabula check passes', async function () {
    const r = await check(cluster());
    expect(r.ok, r.text).to.equal(true);
  });
});
