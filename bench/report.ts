// The bench report: one row per (case, target), as a text table and as JSON.
import type { CostsReport } from './costs/index.js';

export interface CellResult {
  case: string;
  target: string;
  blockSize: number;
  depth: number;
  write: boolean;
  /** I/Os per run. */
  count: number;
  /** Successful runs (the median is over these). */
  runs: number;
  /** Wall time of every successful run, in order. */
  seconds: number[];
  iops?: number;
  /** 10^6 bytes per second. */
  mbps?: number;
  /** Median over runs of the target process's user+system CPU time, per I/O (for the vdisk rows of network-lun.ts: the agent's). */
  cpuUsPerIo?: number;
  /** The storage node's CPU time per I/O, for a vdisk on a network LUN. */
  storageCpuUsPerIo?: number;
  /** A network-LUN row's IOPS over the same vdisk on a local file (vdisk-file). */
  vsFile?: number;
  /** A network-LUN row's agent CPU per I/O over vdisk-file's. */
  cpuVsFile?: number;
  /** A mirrored-vdisk row's IOPS over the 1-copy vdisk of the same set-up (vdisk-1copy, bench/mirror.ts). */
  vs1Copy?: number;
  /** A mirrored-vdisk row's agent CPU per I/O over vdisk-1copy's. */
  cpuVs1Copy?: number;
  vsTgtd?: number;
  vsRaw?: number;
  /** How busy the whole machine was during the runs (median), to spot interference. */
  machineBusyPct?: number;
}

export interface Report {
  date: string;
  label: string;
  durationSec: number;
  machine: {
    cpuModel: string;
    cpus: number;
    memGiB: number;
    kernel: string;
    node: string;
    qemuImg: string;
    tgtd: string;
    loadavgAtStart: number[];
    loadavgAtEnd: number[];
  };
  options: Record<string, unknown>;
  cells: CellResult[];
  /** Table-driven costs (bench/costs), when they ran. */
  costs?: CostsReport;
}

export function median(xs: number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1]! + s[m]!) / 2;
}

/** The q-quantile (0..1) by the nearest-rank method; undefined for no samples. */
export function percentile(xs: readonly number[], q: number): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

const fmt = (x: number | undefined, digits: number): string => (x === undefined ? '-' : x.toFixed(digits));

export function formatTable(r: Report): string {
  // The storage-network columns only when those rows ran.
  const lun = r.cells.some((c) => c.target.startsWith('vdisk-lun-'));
  // The mirror columns only when a mirrored row was compared.
  const mirror = r.cells.some((c) => c.vs1Copy !== undefined);
  const head = [
    'case',
    'target',
    'IOPS',
    'MB/s',
    'x tgtd',
    'x raw',
    'CPU us/IO',
    ...(lun ? ['x file', 'CPU x file', 'storage CPU us/IO'] : []),
    ...(mirror ? ['x 1copy', 'CPU x 1copy'] : []),
    'runs',
  ];
  const rows = r.cells.map((c) => [
    c.case,
    c.target,
    fmt(c.iops, 0),
    fmt(c.mbps, 1),
    c.target === 'tgtd' ? '' : fmt(c.vsTgtd, 2),
    c.target === 'raw' ? '' : fmt(c.vsRaw, 2),
    fmt(c.cpuUsPerIo, 1),
    ...(lun ? (c.target.startsWith('vdisk-lun-') ? [fmt(c.vsFile, 2), fmt(c.cpuVsFile, 2), fmt(c.storageCpuUsPerIo, 1)] : ['', '', '']) : []),
    ...(mirror ? (c.vs1Copy !== undefined || c.cpuVs1Copy !== undefined ? [fmt(c.vs1Copy, 2), fmt(c.cpuVs1Copy, 2)] : ['', '']) : []),
    String(c.runs),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cols: string[]): string => cols.map((v, i) => (i < 2 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join('  ');
  const m = r.machine;
  return [
    `${r.date}  ${m.cpus} x ${m.cpuModel}, ${m.memGiB} GiB, Linux ${m.kernel}, node ${m.node}, ${m.tgtd ? `tgtd ${m.tgtd}` : ''}`,
    `load average ${m.loadavgAtStart.join(' ')} -> ${m.loadavgAtEnd.join(' ')}; ${String(r.options.reps)} rep(s), medians${r.label ? `; ${r.label}` : ''}`,
    line(head),
    ...rows.map(line),
  ].join('\n');
}
