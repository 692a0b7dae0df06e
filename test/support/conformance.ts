// libiscsi's conformance suite (iscsi-test-cu) as the interop and system
// tests run it in full, and what they accept from each target: which tests
// may skip (each with the reason the feature is deliberately not offered),
// which known failures are tolerated, the minimum number of passed tests, and
// the mocha checks that hold a run to that. docs/conformance.md mirrors the
// Tabula list.
import { expect } from 'chai';
import type { TargetKind } from './target-process.js';
import { badResults, fullName, matchesTestGlob, runConformance, type ConformanceRun, type TestResult } from './iscsi-test-cu.js';

export interface AllowedSkip {
  /** FAMILY.SUITE.TEST glob. */
  test: string;
  /** The [SKIPPED] note must match, so a skip for another reason is not excused. */
  note: RegExp;
  /** Why Tabula does not offer the feature. */
  reason: string;
}

export interface Expectation {
  minPassed: number;
  allowedSkips: readonly AllowedSkip[];
  /** Failures tolerated (reference target only), name -> why. */
  knownFailures: ReadonlyMap<string, string>;
}

const REMOVABLE = 'removable media: a vdisk has no medium to lock, load or eject';

export const TABULA_SKIPS: readonly AllowedSkip[] = [
  { test: 'SCSI.PreventAllow.*', note: /Logical unit is not removable/, reason: REMOVABLE },
  { test: 'SCSI.StartStopUnit.*', note: /Media is not removable/, reason: REMOVABLE },
  {
    test: 'SCSI.ReadOnly.*',
    note: /Logical unit is not write-protected/,
    reason: 'write-protected LUN: exports are read-write; the test needs a write-protected LU',
  },
  {
    // CryptoErase* skip whole; Readonly and Reservations skip their crypto-erase step.
    test: 'SCSI.Sanitize.*',
    note: /CRYPTO_ERASE is not implemented/,
    reason: 'SANITIZE CRYPTO ERASE: data is not encrypted at rest, so there is no key to destroy',
  },
  {
    test: 'SCSI.*.*',
    note: /LBPPB < 2/,
    reason:
      'physical blocks larger than logical ones: LUNs report one logical block per physical block (see src/scsi/capacity.ts for why)',
  },
];

/** tgt 1.0.85 as Debian 12 ships it: the reference the harness was proven on. */
const TGTD_FAILURES = new Map<string, string>(
  [
    'SCSI.GetLBAStatus.BeyondEol',
    'SCSI.GetLBAStatus.UnmapSingle',
    'SCSI.PrinServiceactionRange.Range',
    'SCSI.ProutReserve.OwnershipEA',
    'SCSI.ProutReserve.OwnershipWE',
    'SCSI.ProutReserve.OwnershipEARO',
    'SCSI.ProutReserve.OwnershipWERO',
    'SCSI.Reserve6.2Initiators',
    'SCSI.Unmap.ZeroBlocks',
    'SCSI.MultipathIO.CompareAndWriteAsync',
    'iSCSI.iSCSIdatasn.iSCSIDataSnInvalid',
  ].map((n) => [n, 'known tgt 1.0.85 deviation (reference target)']),
);

export function expectationFor(kind: TargetKind): Expectation {
  if (kind === 'tabula') return { minPassed: 210, allowedSkips: TABULA_SKIPS, knownFailures: new Map() };
  return {
    minPassed: 170,
    // tgt lacks many optional commands; any skip is fine for the reference.
    allowedSkips: [{ test: '*.*.*', note: /./, reason: 'not implemented in tgt' }],
    knownFailures: TGTD_FAILURES,
  };
}

/** The allow-list entry that excuses a skipped test, if any. */
export function excuse(r: TestResult, skips: readonly AllowedSkip[]): AllowedSkip | undefined {
  const name = `${r.family}.${r.suite}.${r.test}`;
  return skips.find((s) => matchesTestGlob(name, s.test) && s.note.test(r.note));
}

/**
 * Per iscsi-test-cu process. Most suites take seconds; Sanitize.Reset ends by polling
 * TEST UNIT READY with 60 s sleeps until its SANITIZE finishes.
 */
export const SUITE_TIMEOUT = 150_000;
/** For the whole suite; CI as a whole must stay under 20 minutes. */
export const TOTAL_TIMEOUT = 10 * 60_000;

/**
 * The whole suite against `url`, destructive tests and SANITIZE included;
 * `mpathUrl` gives the suites that want another I_T nexus (reservations,
 * MultipathIO) their second session.
 */
export function runFullSuite(url: string, mpathUrl: string, outDir: string): Promise<ConformanceRun> {
  return runConformance({
    url,
    mpathUrl,
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
}

/** One line of counts for the test log. */
export function describeCounts(what: string, run: ConformanceRun): string {
  const c = run.counts;
  return (
    `iscsi-test-cu against ${what}: ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped, ` +
    `${c.hung} hung, ${c.crashed} crashed, ${c.notrun} not run; ${run.runs} processes, ${(run.elapsedMs / 1000).toFixed(1)} s`
  );
}

/** One result as a line of a failure message. */
export const resultLine = (r: TestResult): string => `  ${r.status.padEnd(8)} ${fullName(r)}  ${r.note}`;

/** The run, which a test needs to have completed. */
export function completed(run: ConformanceRun | undefined): ConformanceRun {
  if (run === undefined) throw new Error('the conformance run did not complete');
  return run;
}

/** Where a run's results are, and its summary: the end of every failure message. */
export function resultsContext(run: ConformanceRun): string {
  return `\n(results: ${run.outDir}/results.tsv, logs: ${run.outDir}/logs/)\n\n${run.summary}`;
}

/**
 * The checks every full run must pass, as mocha tests in the calling describe
 * block: nothing hung, crashed or unrunnable; no failure but the tolerated
 * ones; skips only from the allow-list; at least the minimum passed. `run`
 * gives the run once the block's before() hook has made it.
 */
export function itMeetsExpectation(expectation: Expectation, run: () => ConformanceRun | undefined): void {
  const done = (): ConformanceRun => completed(run());
  const context = (): string => resultsContext(done());

  it('runs every selected test: none hung, crashed or unable to run', function () {
    const broken = badResults(done().results).filter((r) => r.status !== 'failed');
    expect(broken.map(resultLine), `hung / crashed / unrunnable tests:\n${broken.map(resultLine).join('\n')}${context()}`).to.deep.equal([]);
  });

  it('has no failed tests', function () {
    const failures = done().results.filter((r) => r.status === 'failed' && !expectation.knownFailures.has(fullName(r)));
    expect(failures.map(resultLine), `failed tests:\n${failures.map(resultLine).join('\n')}${context()}`).to.deep.equal([]);
  });

  it('skips only allow-listed tests, each for its documented reason', function () {
    const unexcused = done().results.filter((r) => r.status === 'skipped' && excuse(r, expectation.allowedSkips) === undefined);
    expect(unexcused.map(resultLine), `skipped tests not in the allow-list:\n${unexcused.map(resultLine).join('\n')}${context()}`).to.deep.equal([]);
  });

  it(`passes at least ${expectation.minPassed} tests`, function () {
    expect(done().counts.passed, `passed count too low${context()}`).to.be.at.least(expectation.minPassed);
  });
}
