// Run libiscsi's conformance suite by hand against any loopback LUN and print
// the summary table:
//   npx tsx test/interop/conformance-cli.ts URL OUTDIR [MPATH_URL]
// Knobs (environment): TESTS=SCSI,iSCSI  EXCLUDE=glob,...  SUITE_TIMEOUT=120
// TOTAL_TIMEOUT=900 (seconds)  DATALOSS=1  SANITIZE=1
// Exit status: 0 = no failed/hung/crashed/unrunnable tests, 1 = some, 2 = usage.
import { runConformance, badResults } from '../support/iscsi-test-cu.js';

function list(v: string | undefined): string[] | undefined {
  if (v === undefined || v.trim() === '') return undefined;
  return v.split(',').map((s) => s.trim()).filter((s) => s !== '');
}

function seconds(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt * 1000;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name}=${v}: expected a number of seconds`);
  return n * 1000;
}

async function main(argv: string[]): Promise<number> {
  if (argv.length < 2 || argv[0] === '-h' || argv[0] === '--help') {
    process.stderr.write('usage: conformance-cli URL OUTDIR [MPATH_URL]\n  URL = iscsi://127.0.0.1:PORT/IQN/LUN\n');
    return 2;
  }
  const [url, outDir, mpathUrl] = argv as [string, string, string | undefined];
  const run = await runConformance({
    url,
    outDir,
    mpathUrl,
    tests: list(process.env.TESTS),
    exclude: list(process.env.EXCLUDE),
    suiteTimeoutMs: seconds('SUITE_TIMEOUT', 120),
    totalTimeoutMs: seconds('TOTAL_TIMEOUT', 900),
    dataloss: process.env.DATALOSS !== '0',
    sanitize: process.env.SANITIZE !== '0',
    onProgress: (line) => process.stderr.write(line + '\n'),
  });
  process.stdout.write(run.summary);
  process.stdout.write(`\nresults: ${outDir}/results.tsv, logs: ${outDir}/logs/\n`);
  return badResults(run.results).length === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`conformance-cli: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(2);
  },
);
