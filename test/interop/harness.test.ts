// The interop harness's own parsers and helpers, on hand-written samples of
// the tools' output (no target needed).
import { expect } from 'chai';
import { parseCunitLog } from '../support/cunit-log.js';
import { matchesTestGlob, assertLoopbackUrl, countResults, badResults, type TestResult } from '../support/iscsi-test-cu.js';
import {
  parseIscsiLs,
  parseKeyValues,
  numField,
  parseSupportedVpd,
  parseSerial,
  parseDesignators,
  parseReadCapacity16,
} from '../support/client-output.js';
import { excuse, TABULA_SKIPS } from '../support/conformance.js';
import { runBounded } from '../support/bounded-run.js';
import { runConformance } from '../support/iscsi-test-cu.js';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const CUNIT = [
  '+ iscsi-test-cu --dataloss -t SCSI.Demo iscsi://127.0.0.1:3260/iqn.x:y/0 iscsi://127.0.0.1:3260/iqn.x:y/0',
  'found matching LU device identifier for all (2) paths',
  '',
  '     CUnit - A unit testing framework for C - Version 2.1-3',
  '',
  'Suite: Demo',
  '  Test: Quick ...passed',
  '  Test: Skips ...    [SKIPPED] Logical unit is not removable. Skipping test.',
  'passed',
  '  Test: FailsLoud ...    [FAILED] READ10 successful but should have failed',
  'FAILED',
  '    1. test_demo.c:38  - CU_ASSERT_EQUAL(_r,0)',
  '  Test: FailsQuiet ...    Send a READ10',
  'FAILED',
  '    1. test_demo.c:77  - CU_ASSERT_EQUAL(ret,0)',
  '    2. test_demo.c:78  - CU_ASSERT_EQUAL(x,1)',
  '  Test: PartSkip ...    Test 1',
  '    [SKIPPED] WRITESAME16 does not support 0-blocks.',
  '    Test 2 ok',
  'passed',
  'Suite: Other',
  '  Test: Hangs ...    Send READ16 with\ttab',
  '    waiting for reply',
].join('\n');

describe('interop harness: CUnit log parser', function () {
  const parsed = parseCunitLog(CUNIT);

  it('finds every test with its suite', function () {
    expect(parsed.map((t) => `${t.suite}.${t.test}`)).to.deep.equal([
      'Demo.Quick',
      'Demo.Skips',
      'Demo.FailsLoud',
      'Demo.FailsQuiet',
      'Demo.PartSkip',
      'Other.Hangs',
    ]);
  });

  it('classifies passed, skipped (passed with [SKIPPED]), failed and incomplete', function () {
    expect(parsed.map((t) => t.outcome)).to.deep.equal(['passed', 'skipped', 'failed', 'failed', 'skipped', 'incomplete']);
  });

  it('keeps the reason: [SKIPPED] line, [FAILED] line or first assertion, last output', function () {
    expect(parsed.map((t) => t.note)).to.deep.equal([
      '',
      '[SKIPPED] Logical unit is not removable. Skipping test.',
      '[FAILED] READ10 successful but should have failed',
      '1. test_demo.c:77  - CU_ASSERT_EQUAL(ret,0)',
      '[SKIPPED] WRITESAME16 does not support 0-blocks.',
      'waiting for reply',
    ]);
  });

  it('returns nothing for output without tests (login failure)', function () {
    expect(parseCunitLog('iscsi_connect failed. Failed to log in to target\n')).to.deep.equal([]);
  });
});

describe('interop harness: test selection and counting', function () {
  it('matches FAMILY[.SUITE[.TEST]] globs part by part', function () {
    expect(matchesTestGlob('SCSI.Read10.Simple', 'SCSI')).to.equal(true);
    expect(matchesTestGlob('SCSI.Read10.Simple', 'SCSI.Read10')).to.equal(true);
    expect(matchesTestGlob('SCSI.Read10.Simple', 'SCSI.Read1*.Sim*')).to.equal(true);
    expect(matchesTestGlob('SCSI.Read10.Simple', 'iSCSI')).to.equal(false);
    expect(matchesTestGlob('SCSI.Read10.Simple', 'SCSI.Read1')).to.equal(false);
    expect(matchesTestGlob('ALL.Read10', 'ALL')).to.equal(false);
  });

  it('accepts only loopback iscsi:// URLs', function () {
    expect(() => assertLoopbackUrl('iscsi://127.0.0.1:3260/iqn.2026-11.org.tabula:disk0/0')).to.not.throw();
    expect(() => assertLoopbackUrl('iscsi://u%s@127.0.0.2:3260/iqn.x:y/1')).to.not.throw();
    expect(() => assertLoopbackUrl('iscsi://10.0.0.1:3260/iqn.x:y/0')).to.throw(/non-loopback/);
    expect(() => assertLoopbackUrl('iscsi://127.0.0.1.example.com/iqn.x:y/0')).to.throw(/non-loopback/);
    expect(() => assertLoopbackUrl('http://127.0.0.1/iqn.x:y/0')).to.throw(/non-loopback/);
  });

  it('counts results and picks the bad ones', function () {
    const r = (status: TestResult['status'], note = ''): TestResult => ({ family: 'SCSI', suite: 'S', test: status + note, status, note });
    const results = [r('passed'), r('failed'), r('skipped'), r('hung'), r('crashed'), r('notrun', 'excluded'), r('notrun', 'error: exit 10')];
    expect(countResults(results)).to.deep.equal({ run: 5, passed: 1, failed: 1, skipped: 1, hung: 1, crashed: 1, notrun: 2, errors: 1 });
    expect(badResults(results).map((x) => x.status)).to.deep.equal(['failed', 'hung', 'crashed', 'notrun']);
  });

  it('excuses an allow-listed skip only for its documented reason', function () {
    const skip = (suite: string, test: string, note: string): TestResult => ({ family: 'SCSI', suite, test, status: 'skipped', note });
    expect(excuse(skip('PreventAllow', 'Eject', '[SKIPPED] Logical unit is not removable. Skipping test.'), TABULA_SKIPS)).to.not.equal(undefined);
    expect(excuse(skip('PreventAllow', 'Eject', '[SKIPPED] PREVENTALLOW is not implemented.'), TABULA_SKIPS)).to.equal(undefined);
    expect(excuse(skip('Read10', 'Simple', '[SKIPPED] Logical unit is not removable. Skipping test.'), TABULA_SKIPS)).to.equal(undefined);
  });
});

describe('interop harness: libiscsi utility output parsers', function () {
  it('iscsi-ls -s: targets with portals, LUNs with types', function () {
    const ls = parseIscsiLs(
      'Target:iqn.2026-11.org.tabula:disk0 Portal:127.0.0.1:3260,1\nLun:0    Type:DIRECT_ACCESS (Size:1023M)\nLun:1    Type:STORAGE_ARRAY_CONTROLLER\n',
    );
    expect(ls.targets).to.deep.equal([{ name: 'iqn.2026-11.org.tabula:disk0', portal: '127.0.0.1:3260', tpgt: 1 }]);
    expect(ls.luns).to.deep.equal([
      { lun: 0, type: 'DIRECT_ACCESS', size: '1023M' },
      { lun: 1, type: 'STORAGE_ARRAY_CONTROLLER', size: undefined },
    ]);
  });

  it('iscsi-inq standard data and VPD key:value pages', function () {
    const m = parseKeyValues('Peripheral Device Type:DIRECT_ACCESS\nVersion:6 ANSI INCITS 513-2015 (SPC-4)\nmaximum unmap lba count:4294967295\n');
    expect(numField(m, 'Version')).to.equal(6);
    expect(numField(m, 'Maximum Unmap LBA Count')).to.equal(4294967295);
    expect(() => numField(m, 'lbpu')).to.throw(/no "lbpu"/);
  });

  it('VPD 0x00, 0x80 and 0x83', function () {
    expect(parseSupportedVpd('Page:0x00 SUPPORTED_VPD_PAGES\nPage:0x80 UNIT_SERIAL_NUMBER\nPage:0xb2 LOGICAL_BLOCK_PROVISIONING\n')).to.deep.equal([0, 0x80, 0xb2]);
    expect(parseSerial('Unit Serial Number:[   beaf11]\n')).to.equal('beaf11');
    const ds = parseDesignators(
      [
        'Page Code:(0x83) DEVICE_IDENTIFICATION',
        'DEVICE DESIGNATOR #0',
        'Code Set:(1) BINARY',
        'PIV:0',
        'Association:(0) LOGICAL_UNIT',
        'Designator Type:(3) NAA',
        'Designator:[`]',
        'DEVICE DESIGNATOR #1',
        'Code Set:(3) UTF8',
        'PIV:1',
        'Association:(1) TARGET_PORT',
        'Designator Type:(4) RELATIVE_TARGET_PORT',
      ].join('\n'),
    );
    expect(ds).to.deep.equal([
      { codeSet: 1, piv: 0, association: 0, associationName: 'LOGICAL_UNIT', type: 3, typeName: 'NAA' },
      { codeSet: 3, piv: 1, association: 1, associationName: 'TARGET_PORT', type: 4, typeName: 'RELATIVE_TARGET_PORT' },
    ]);
  });

  it('iscsi-readcapacity16', function () {
    const cap = parseReadCapacity16(
      [
        'RETURNED LOGICAL BLOCK ADDRESS:2097151',
        'LOGICAL BLOCK LENGTH IN BYTES:512',
        'P_TYPE:0 PROT_EN:0',
        'P_I_EXPONENT:0 LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:3',
        'LBPME:1 LBPRZ:1',
        'LOWEST ALIGNED LOGICAL BLOCK ADDRESS:0',
        'Total size:1073741824',
      ].join('\n'),
    );
    expect(cap).to.deep.equal({ lastLba: 2097151, blockLength: 512, lbpme: 1, lbprz: 1, lbppbe: 3, totalBytes: 1073741824 });
  });
});

describe('interop harness: bounded runs', function () {
  it('stops a program at its time limit and says so', async function () {
    this.timeout(20_000);
    const r = await runBounded('sleep', ['30'], { timeoutMs: 1000 });
    expect(r.timedOut).to.equal(true);
    expect(r.exitCode).to.equal(124);
  });

  it('captures output and exit status', async function () {
    const r = await runBounded('sh', ['-c', 'echo out; echo err >&2; exit 3'], { timeoutMs: 10_000 });
    expect(r).to.include({ exitCode: 3, timedOut: false, stdout: 'out\n', stderr: 'err\n' });
  });
});

// A stand-in for iscsi-test-cu: suite Fake has a test that hangs and one that
// crashes, suite Dead cannot log in. Like 1.19, it runs a comma list last-first.
const FAKE_CU = `#!/bin/bash
if [[ $1 == --list ]]; then
  printf 'SCSI\\nSCSI.Fake\\n  SCSI.Fake.A\\n  SCSI.Fake.Hang\\n  SCSI.Fake.B\\n  SCSI.Fake.Crash\\n  SCSI.Fake.C\\nSCSI.Dead\\n  SCSI.Dead.X\\n'
  exit 0
fi
while [[ $1 != -t ]]; do shift; done
sel=$2
[[ $sel == SCSI.Dead* ]] && { echo 'iscsi_connect failed. Failed to log in to target'; exit 10; }
[[ $sel == SCSI.Fake ]] && sel=SCSI.Fake.C,SCSI.Fake.Crash,SCSI.Fake.B,SCSI.Fake.Hang,SCSI.Fake.A
IFS=, read -ra list <<<"$sel"
for (( i = \${#list[@]} - 1; i >= 0; i-- )); do
  t=\${list[$i]##*.}
  echo 'Suite: Fake'
  case $t in
    A) echo '  Test: A ...passed' ;;
    Hang) echo '  Test: Hang ...    waiting for the target'; sleep 60 ;;
    B) printf '  Test: B ...    [FAILED] no\\nFAILED\\n    1. b.c:1  - CU_FAIL\\n' ;;
    Crash) echo '  Test: Crash ...    about to crash'; kill -SEGV $$ ;;
    C) printf '  Test: C ...    [SKIPPED] not here\\npassed\\n' ;;
  esac
done
`;

describe('interop harness: runConformance with a misbehaving iscsi-test-cu', function () {
  let dir = '';
  let savedPath: string | undefined;
  before(function () {
    dir = mkdtempSync(join(tmpdir(), 'tabula-fake-cu-'));
    writeFileSync(join(dir, 'iscsi-test-cu'), FAKE_CU, { mode: 0o755 });
    savedPath = process.env.PATH;
    process.env.PATH = `${dir}:${savedPath ?? ''}`;
  });
  after(function () {
    process.env.PATH = savedPath;
    rmSync(dir, { recursive: true, force: true });
  });

  it('records hung and crashed tests, resumes the rest of the suite, and reports a suite that cannot run', async function () {
    this.timeout(60_000);
    const run = await runConformance({
      url: 'iscsi://127.0.0.1:3260/iqn.2026-11.org.tabula:fake/0',
      outDir: join(dir, 'out'),
      tests: ['SCSI'],
      suiteTimeoutMs: 2000,
      totalTimeoutMs: 50_000,
    });
    expect(run.results.map((r) => `${r.suite}.${r.test}=${r.status}`)).to.deep.equal([
      'Fake.A=passed',
      'Fake.Hang=hung',
      'Fake.B=failed',
      'Fake.Crash=crashed',
      'Fake.C=skipped',
      'Dead.X=notrun',
    ]);
    expect(run.runs).to.equal(4);
    const note = (t: string): string => run.results.find((r) => r.test === t)?.note ?? '';
    expect(note('Hang')).to.match(/^no result after 2 s; last output: waiting for the target$/);
    expect(note('Crash')).to.match(/SIGSEGV|exit 139/);
    expect(note('X')).to.match(/^error: .*exit 10.*Failed to log in/);
    expect(readdirSync(join(dir, 'out', 'logs')).sort()).to.deep.equal(['SCSI.Dead.log', 'SCSI.Fake.2.log', 'SCSI.Fake.3.log', 'SCSI.Fake.log']);
    const tsv = readFileSync(join(dir, 'out', 'results.tsv'), 'utf8').split('\n');
    expect(tsv[0]).to.equal('family\tsuite\ttest\tstatus\tnote');
    expect(tsv[1]).to.equal('SCSI\tFake\tA\tpassed\t');
    expect(run.summary).to.match(/^TOTAL\s+5\s+1\s+1\s+1\s+1\s+1\s+1$/m);
  });
});
