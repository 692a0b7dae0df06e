// Reading mapping tables, faults and space from the controller, with segment
// states numbered as in proto/tabula.proto (written out here rather than
// imported, so the tests check the wire values). These poll the admin API
// (what `tabula ... --json` prints); each test file also checks the CLI's own
// output where an operator would look.
import type { Cluster } from './cluster.js';

export const STATE = { normal: 0, zero: 1, noWrite: 2, invalid: 3, error: 4 } as const;

export interface JsonExtent {
  first: number;
  count: number;
  state: number;
  container: string;
  offset: number;
}

export interface JsonTable {
  vdiskId: string;
  version: number;
  segmentCount: number;
  segmentSize: number;
  blockSize: number;
  extents: JsonExtent[];
}

export interface JsonFault {
  id: number;
  agent: string;
  vdiskName: string;
  segment: number;
  op: string;
  lba: number;
  blocks: number;
  state: string;
  tableVersion: number;
  outcome: string;
  detail: string;
}

export interface SegmentEntry {
  state: number;
  container: string;
  offset: number;
}

/** What `tabula vdisk table NAME --json` prints. */
export async function table(c: Cluster, vdisk: string): Promise<JsonTable> {
  return (await c.admin.call('GetTable', { name: vdisk, fullIds: true })) as JsonTable;
}

/** One entry per segment, from the extents (which must cover the table exactly, in order). */
export function segments(t: JsonTable): SegmentEntry[] {
  const out: SegmentEntry[] = [];
  for (const e of t.extents) {
    if (e.first !== out.length) throw new Error(`table of ${t.vdiskId}: extent at ${e.first}, expected ${out.length}`);
    for (let i = 0; i < e.count; i++) {
      const located = e.container !== '';
      out.push({ state: e.state, container: e.container, offset: located ? e.offset + i : 0 });
    }
  }
  if (out.length !== t.segmentCount) throw new Error(`table of ${t.vdiskId}: extents cover ${out.length} of ${t.segmentCount} segments`);
  return out;
}

/** What `tabula fault ls --vdisk NAME --json` prints, newest first. */
export async function faults(c: Cluster, vdisk: string): Promise<JsonFault[]> {
  return (await c.admin.call('ListFaults', { vdisk, limit: 10_000 })).faults as JsonFault[];
}

/** `tabula check`: the exit status and its output. */
export async function check(c: Cluster): Promise<{ ok: boolean; text: string }> {
  const r = await c.cli(['check']);
  return { ok: r.exitCode === 0, text: `${r.stdout}${r.stderr}`.trim() };
}

/** Container segments in use, summed over all containers (as `tabula container ls` counts them). */
export async function containerSegmentsUsed(c: Cluster): Promise<number> {
  const list = (await c.admin.call('ListContainers', {})).containers;
  return list.reduce((n, x) => n + x.segmentsUsed, 0);
}

/** Segments per state name in the text of `tabula vdisk table` (`FIRST-LAST STATE [c=.. off=..]` lines). */
export function countTextStates(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^(\d+)-(\d+) (\S+)/.exec(line);
    if (!m) continue;
    const n = Number(m[2]) - Number(m[1]) + 1;
    out[m[3] as string] = (out[m[3] as string] ?? 0) + n;
  }
  return out;
}
