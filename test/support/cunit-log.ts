// Parse the verbose console output of a CUnit 2.1 run of libiscsi's
// iscsi-test-cu into one record per test. Pure function of text.
//
// Shape of the output (stdout and stderr interleaved, unbuffered):
//   Suite: GetLBAStatus
//     Test: Simple ...passed
//     Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but ...
//   FAILED
//       1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
//     Test: Eject ...    [SKIPPED] Logical unit is not removable. Skipping test.
//   passed
//   Run Summary: ...
// CUnit prints "  Test: NAME ..." without a newline when a test starts and
// "passed" / "FAILED" at the start of a line when it ends; the test's own
// logging in between is indented, so a result word can only begin a line (or
// directly follow the "..." of a test that logged nothing).

/** incomplete = the test started but no result was printed (hung or crashed). */
export type CunitOutcome = 'passed' | 'failed' | 'skipped' | 'incomplete';

export interface CunitTest {
  suite: string;
  test: string;
  outcome: CunitOutcome;
  /**
   * Why: the first [SKIPPED] line for skipped tests; the first [FAILED] line
   * or else the first failed assertion for failed tests; the last line the
   * test printed for incomplete tests.
   */
  note: string;
}

interface Open {
  suite: string;
  test: string;
  result: 'passed' | 'failed' | undefined;
  firstSkip: string;
  firstFail: string;
  firstAssert: string;
  last: string;
}

export function parseCunitLog(text: string): CunitTest[] {
  const out: CunitTest[] = [];
  let suite = '';
  let cur: Open | undefined;

  const flush = (): void => {
    if (cur === undefined) return;
    let outcome: CunitOutcome;
    let note: string;
    if (cur.result === undefined) {
      outcome = 'incomplete';
      note = cur.last;
    } else if (cur.result === 'failed') {
      outcome = 'failed';
      note = cur.firstFail || cur.firstAssert;
    } else if (cur.firstSkip !== '') {
      // CUnit says passed, but the test skipped (some of) its checks.
      outcome = 'skipped';
      note = cur.firstSkip;
    } else {
      outcome = 'passed';
      note = '';
    }
    out.push({ suite: cur.suite, test: cur.test, outcome, note: note.replace(/\t/g, ' ') });
    cur = undefined;
  };

  // Text printed while a test runs (raw = the line as printed, not trimmed).
  const body = (raw: string): void => {
    if (cur === undefined) return;
    if (cur.result !== undefined) {
      // After FAILED, CUnit lists the failed assertions: "    1. file.c:38  - ...".
      if (cur.result === 'failed' && cur.firstAssert === '' && /^\s+\d+\. /.test(raw)) cur.firstAssert = raw.trim();
      return;
    }
    if (raw.startsWith('passed')) {
      cur.result = 'passed';
      return;
    }
    if (raw.startsWith('FAILED')) {
      cur.result = 'failed';
      return;
    }
    const t = raw.trim();
    if (t === '') return;
    cur.last = t;
    if (cur.firstSkip === '' && t.startsWith('[SKIPPED]')) cur.firstSkip = t;
    if (cur.firstFail === '' && t.startsWith('[FAILED]')) cur.firstFail = t;
  };

  for (const line of text.split('\n')) {
    if (line.startsWith('Suite: ')) {
      flush();
      suite = line.slice('Suite: '.length).trim();
      continue;
    }
    if (line.startsWith('  Test: ')) {
      flush();
      const rest = line.slice('  Test: '.length);
      const dots = rest.indexOf(' ...');
      const name = (dots < 0 ? rest : rest.slice(0, dots)).trim();
      cur = { suite, test: name, result: undefined, firstSkip: '', firstFail: '', firstAssert: '', last: '' };
      if (dots >= 0) body(rest.slice(dots + ' ...'.length));
      continue;
    }
    if (line.startsWith('Run Summary:')) {
      flush();
      continue;
    }
    body(line);
  }
  flush();
  return out;
}
