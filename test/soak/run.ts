// `npm run soak -- --minutes N [--seed S] [--keep] [--out FILE]`: the soak
// test of soak.ts, on demand (not part of `npm test`). Prints progress on
// stderr and the report on stdout (JSON to --out too); exits 0 when every
// block read back holds an allowed content and `tabula check` is clean, 1
// otherwise, 2 on bad arguments. See docs/soak.md.
import { writeFileSync } from 'node:fs';
import { Soak, type SoakReport } from './soak.js';

function usage(msg: string): never {
  process.stderr.write(`soak: ${msg}\nusage: npm run soak -- --minutes N [--seed S] [--keep] [--out FILE]\n`);
  process.exit(2);
}

function parse(argv: readonly string[]): { minutes: number; seed: number; keep: boolean; out?: string } {
  const o: { minutes: number; seed: number; keep: boolean; out?: string } = { minutes: 2, seed: Date.now() % 2 ** 31, keep: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) usage(`${a} needs a value`);
      return v;
    };
    if (a === '--minutes') o.minutes = Number(val());
    else if (a === '--seed') o.seed = Number(val());
    else if (a === '--keep') o.keep = true;
    else if (a === '--out') o.out = val();
    else usage(`unknown argument ${a}`);
  }
  if (!(o.minutes >= 1 && o.minutes <= 24 * 60)) usage('--minutes: expected 1 to 1440');
  if (!Number.isInteger(o.seed)) usage('--seed: expected an integer');
  return o;
}

const mib = (kib: number): string => (kib / 1024).toFixed(1);

export function formatReport(r: SoakReport): string {
  const out: string[] = [];
  out.push(`soak: ${r.minutes} min, seed ${r.seed}, warm-up ${r.warmupS} s: ${r.passed ? 'PASSED' : 'FAILED'}`);
  for (const f of r.failures) out.push(`  failure: ${f}`);
  out.push('', 'RSS (MiB)      start  warm-up    end  end/warm  after-verify  starts  warm-up sample at');
  for (const [d, x] of Object.entries(r.rss)) {
    const ratio = x.warm > 0 ? ((100 * x.end) / x.warm).toFixed(0) + '%' : '-';
    out.push(`  ${d.padEnd(12)} ${mib(x.start).padStart(6)} ${mib(x.warm).padStart(8)} ${mib(x.end).padStart(6)} ${ratio.padStart(9)} ${mib(x.final).padStart(13)} ${String(x.starts).padStart(7)}  ${x.warmAtS} s${x.withinTenPercent ? '' : '  (NOT within 10%)'}`);
  }
  out.push('  (start: first sample after set-up; warm-up and end: the last start of the daemon, a warm-up after it and the last sample under load)');
  out.push('', `database: ${(r.dbBytes / 2 ** 20).toFixed(1)} MiB (with WAL); fault rows kept ${r.faultRows} of ${r.faultsRecorded} recorded; event rows ${r.eventRows}`);
  out.push('', 'minute  writer-W MiB/s  writer-R MiB/s  bench MiB/s  bench runs (failed)  failed I/O  RSS ctl/a/b MiB  db MiB  fault rows  kills');
  out.push(`  (I/O summed per minute of the run, shown per second; the last row is the stop and the final verification)`);
  for (const m of r.perMinute) {
    const rss = ['controller', 'agent-a', 'agent-b'].map((d) => mib(m.rssKiB[d as keyof typeof m.rssKiB] ?? 0)).join('/');
    out.push(
      `  ${String(m.minute).padStart(4)} ${(m.writerWriteMiB / 60).toFixed(2).padStart(15)} ${(m.writerReadMiB / 60).toFixed(2).padStart(15)} ${(m.benchMiB / 60).toFixed(2).padStart(12)} ${`${m.benchRuns} (${m.benchFailed})`.padStart(20)} ${String(m.failedIo).padStart(11)}  ${rss.padStart(16)} ${(m.dbBytes / 2 ** 20).toFixed(1).padStart(7)} ${String(m.faultRows).padStart(11)}  ${m.events.filter((e) => e.startsWith('SIGKILL')).map((e) => e.split(' ')[1]?.replace(',', '')).join(' ')}`,
    );
  }
  out.push('', `kills: ${r.kills.length === 0 ? 'none' : r.kills.join('; ')}`);
  out.push(`operations: ${Object.entries(r.ops).map(([k, n]) => `${k} ${n}`).join(', ') || 'none'}`);
  if (r.opFailures.length > 0) out.push(`operations that failed (retried for 3 min): ${r.opFailures.join('; ')}`);
  out.push(`I/O that did not end GOOD (its blocks may hold the old or the new content):${Object.keys(r.statuses).length === 0 ? ' none' : ''}`);
  for (const [k, n] of Object.entries(r.statuses).sort((x, y) => y[1] - x[1])) out.push(`  ${String(n).padStart(6)}  ${k}`);
  out.push('', 'verified:', ...r.verified.map((v) => `  ${v}`));
  out.push('', `mismatches: ${r.mismatchCount}`);
  for (const m of r.mismatches.slice(0, 20)) out.push(`  ${m.vdisk} offset ${m.offset}: found ${m.found}; allowed ${m.allowed}`);
  out.push(`check: ${r.check.ok ? 'clean' : 'NOT clean'}: ${r.check.text}`);
  return out.join('\n');
}

async function main(): Promise<number> {
  const o = parse(process.argv.slice(2));
  const soak = await Soak.create({ minutes: o.minutes, seed: o.seed, keep: o.keep });
  let failed = true;
  const onSignal = (sig: NodeJS.Signals): void => {
    process.stderr.write(`soak: ${sig}: stopping\n`);
    void soak.close(true).finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  // Every wait of the soak is bounded; this bounds their sum, so the soak always ends by itself.
  const watchdog = setTimeout(() => {
    process.stderr.write(`soak: still running ${o.minutes + 25} minutes after the start: giving up\n`);
    void soak.close(true).finally(() => process.exit(1));
  }, (o.minutes + 25) * 60_000);
  watchdog.unref();
  try {
    await soak.setup();
    const report = await soak.run();
    failed = !report.passed;
    if (o.out !== undefined) writeFileSync(o.out, JSON.stringify(report, null, 2) + '\n');
    process.stdout.write(formatReport(report) + '\n');
  } catch (err) {
    process.stderr.write(`soak: ${(err as Error).stack ?? String(err)}\n`);
  } finally {
    await soak.close(failed);
  }
  return failed ? 1 : 0;
}

process.exit(await main());
