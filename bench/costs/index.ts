// The table-driven costs of issue 5, in `npm run bench` after the qemu-img
// matrix (or alone with --costs-only): thin first-write fault round trip,
// table load time and memory in an agent, and delta fan-out to 16 agents.
import { measureFanout, type FanoutResult } from './fanout.js';
import { measureFaultLatency, type FaultLatencyResult } from './fault-latency.js';
import { DEFAULT_LOAD_CASES, measureTableLoad, type TableLoadResult } from './table-load.js';
import type { ShapeKind } from './table-wire.js';

export type CostPart = 'fault' | 'load' | 'fanout';
export const COST_PARTS: CostPart[] = ['fault', 'load', 'fanout'];

export interface CostsOptions {
  parts: CostPart[];
  dir: string;
  /** Zero segments written once each (default 500). */
  faultSegments: number;
  fanoutAgents: number;
  fanoutChanges: number;
  /** KIND:SEGMENTS list (default DEFAULT_LOAD_CASES). */
  loadCases?: { kind: ShapeKind; segments: number }[];
  log: (m: string) => void;
}

export interface CostsReport {
  targets: { faultMedianMs: number; faultP99Ms: number; load1TiBMs: number; bytesPerSegment: number; fanoutMedianMs: number };
  fault?: FaultLatencyResult;
  load?: TableLoadResult[];
  fanout?: FanoutResult;
  errors: string[];
}

export function parseLoadCases(s: string): { kind: ShapeKind; segments: number }[] {
  return s.split(',').filter(Boolean).map((c) => {
    const [kind, segs] = c.split(':');
    if (kind !== 'thick' && kind !== 'aged' && kind !== 'fragmented') throw new Error(`load case '${c}': kind is thick, aged or fragmented`);
    const m = /^(\d+)([KM]?)$/.exec(segs ?? '');
    if (!m) throw new Error(`load case '${c}': segments as N, NK or NM (e.g. aged:1M)`);
    return { kind, segments: Number(m[1]) * (m[2] === 'M' ? 1 << 20 : m[2] === 'K' ? 1024 : 1) };
  });
}

export async function runCosts(o: CostsOptions): Promise<CostsReport> {
  const report: CostsReport = {
    targets: { faultMedianMs: 1, faultP99Ms: 5, load1TiBMs: 1000, bytesPerSegment: 16, fanoutMedianMs: 10 },
    errors: [],
  };
  const attempt = async (what: string, fn: () => Promise<void>): Promise<void> => {
    try {
      await fn();
    } catch (e) {
      const msg = `${what}: ${(e as Error).message}`;
      report.errors.push(msg);
      o.log(`bench: ${msg}`);
    }
  };
  if (o.parts.includes('fault')) {
    await attempt('fault latency', async () => {
      // 500 first writes of warm-up: V8 optimises the fault path after a few
      // hundred; the cold ones are reported apart (warmupFirstWrite).
      report.fault = await measureFaultLatency({ segments: o.faultSegments, warmup: 500, log: o.log });
    });
  }
  if (o.parts.includes('load')) {
    await attempt('table load', async () => {
      report.load = await measureTableLoad({ dir: o.dir, cases: o.loadCases ?? DEFAULT_LOAD_CASES, timeoutMs: 180_000, log: o.log });
    });
  }
  if (o.parts.includes('fanout')) {
    await attempt('delta fan-out', async () => {
      report.fanout = await measureFanout({ agents: o.fanoutAgents, changes: o.fanoutChanges, warmup: 20, log: o.log });
    });
  }
  return report;
}

const f = (x: number | undefined, d = 2): string => (x === undefined || Number.isNaN(x) ? '-' : x.toFixed(d));
const verdict = (ok: boolean | undefined): string => (ok === undefined ? '' : ok ? 'met' : 'MISSED');

/** Reads on the other LUN stalled: worst READ during the load over 100 ms and over twice the idle worst. */
export function blocked(l: TableLoadResult): boolean {
  return (l.readMaxMs ?? 0) > Math.max(100, 2 * (l.idleReadMaxMs ?? 0));
}

/** The costs as a text table: measure, value, target, verdict. */
export function formatCosts(r: CostsReport): string {
  const rows: string[][] = [];
  const t = r.targets;
  if (r.fault) {
    const { firstWrite: fw, allocatedWrite: aw } = r.fault;
    rows.push(['thin first write (fault round trip), median', `${f(fw.medianMs, 3)} ms`, `< ${t.faultMedianMs} ms`, verdict(fw.medianMs < t.faultMedianMs)]);
    rows.push(['thin first write (fault round trip), p99', `${f(fw.p99Ms, 3)} ms`, `< ${t.faultP99Ms} ms`, verdict(fw.p99Ms < t.faultP99Ms)]);
    rows.push(['write to an allocated segment, median / p99', `${f(aw.medianMs, 3)} / ${f(aw.p99Ms, 3)} ms`, '', '']);
    rows.push(['fault cost (difference), median / p99', `${f(r.fault.faultMedianMs, 3)} / ${f(r.fault.faultP99Ms, 3)} ms`, '', '']);
    const cold = r.fault.warmupFirstWrite;
    if (cold) rows.push([`  first writes during warm-up (${cold.count}, cold code), median / p99`, `${f(cold.medianMs, 3)} / ${f(cold.p99Ms, 3)} ms`, '', '']);
  }
  for (const l of r.load ?? []) {
    const tib1 = l.segments === 1 << 20;
    if (!l.ok) {
      rows.push([`table load ${l.table} (${l.extents} extents, ${f(l.messageBytes / 1e6, 1)} MB)`, `failed: ${l.error ?? ''}`.slice(0, 90), tib1 ? `< ${t.load1TiBMs} ms` : 'loads', 'MISSED']);
      continue;
    }
    rows.push([`table load ${l.table} (${l.extents} extents, ${f(l.messageBytes / 1e6, 1)} MB)`, `${f(l.loadMs, 0)} ms (decode ${f(l.decodeMs, 0)})`, tib1 ? `< ${t.load1TiBMs} ms` : '', tib1 ? verdict((l.loadMs ?? Infinity) < t.load1TiBMs) : '']);
    rows.push([`  agent memory per segment (peak RSS)`, `${f(l.bytesPerSegment)} B (${f(l.peakRssBytesPerSegment, 1)} B)`, `<= ${t.bytesPerSegment} B`, verdict((l.bytesPerSegment ?? Infinity) <= t.bytesPerSegment)]);
    rows.push([`  READ on another LUN during the load: max (idle max)`, `${f(l.readMaxMs, 1)} ms (${f(l.idleReadMaxMs, 1)} ms), ${l.reads ?? 0} reads`, 'not blocked', verdict(!blocked(l))]);
  }
  if (r.fanout) {
    const c = r.fanout.commitToLastAck;
    rows.push([`delta to ${r.fanout.agents} agents, commit -> last ack, median`, `${f(c.medianMs)} ms`, `< ${t.fanoutMedianMs} ms`, verdict(c.medianMs < t.fanoutMedianMs)]);
    rows.push([`  p99 / max (${r.fanout.changes} changes)`, `${f(c.p99Ms)} / ${f(c.maxMs)} ms`, '', '']);
    rows.push([`  of which commit + send, median`, `${f(r.fanout.commitAndSend.medianMs)} ms`, '', '']);
    if (r.fanout.agentCpuMsPerChange !== undefined) rows.push([`  agents' CPU per change (all ${r.fanout.agents})`, `${f(r.fanout.agentCpuMsPerChange)} ms`, '', '']);
  }
  for (const e of r.errors) rows.push([`error`, e.slice(0, 100), '', '']);
  const head = ['table-driven cost', 'measured', 'target', ''];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cols: string[]): string => cols.map((v, i) => v.padEnd(w[i]!)).join('  ').trimEnd();
  return [line(head), ...rows.map(line)].join('\n');
}
