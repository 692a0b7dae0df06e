// libiscsi's conformance suite (iscsi-test-cu) against a 1 GiB thin LUN of
// the target under test (Tabula by default; TABULA_INTEROP_TARGET=tgtd runs it
// against the reference target with tgt's own expectations). The outdir with
// per-suite logs, results.tsv and summary.txt is kept when anything fails
// (TABULA_INTEROP_KEEP=1 keeps it always).
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTarget, targetKindFromEnv, type RunningTarget } from '../support/target-process.js';
import { runConformance, badResults, fullName, type ConformanceRun, type TestResult } from '../support/iscsi-test-cu.js';
import { requireTools } from '../support/tools.js';
import { expectationFor, excuse } from './expectations.js';
import { log } from '../../src/util/log.js';

const kind = targetKindFromEnv();
const expectation = expectationFor(kind);
/**
 * Per iscsi-test-cu process. Most suites take seconds; Sanitize.Reset ends by polling
 * TEST UNIT READY with 60 s sleeps until its SANITIZE finishes.
 */
const SUITE_TIMEOUT = 150_000;
/** For the whole suite; CI as a whole must stay under 20 minutes. */
const TOTAL_TIMEOUT = 10 * 60_000;

const line = (r: TestResult): string => `  ${r.status.padEnd(8)} ${fullName(r)}  ${r.note}`;

describe(`interop: libiscsi conformance (iscsi-test-cu) against ${kind}`, function () {
  let target: RunningTarget | undefined;
  let run: ConformanceRun | undefined;
  let outDir = '';
  let failed = false;

  before(async function () {
    this.timeout(TOTAL_TIMEOUT + 90_000);
    requireTools(['timeout', 'stdbuf', 'iscsi-test-cu']);
    target = await startTarget({ kind, sizeBytes: 1024 ** 3, label: 'conformance' });
    outDir = mkdtempSync(join(tmpdir(), `tabula-conformance-${kind}-`));
    run = await runConformance({
      url: target.url,
      // The same URL again: MultipathIO gets a second session to the same LU.
      mpathUrl: target.url,
      // SCSI.Sanitize.Reservations takes a RESERVE(6) on the suite-wide second session and
      // never releases it, so the next test, Sanitize.Reset, must meet RESERVATION CONFLICT
      // on any target that honours SPC-2 reservations. Without a second URL each test makes
      // (and drops) its own second session. See docs/conformance.md.
      singleSessionSuites: ['SCSI.Sanitize'],
      outDir,
      suiteTimeoutMs: SUITE_TIMEOUT,
      totalTimeoutMs: TOTAL_TIMEOUT,
      dataloss: true,
      sanitize: true,
    });
    const c = run.counts;
    log.info(
      `iscsi-test-cu against ${kind}: ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped, ` +
        `${c.hung} hung, ${c.crashed} crashed, ${c.notrun} not run; ${run.runs} processes, ${(run.elapsedMs / 1000).toFixed(1)} s`,
    );
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });

  after(async function () {
    this.timeout(30_000);
    // A failing before() hook also counts: keep everything then.
    const keep = failed || run === undefined || process.env.TABULA_INTEROP_KEEP === '1';
    await target?.stop({ keepLogs: keep });
    if (outDir !== '' && !keep) rmSync(outDir, { recursive: true, force: true });
    if (keep && outDir !== '') log.warn(`conformance results kept in ${outDir} (target logs: ${target?.dir ?? 'n/a'})`);
  });

  const done = (): ConformanceRun => {
    if (run === undefined) throw new Error('the conformance run did not complete');
    return run;
  };
  const context = (): string => `\n(results: ${outDir}/results.tsv, logs: ${outDir}/logs/)\n\n${done().summary}`;

  it('runs every selected test: none hung, crashed or unable to run', function () {
    const broken = badResults(done().results).filter((r) => r.status !== 'failed');
    expect(broken.map(line), `hung / crashed / unrunnable tests:\n${broken.map(line).join('\n')}${context()}`).to.deep.equal([]);
  });

  it('has no failed tests', function () {
    const failures = done().results.filter((r) => r.status === 'failed' && !expectation.knownFailures.has(fullName(r)));
    expect(failures.map(line), `failed tests:\n${failures.map(line).join('\n')}${context()}`).to.deep.equal([]);
  });

  it('skips only allow-listed tests, each for its documented reason', function () {
    const unexcused = done().results.filter((r) => r.status === 'skipped' && excuse(r, expectation.allowedSkips) === undefined);
    expect(unexcused.map(line), `skipped tests not in the allow-list:\n${unexcused.map(line).join('\n')}${context()}`).to.deep.equal([]);
  });

  it(`passes at least ${expectation.minPassed} tests`, function () {
    expect(done().counts.passed, `passed count too low${context()}`).to.be.at.least(expectation.minPassed);
  });
});
