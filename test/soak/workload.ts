// The I/O of the soak on one vdisk: the soak's own writer on the first half
// (sequence-numbered, checksummed blocks written and read back through raw
// iSCSI sessions to every agent exporting it, each read checked against the
// model), and qemu-img bench runs (reads and pattern writes, random sizes,
// depths and strides) on the second half. Every write is an Op the model
// learns the outcome of: acknowledged GOOD, or maybe (anything else).
import { describeRun, runBounded } from '../support/bounded-run.js';
import { sleep } from '../support/process.js';
import { GOOD, LunSession, describeIo } from '../system/scsi-client.js';
import { UNIT, fillBlocks, fillContent, writerContent, type Content, type Mismatch, type VdiskModel } from './model.js';

/** A write in flight: unit ranges [first, first + count) of one content. */
export interface Op {
  ranges: Array<[number, number]>;
  content: Content;
}

/** A vdisk, snapshot or clone the soak knows, with the model of its contents. */
export interface Live {
  name: string;
  tag: number;
  model: VdiskModel;
  blockSize: number;
  kind: 'vdisk' | 'snapshot' | 'clone';
  thin: boolean;
  /** Agents exporting it. */
  agents: string[];
  /** Writes in flight now. */
  readonly inflight: Set<Op>;
  /** Open snapshot windows: each collects every write in flight while a snapshot of this vdisk is being taken. */
  readonly windows: Set<Op[]>;
  worker?: Worker;
}

/** Counters, summed over all workers; `Stats.minute` buckets them per minute of the run. */
export class Stats {
  readonly buckets: Bucket[] = [];
  readonly statuses = new Map<string, number>();
  readonly mismatches: Mismatch[] = [];
  mismatchCount = 0;

  constructor(readonly startedAt: number) {}

  bucket(): Bucket {
    const m = Math.floor((Date.now() - this.startedAt) / 60_000);
    while (this.buckets.length <= m) this.buckets.push({ writerWrites: 0, writerWriteBytes: 0, writerReads: 0, writerReadBytes: 0, benchOps: 0, benchBytes: 0, benchRuns: 0, benchFailed: 0, failedIo: 0 });
    return this.buckets[m] as Bucket;
  }

  /** A write, read or bench run that did not end GOOD, by kind of outcome. */
  status(what: string): void {
    this.statuses.set(what, (this.statuses.get(what) ?? 0) + 1);
    this.bucket().failedIo++;
  }

  mismatch(ms: readonly Mismatch[]): void {
    this.mismatchCount += ms.length;
    for (const m of ms) if (this.mismatches.length < 50) this.mismatches.push(m);
  }
}

export interface Bucket {
  writerWrites: number;
  writerWriteBytes: number;
  writerReads: number;
  writerReadBytes: number;
  benchOps: number;
  benchBytes: number;
  benchRuns: number;
  benchFailed: number;
  failedIo: number;
}

export interface WorkerEnv {
  portal(agent: string): string;
  iqn(vdisk: string): string;
  url(agent: string, vdisk: string): string;
  stats: Stats;
  rng: () => number;
  /** A new, unique writer sequence number. */
  nextSeq(): number;
  log(msg: string): void;
}

/** Writer sessions per agent, and commands in flight on each. */
const SLOTS_PER_AGENT = 2;
/** The controller's hold timeout in the soak: a faulted I/O is answered within this while the agent lives. */
export const HOLD_S = 30;
/** Time for one command: longer than any hold, so an answer always comes first while the agent lives. */
const COMMAND_MS = 120_000;
const BENCH_MS = 180_000;

const pick = <T>(rng: () => number, xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)] as T;

export function startOp(v: Live, op: Op): void {
  v.inflight.add(op);
  for (const w of v.windows) w.push(op);
}

export function endOp(v: Live, op: Op, good: boolean): void {
  v.inflight.delete(op);
  for (const [first, count] of op.ranges) {
    if (good) v.model.acked(first, count, op.content);
    else v.model.maybe(first, count, op.content);
  }
}

/** The I/O on one vdisk, until stop(). */
export class Worker {
  #stop = false;
  readonly #busy: Uint8Array;
  readonly #running: Promise<void>[] = [];
  readonly #writerUnits: number;

  constructor(
    readonly v: Live,
    readonly env: WorkerEnv,
  ) {
    this.#busy = new Uint8Array(v.model.units);
    this.#writerUnits = Math.floor(v.model.units / 2);
    for (const a of v.agents) for (let i = 0; i < SLOTS_PER_AGENT; i++) this.#running.push(this.#writerSlot(a));
    this.#running.push(this.#benchLoop());
  }

  async stop(): Promise<void> {
    this.#stop = true;
    await Promise.all(this.#running);
  }

  async #open(agent: string): Promise<LunSession | undefined> {
    while (!this.#stop) {
      try {
        return await LunSession.open(this.env.portal(agent), this.env.iqn(this.v.name), this.v.blockSize);
      } catch {
        await sleep(500); // the agent is down (killed) or not serving yet
      }
    }
    return undefined;
  }

  /** 1-16 free units in the writer's half, marked busy; undefined when none could be found quickly. */
  #claim(): [number, number] | undefined {
    for (let tries = 0; tries < 20; tries++) {
      const count = 1 + Math.floor(this.env.rng() * 16);
      const first = Math.floor(this.env.rng() * (this.#writerUnits - count + 1));
      let free = true;
      for (let u = first; u < first + count && free; u++) free = this.#busy[u] === 0;
      if (free) {
        this.#busy.fill(1, first, first + count);
        return [first, count];
      }
    }
    return undefined;
  }

  async #writerSlot(agent: string): Promise<void> {
    const v = this.v;
    const stats = this.env.stats;
    let s: LunSession | undefined;
    while (!this.#stop) {
      s ??= await this.#open(agent);
      if (s === undefined) break;
      const claim = this.#claim();
      if (claim === undefined) {
        await sleep(10);
        continue;
      }
      const [first, count] = claim;
      const lba = (first * UNIT) / v.blockSize;
      let answered = true;
      try {
        if (this.env.rng() < 0.7) {
          const op: Op = { ranges: [[first, count]], content: writerContent(this.env.nextSeq(), v.tag) };
          const data = fillBlocks(op.content, first * UNIT, count * UNIT);
          startOp(v, op);
          let good = false;
          try {
            const r = await s.write(lba, data, COMMAND_MS);
            good = r.status === GOOD;
            if (!good) stats.status(`writer WRITE ${describeIo(r)}`);
          } catch (err) {
            stats.status(`writer WRITE ${(err as Error).message.replace(/\d+ ms/, 'N ms')}`);
            throw err;
          } finally {
            endOp(v, op, good);
          }
          if (good) {
            const b = stats.bucket();
            b.writerWrites++;
            b.writerWriteBytes += data.length;
          }
        } else {
          let r;
          try {
            r = await s.read(lba, (count * UNIT) / v.blockSize, COMMAND_MS);
          } catch (err) {
            stats.status(`writer READ ${(err as Error).message.replace(/\d+ ms/, 'N ms')}`);
            throw err;
          }
          if (r.status !== GOOD) stats.status(`writer READ ${describeIo(r)}`);
          else {
            const ms = v.model.verify(first * UNIT, r.data);
            if (ms.length > 0) {
              this.env.log(`MISMATCH: ${ms.length} blocks read from ${v.name} through agent ${agent} at ${first * UNIT}: ${ms[0]?.found}, allowed ${ms[0]?.allowed}`);
              stats.mismatch(ms.map((m) => ({ ...m, vdisk: `${m.vdisk} (online read through ${agent})` })));
            }
            const b = stats.bucket();
            b.writerReads++;
            b.writerReadBytes += r.data.length;
          }
        }
      } catch {
        // The session died (its agent was killed) or a command went unanswered: a new session.
        answered = false;
        s.close();
        s = undefined;
      } finally {
        // An unanswered command may still be held in a living agent: its units are left alone until it has surely ended.
        if (answered) this.#busy.fill(0, first, first + count);
        else setTimeout(() => this.#busy.fill(0, first, first + count), (HOLD_S + 5) * 1000).unref();
      }
    }
    s?.close();
  }

  /** qemu-img bench runs one after the other on the second half, through a random exporting agent. */
  async #benchLoop(): Promise<void> {
    const v = this.v;
    const rng = this.env.rng;
    const half = this.#writerUnits * UNIT;
    const size = v.model.size;
    while (!this.#stop) {
      const write = rng() < 0.5;
      // qemu's iSCSI driver asserts on reads of 32 KiB or more from a thin LUN of 4096-byte blocks
      // (iscsi_co_block_status: offset | bytes not aligned to the block size): qemu's bug, kept clear of.
      const bs = pick(rng, !write && v.blockSize === 4096 && v.thin ? [4096, 16384] : [4096, 16384, 65536]);
      const stride = pick(rng, [1, 1, 3, 7]);
      const step = bs * stride;
      const depth = pick(rng, [1, 4, 16]);
      const offset = half + Math.floor((rng() * (size - half - bs)) / bs) * bs;
      // Never past the end: qemu-img bench would wrap to offset 0, outside the bench's half.
      const count = Math.max(1, Math.min(Math.floor((size - offset - bs) / step) + 1, Math.floor((bs === 4096 ? 2000 : 300) * (0.2 + rng()))));
      const agent = pick(rng, v.agents);
      const args = ['bench', '-f', 'raw', '-t', 'none', '-c', String(count), '-d', String(depth), '-s', String(bs), '-S', String(step), '-o', String(offset)];
      let op: Op | undefined;
      if (write) {
        const byte = 1 + Math.floor(rng() * 255);
        args.push('-w', `--pattern=${byte}`);
        op = { ranges: [], content: fillContent(byte) };
        for (let i = 0; i < count; i++) op.ranges.push([(offset + i * step) / UNIT, bs / UNIT]);
        startOp(v, op);
      }
      const r = await runBounded('qemu-img', [...args, this.env.url(agent, v.name)], { timeoutMs: BENCH_MS });
      const good = r.exitCode === 0;
      if (op !== undefined) endOp(v, op, good);
      const b = this.env.stats.bucket();
      b.benchRuns++;
      if (good) {
        b.benchOps += count;
        b.benchBytes += count * bs;
      } else {
        b.benchFailed++;
        this.env.stats.status(`qemu-img bench ${write ? 'write' : 'read'}: ${r.timedOut ? 'timed out' : (r.stderr.trim().split('\n').at(-1) ?? describeRun(r)).replace(/\d+/g, 'N')}`);
      }
      // qemu-img exits at its first failed request, possibly leaving others held in an agent (a first write
      // while the controller is down): no bench write here until they have surely landed or failed, so none
      // lands after a later acknowledged write to the same units.
      if (!good) await sleep(write ? (HOLD_S + 5) * 1000 : 500);
    }
  }
}
