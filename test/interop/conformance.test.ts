// libiscsi's conformance suite (iscsi-test-cu) against a 1 GiB thin LUN of
// the target under test (Tabula by default; TABULA_INTEROP_TARGET=tgtd runs it
// against the reference target with tgt's own expectations). The outdir with
// per-suite logs, results.tsv and summary.txt is kept when anything fails
// (TABULA_INTEROP_KEEP=1 keeps it always).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTarget, targetKindFromEnv, type RunningTarget } from '../support/target-process.js';
import type { ConformanceRun } from '../support/iscsi-test-cu.js';
import { TOTAL_TIMEOUT, describeCounts, expectationFor, itMeetsExpectation, runFullSuite } from '../support/conformance.js';
import { requireTools } from '../support/tools.js';
import { log } from '../../src/util/log.js';

const kind = targetKindFromEnv();

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
    // The same URL again: MultipathIO gets a second session to the same LU.
    run = await runFullSuite(target.url, target.url, outDir);
    log.info(describeCounts(kind, run));
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

  itMeetsExpectation(expectationFor(kind), () => run);
});
