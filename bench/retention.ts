// The fault log's cost on the fault path, with and without retention
// (issue 19): 65,536 first-write faults (a 64 GiB thin vdisk filled at
// 1 MiB segments) written as the controller writes them (insert and
// outcome through the write-behind, 64 faults a turn), once with no
// pruning and once with Retention pruning in the background at its
// default bounds. Prints the write-behind flush time per turn (median,
// p99, max), the duration of each prune batch (what a fault could wait
// behind), the rows kept and the database size. In-process, no build:
//   npx tsx bench/retention.ts
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ControllerDb } from '../src/controller/db.js';
import { Retention } from '../src/controller/retention.js';
import { WriteBehind } from '../src/controller/write-behind.js';
import { median, percentile } from './report.js';

const TOTAL = 65_536;
const PER_TURN = 64;

interface Run {
  flushMs: number[];
  pruneMs: number[];
  rows: number;
  fileBytes: number;
  totalMs: number;
}

async function run(withRetention: boolean): Promise<Run> {
  const dir = mkdtempSync(join(tmpdir(), 'tabula-bench-retention-'));
  const db = new ControllerDb(join(dir, 'c.db'));
  try {
    const wb = new WriteBehind(db);
    const pruneMs: number[] = [];
    if (withRetention) {
      // Times every batch: the longest a fault's bookkeeping could wait behind one.
      const prune = db.pruneLog.bind(db);
      db.pruneLog = (...args: Parameters<ControllerDb['pruneLog']>): number => {
        const t0 = performance.now();
        const n = prune(...args);
        if (n > 0) pruneMs.push(performance.now() - t0);
        return n;
      };
    }
    const r = withRetention ? new Retention(db, { intervalMs: 100 }) : null;
    r?.start();
    const flushMs: number[] = [];
    const t0 = performance.now();
    for (let seg = 0; seg < TOTAL; seg++) {
      const rec = { id: 0 };
      wb.add(() => {
        rec.id = db.insertFault({ agent: 'a1', vdiskId: '5e1f3c2a-7d44-4b1e-9a0c-3f6e2d1b8c01', segment: seg, op: 'write', lba: seg * 2048, blocks: 8, state: 'zero', tableVersion: seg + 1, detail: '' });
      });
      wb.add(() => db.setFaultOutcome(rec.id, 'retry'));
      if (seg % PER_TURN === PER_TURN - 1) {
        const f0 = performance.now();
        wb.flush();
        flushMs.push(performance.now() - f0);
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    }
    wb.flush();
    const totalMs = performance.now() - t0;
    await r?.prune();
    r?.stop();
    db.sql.pragma('wal_checkpoint(TRUNCATE)');
    return { flushMs, pruneMs, rows: db.logRows('faults'), fileBytes: statSync(db.path).size, totalMs };
  } finally {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const ms = (xs: number[]): string =>
  xs.length === 0 ? '-' : `median ${(median(xs) ?? 0).toFixed(3)} ms, p99 ${(percentile(xs, 0.99) ?? 0).toFixed(3)} ms, max ${Math.max(...xs).toFixed(3)} ms (${xs.length})`;

for (const withRetention of [false, true, false, true]) {
  const r = await run(withRetention);
  process.stdout.write(
    `${withRetention ? 'retention on ' : 'retention off'}: ${TOTAL} faults in ${(r.totalMs / 1000).toFixed(2)} s (${((r.totalMs * 1000) / TOTAL).toFixed(1)} µs each); ` +
      `write-behind flush per ${PER_TURN} faults ${ms(r.flushMs)}; prune batches ${ms(r.pruneMs)}; ${r.rows} rows, file ${(r.fileBytes / 2 ** 20).toFixed(2)} MiB\n`,
  );
}
