// Thin first-write latency (issue 5): the fault round trip agent ->
// controller -> commit -> push -> ack -> retry, with a real controller
// process and a real agent process on loopback. One 4 KiB WRITE into each
// of N zero segments of a thin vdisk, one at a time, from a raw iSCSI
// client; then the same WRITEs again, now to allocated segments. The
// difference of the two is the fault's cost.
import { Cluster, iqnOf } from '../../test/system/cluster.js';
import { GOOD, LunSession, describeIo } from '../../test/system/scsi-client.js';
import { onCleanup } from '../proc.js';
import { median, percentile } from '../report.js';

export interface LatencyStats {
  count: number;
  medianMs: number;
  p99Ms: number;
  maxMs: number;
}

export interface FaultLatencyResult {
  /** First writes: each faults (zero segment) and is retried after the new table is acked. */
  firstWrite: LatencyStats;
  /** First writes during the warm-up (code not yet optimised by V8). */
  warmupFirstWrite?: LatencyStats;
  /** The same writes to the now allocated segments. */
  allocatedWrite: LatencyStats;
  /** firstWrite minus allocatedWrite, median and p99: the fault round trip. */
  faultMedianMs: number;
  faultP99Ms: number;
}

const SEG_BLOCKS = 2048; // 1 MiB segments of 512-byte blocks

export function stats(ms: number[]): LatencyStats {
  return { count: ms.length, medianMs: median(ms) ?? NaN, p99Ms: percentile(ms, 0.99) ?? NaN, maxMs: ms.length ? Math.max(...ms) : NaN };
}

export async function measureFaultLatency(opts: { segments: number; warmup: number; log: (m: string) => void }): Promise<FaultLatencyResult> {
  const total = opts.segments + opts.warmup;
  const c = await Cluster.create('bench-fault');
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await c.close(false);
  };
  onCleanup(close);
  try {
    await c.serveVdisk({ vdisk: 'thin', size: `${total}MiB`, containerSize: `${total + 64}MiB`, agents: { a: {} } });
    const s = await LunSession.open(c.agent('a').portal, iqnOf('thin'), 512);
    const data = Buffer.alloc(4096, 0xa5);
    const cold: number[] = [];
    const run = async (): Promise<number[]> => {
      const out: number[] = [];
      for (let seg = 0; seg < total; seg++) {
        const t0 = process.hrtime.bigint();
        const r = await s.write(seg * SEG_BLOCKS, data, 30_000);
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        if (r.status !== GOOD) throw new Error(`WRITE to segment ${seg}: ${describeIo(r)}`);
        if (seg >= opts.warmup) out.push(ms);
        else if (cold.length < opts.warmup) cold.push(ms);
      }
      return out;
    };
    opts.log(`bench: fault latency: ${opts.segments} first writes (after ${opts.warmup} for warm-up), then the same again`);
    const first = await run();
    const again = await run();
    s.close();
    const f = stats(first);
    const a = stats(again);
    const result = { firstWrite: f, warmupFirstWrite: stats(cold), allocatedWrite: a, faultMedianMs: f.medianMs - a.medianMs, faultP99Ms: f.p99Ms - a.p99Ms };
    opts.log(
      `bench: fault latency: first write median ${f.medianMs.toFixed(3)} ms p99 ${f.p99Ms.toFixed(3)} ms; ` +
        `allocated median ${a.medianMs.toFixed(3)} ms p99 ${a.p99Ms.toFixed(3)} ms`,
    );
    return result;
  } finally {
    await close();
  }
}
