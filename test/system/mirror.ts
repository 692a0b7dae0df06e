// Fixtures of the mirrored-vdisk tests on the storage-network topology:
// mirror-io.ts run on a host (writer, reader, verifier) and the legs of a
// vdisk's table as the controller prints them.
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exited, fileTail, sleep, terminate, waitExit } from '../support/process.js';
import type { MirrorIoSummary } from './mirror-io.js';
import type { Host, StorageNetwork } from './storage-network.js';
import type { JsonTable } from './table.js';

const MIRROR_IO = fileURLToPath(new URL('./mirror-io.ts', import.meta.url));
let runs = 0;

/** One mirror-io.ts process on a host. */
export class MirrorIo {
  #out = '';

  constructor(
    readonly label: string,
    readonly child: ChildProcess,
    readonly logFile: string,
  ) {
    child.stdout?.on('data', (c: Buffer) => (this.#out += c.toString()));
  }

  /** I/Os completed so far (as last reported, once a second). */
  get ios(): number {
    const all = [...this.#out.matchAll(/^ios (\d+)$/gm)];
    return all.length === 0 ? 0 : Number(all[all.length - 1]?.[1]);
  }

  async waitIos(n: number, ms = 90_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (this.ios < n) {
      if (exited(this.child)) throw new Error(`${this.label} exited: ${this.#out.slice(-500)}\n${fileTail(this.logFile)}`);
      if (Date.now() > deadline) throw new Error(`${this.label}: ${this.ios} I/Os, not ${n}, within ${ms} ms\n${fileTail(this.logFile)}`);
      await sleep(200);
    }
  }

  /** Its summary once it ends by itself (verify), within `ms`. */
  async done(ms = 180_000): Promise<MirrorIoSummary> {
    if (!(await waitExit(this.child, ms))) {
      await terminate(this.child, 1000);
      throw new Error(`${this.label} did not end within ${ms} ms\n${fileTail(this.logFile)}`);
    }
    const line = this.#out.trim().split('\n').at(-1) ?? '';
    if (!line.startsWith('{')) throw new Error(`${this.label} ended without a summary: ${this.#out.slice(-500)}\n${fileTail(this.logFile)}`);
    return JSON.parse(line) as MirrorIoSummary;
  }

  /** SIGTERM: it finishes what is in flight and prints its summary. */
  async stop(ms = 180_000): Promise<MirrorIoSummary> {
    if (!exited(this.child)) this.child.kill('SIGTERM');
    return this.done(ms);
  }
}

/** Block ranges `first-end` (4 KiB blocks) joined by commas, as mirror-io.ts takes them. */
export type Ranges = string;

/** The 4 KiB block ranges of segments `segs` (segment size `segmentBytes`), adjacent ones merged. */
export function segmentRanges(segs: readonly number[], segmentBytes: number): Ranges {
  const per = segmentBytes / 4096;
  const sorted = [...new Set(segs)].sort((a, b) => a - b);
  const out: [number, number][] = [];
  for (const s of sorted) {
    const last = out.at(-1);
    if (last !== undefined && last[1] === s * per) last[1] = (s + 1) * per;
    else out.push([s * per, (s + 1) * per]);
  }
  return out.map(([a, b]) => `${a}-${b}`).join(',');
}

/**
 * Starts mirror-io.ts on `host` against a vdisk's LUN 0 on the agent of
 * `via` (default: the host's own). `args` follow the mode: see mirror-io.ts.
 */
export function startMirrorIo(n: StorageNetwork, host: Host, mode: 'write' | 'read' | 'verify', vdisk: string, sizeBytes: number, args: readonly string[], via?: Host): MirrorIo {
  const log = join(n.dir, host, `mirror-io.${mode}.${++runs}.log`);
  const fd = openSync(log, 'a');
  try {
    const argv = [process.execPath, '--import', 'tsx', MIRROR_IO, mode, n.agentPortal(via ?? host), `iqn.2026-11.org.tabula:${vdisk}`, String(sizeBytes), ...args];
    return new MirrorIo(`${mode} on ${host}`, n.t.spawn(host, argv, 11 * 60_000, ['ignore', 'pipe', fd]), log);
  } finally {
    closeSync(fd);
  }
}

/** A table extent with the extra legs of a mirrored vdisk (issue 16: ExtentLeg, offsets advance with the run). */
interface LeggedExtent {
  first: number;
  count: number;
  state: number;
  container: string;
  offset: number;
  /** As the admin API prints them: a list, or (the wire's form) `{ list }`. */
  legs?: LegJson[] | { list?: LegJson[] } | null;
}

interface LegJson {
  container: string;
  offset: number;
}

function legList(e: LeggedExtent): LegJson[] {
  if (e.legs === undefined || e.legs === null) return [];
  return Array.isArray(e.legs) ? e.legs : (e.legs.list ?? []);
}

/** Per segment, the containers of its legs, leg 0 first ([] when unallocated). */
export function legsBySegment(t: JsonTable): string[][] {
  const out: string[][] = [];
  for (const e of t.extents as LeggedExtent[]) {
    if (e.first !== out.length) throw new Error(`table of ${t.vdiskId}: extent at ${e.first}, expected ${out.length}`);
    const legs = e.container === '' ? [] : [e.container, ...legList(e).map((l) => l.container)];
    for (let i = 0; i < e.count; i++) out.push(legs);
  }
  if (out.length !== t.segmentCount) throw new Error(`table of ${t.vdiskId}: ${out.length} segments, expected ${t.segmentCount}`);
  return out;
}

/** The sum of a counter's samples (every label set) in Prometheus text. */
export function counterTotal(metrics: string, name: string): number {
  let sum = 0;
  for (const m of metrics.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))) sum += Number(m[1]);
  return sum;
}
