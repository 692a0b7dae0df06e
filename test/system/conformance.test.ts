// libiscsi's conformance suite (iscsi-test-cu) in full against a thin
// table-driven vdisk: a controller and two agents as separate processes, the
// LUN on agent a (second sessions to agent a too). Same bar as
// test/interop/conformance.test.ts: no failed, hung or crashed test, skips only
// from the allow-list; the thin-provisioning suites (GetLBAStatus, Unmap,
// WriteSame with UNMAP) pass. Before that, on the fresh LUN, the MultipathIO
// suite with its second path through agent b: the same data and
// compare-and-write through both agents. (The full run keeps its second
// sessions on agent a, as a single-path host would; the suites that use two
// initiators run with the second one through agent b in
// test/system/lu-state.test.ts.) The outdir is kept when anything fails.
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireTools } from '../support/tools.js';
import { runConformance, fullName, matchesTestGlob, type ConformanceRun } from '../support/iscsi-test-cu.js';
import {
  SUITE_TIMEOUT,
  TABULA_SKIPS,
  TOTAL_TIMEOUT,
  completed,
  describeCounts,
  excuse,
  expectationFor,
  itMeetsExpectation,
  resultLine as line,
  resultsContext,
  runFullSuite,
} from '../support/conformance.js';
import { log } from '../../src/util/log.js';
import { useCluster } from './cluster.js';
import { check } from './table.js';

const VDISK = 'cu';
/** Thin-provisioning tests that must pass on a thin table-driven LUN. */
const THIN_MUST_PASS = ['SCSI.GetLBAStatus.*', 'SCSI.Unmap.*', 'SCSI.WriteSame10.Unmap*', 'SCSI.WriteSame16.Unmap*'];

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
    // A second session to the same agent for the suites that want another I_T nexus (reservations,
    // multipath); across agents they run in lu-state.test.ts.
    run = await runFullSuite(c.url('a', VDISK), c.url('a', VDISK), outDir);
    log.warn(describeCounts('a thin table-driven vdisk', run));
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });

  after(function () {
    const keep = failed || run === undefined || process.env.TABULA_SYSTEM_KEEP === '1';
    if (outDir !== '' && !keep) rmSync(outDir, { recursive: true, force: true });
    if (keep && outDir !== '') log.warn(`conformance results kept in ${outDir}`);
  });

  // The same bar as against `tabula target`.
  itMeetsExpectation(expectationFor('tabula'), () => run);

  it('passes GetLBAStatus, Unmap and WriteSame with UNMAP on the thin LUN', function () {
    const done = completed(run);
    const thin = done.results.filter((r) => THIN_MUST_PASS.some((p) => matchesTestGlob(fullName(r), p)));
    expect(thin.length, 'thin-provisioning tests found').to.be.at.least(10);
    // UnmapUnaligned skips by design when there are fewer than 2 logical blocks per physical block.
    const notPassed = thin.filter((r) => r.status !== 'passed' && !(r.status === 'skipped' && excuse(r, TABULA_SKIPS) !== undefined));
    expect(notPassed.map(line), `thin-provisioning tests not passed:\n${notPassed.map(line).join('\n')}${resultsContext(done)}`).to.deep.equal([]);
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
