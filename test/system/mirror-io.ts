// Self-checking block I/O for the mirrored-vdisk tests, run on a host of the
// storage-network topology (inside its namespace, like
// storage-network-writer.ts). Every 4 KiB block written carries its own
// block number, a sequence number (one per write command, increasing) and a
// SHA-256 of the rest, so a block read back anywhere shows whether it is
// whole, where it belongs and which write put it there. A never-written
// block is zeros.
//
//   node --import tsx mirror-io.ts write  PORTAL IQN SIZE STATE DEPTH MAX_SECONDS [RANGES]
//   node --import tsx mirror-io.ts read   PORTAL IQN SIZE DEPTH MAX_SECONDS
//   node --import tsx mirror-io.ts verify PORTAL IQN SIZE STATE [RANGES]
//
// write: random writes of 1-16 blocks (only inside RANGES, `first-end` block
//   ranges joined by commas, when given), never two in flight over the same
//   block; STATE holds, per block, the sequence of its last write completed
//   GOOD (u32 LE, 0 = never written); it is read at the start when it exists
//   (so writers can follow one another) and written at the end.
// read: random reads of 1-16 blocks, each block checked on its own (zeros, or
//   whole and at its place); a bad block is read once more before it counts
//   as an error, since a read that races a write to the same block may see
//   half of it (that is the initiator's business, not a lost write).
// verify: reads every block (of RANGES) and checks it against STATE: the
//   sequence of its last GOOD write, or zeros.
// write and read print `ios N` every second; all three end with one JSON line
// (MirrorIoSummary). Every command has a generous time limit of its own: an
// I/O held by the agent through an outage is slow, not failed, and the
// latencies say how slow.
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { GOOD, LunSession, describeIo } from './scsi-client.js';

export const BLOCK = 4096;
const MAGIC = Buffer.from('TBMIRR01');
const HASHED = BLOCK - 32;
const IO_TIMEOUT_MS = 120_000;
/** An I/O slower than this is listed (with when it started) in the summary. */
const SLOW_MS = 1000;
/** Unknown state: a write that was not GOOD (the test fails on it anyway). */
const UNKNOWN = 0xffffffff;

export interface MirrorIoSummary {
  mode: 'write' | 'read' | 'verify';
  ios: number;
  bytes: number;
  /** I/O errors and bad blocks, the first 50. */
  errors: string[];
  errorCount: number;
  maxLatencyMs: number;
  /** I/Os slower than SLOW_MS: ms since the start when issued, and how long they took (the first 50). */
  slow: { atMs: number; ms: number }[];
  /** read: bad blocks that read back right the second time (reads that raced a write). */
  reread?: number;
  /** verify: blocks checked, and of those written ones. */
  blocks?: number;
  written?: number;
}

type Ranges = [number, number][];

function parseRanges(text: string | undefined, blocks: number): Ranges {
  if (text === undefined || text === '') return [[0, blocks]];
  return text.split(',').map((r) => {
    const [a, b] = r.split('-').map(Number) as [number, number];
    if (!(Number.isInteger(a) && Number.isInteger(b) && a >= 0 && a < b && b <= blocks)) throw new Error(`bad range ${r} (of ${blocks} blocks)`);
    return [a, b];
  });
}

/** Fills `buf` (whole blocks, the first at `block`) with self-describing blocks of sequence `seq`. */
export function stamp(buf: Buffer, block: number, seq: number): void {
  for (let i = 0; i * BLOCK < buf.length; i++) {
    const b = buf.subarray(i * BLOCK, (i + 1) * BLOCK);
    MAGIC.copy(b, 0);
    b.writeBigUInt64LE(BigInt(block + i), 8);
    b.writeBigUInt64LE(BigInt(seq), 16);
    createHash('sha256').update(b.subarray(0, HASHED)).digest().copy(b, HASHED);
  }
}

/** What a block holds: zeros, a whole block of sequence `seq`, or something wrong (why). */
export function inspect(b: Buffer, block: number): { seq: number } | { bad: string } {
  if (b.subarray(0, 8).equals(MAGIC)) {
    const at = Number(b.readBigUInt64LE(8));
    const seq = Number(b.readBigUInt64LE(16));
    const sum = createHash('sha256').update(b.subarray(0, HASHED)).digest();
    if (!sum.equals(b.subarray(HASHED, BLOCK))) return { bad: `block ${block}: checksum mismatch (says block ${at}, seq ${seq})` };
    if (at !== block) return { bad: `block ${block}: holds block ${at} (seq ${seq})` };
    return { seq };
  }
  for (let i = 0; i < BLOCK; i += 8) if (b.readBigUInt64LE(i) !== 0n) return { bad: `block ${block}: neither zeros nor a stamped block` };
  return { seq: 0 };
}

class Stats {
  readonly t0 = performance.now();
  readonly s: MirrorIoSummary;
  constructor(mode: MirrorIoSummary['mode']) {
    this.s = { mode, ios: 0, bytes: 0, errors: [], errorCount: 0, maxLatencyMs: 0, slow: [] };
  }
  error(e: string): void {
    this.s.errorCount++;
    if (this.s.errors.length < 50) this.s.errors.push(e);
  }
  /** Runs one I/O, timing it. */
  async timed<T>(io: () => Promise<T>): Promise<T> {
    const start = performance.now();
    try {
      return await io();
    } finally {
      const ms = Math.round(performance.now() - start);
      if (ms > this.s.maxLatencyMs) this.s.maxLatencyMs = ms;
      if (ms > SLOW_MS && this.s.slow.length < 50) this.s.slow.push({ atMs: Math.round(start - this.t0), ms });
    }
  }
}

/** A run of `n` blocks from `ranges`, picked at random, none of them busy. */
function picker(ranges: Ranges, busy: Uint8Array): () => { block: number; n: number } {
  const total = ranges.reduce((a, [x, y]) => a + (y - x), 0);
  return () => {
    for (;;) {
      let k = randomInt(0, total);
      let range = ranges[0] as [number, number];
      for (const r of ranges) {
        if (k < r[1] - r[0]) {
          range = r;
          break;
        }
        k -= r[1] - r[0];
      }
      const n = Math.min(randomInt(1, 17), range[1] - range[0]);
      const block = Math.min(range[0] + k, range[1] - n);
      let free = true;
      for (let u = block; u < block + n && free; u++) free = busy[u] === 0;
      if (free) return { block, n };
    }
  };
}

function loadState(file: string, blocks: number): Uint32Array {
  const state = new Uint32Array(blocks);
  if (existsSync(file)) {
    const b = readFileSync(file);
    state.set(new Uint32Array(b.buffer, b.byteOffset, Math.min(blocks, b.length / 4)));
  }
  return state;
}

async function write(session: LunSession, blocks: number, stateFile: string, depth: number, seconds: number, ranges: Ranges): Promise<MirrorIoSummary> {
  const stats = new Stats('write');
  const state = loadState(stateFile, blocks);
  let seq = 0;
  for (const v of state) if (v !== UNKNOWN && v > seq) seq = v;
  const busy = new Uint8Array(blocks);
  const pick = picker(ranges, busy);
  let stop = false;
  process.on('SIGTERM', () => (stop = true));
  const limit = setTimeout(() => (stop = true), seconds * 1000);
  const progress = setInterval(() => process.stdout.write(`ios ${stats.s.ios}\n`), 1000);
  const slot = async (): Promise<void> => {
    while (!stop) {
      const { block, n } = pick();
      busy.fill(1, block, block + n);
      const mine = ++seq;
      const data = randomBytes(n * BLOCK);
      stamp(data, block, mine);
      try {
        const r = await stats.timed(() => session.write((block * BLOCK) / 512, data, IO_TIMEOUT_MS));
        if (r.status === GOOD) {
          state.fill(mine, block, block + n);
          stats.s.ios++;
          stats.s.bytes += data.length;
        } else {
          state.fill(UNKNOWN, block, block + n);
          stats.error(`WRITE of blocks ${block}+${n} (seq ${mine}): ${describeIo(r)}`);
        }
      } catch (err) {
        state.fill(UNKNOWN, block, block + n);
        stats.error(`WRITE of blocks ${block}+${n} (seq ${mine}): ${(err as Error).message}`);
        stop = true;
      } finally {
        busy.fill(0, block, block + n);
      }
    }
  };
  await Promise.all(Array.from({ length: depth }, () => slot()));
  clearTimeout(limit);
  clearInterval(progress);
  writeFileSync(stateFile, Buffer.from(state.buffer));
  return stats.s;
}

async function read(session: LunSession, blocks: number, depth: number, seconds: number): Promise<MirrorIoSummary> {
  const stats = new Stats('read');
  stats.s.reread = 0;
  const pick = picker([[0, blocks]], new Uint8Array(blocks));
  let stop = false;
  process.on('SIGTERM', () => (stop = true));
  const limit = setTimeout(() => (stop = true), seconds * 1000);
  const progress = setInterval(() => process.stdout.write(`ios ${stats.s.ios}\n`), 1000);
  const readBlocks = async (block: number, n: number): Promise<Buffer | undefined> => {
    const r = await stats.timed(() => session.read((block * BLOCK) / 512, (n * BLOCK) / 512, IO_TIMEOUT_MS));
    if (r.status !== GOOD) {
      stats.error(`READ of blocks ${block}+${n}: ${describeIo(r)}`);
      return undefined;
    }
    stats.s.ios++;
    stats.s.bytes += r.data.length;
    return r.data;
  };
  const slot = async (): Promise<void> => {
    while (!stop) {
      const { block, n } = pick();
      try {
        const data = await readBlocks(block, n);
        if (data === undefined) continue;
        for (let i = 0; i < n; i++) {
          if (!('bad' in inspect(data.subarray(i * BLOCK, (i + 1) * BLOCK), block + i))) continue;
          const again = await readBlocks(block + i, 1);
          if (again === undefined) continue;
          const second = inspect(again, block + i);
          if ('bad' in second) stats.error(`read twice: ${second.bad}`);
          else stats.s.reread = (stats.s.reread ?? 0) + 1;
        }
      } catch (err) {
        stats.error(`READ of blocks ${block}+${n}: ${(err as Error).message}`);
        stop = true;
      }
    }
  };
  await Promise.all(Array.from({ length: depth }, () => slot()));
  clearTimeout(limit);
  clearInterval(progress);
  return stats.s;
}

async function verify(session: LunSession, blocks: number, stateFile: string, ranges: Ranges): Promise<MirrorIoSummary> {
  const stats = new Stats('verify');
  const state = loadState(stateFile, blocks);
  let checked = 0;
  let written = 0;
  const CHUNK = 64;
  const work: [number, number][] = [];
  for (const [a, b] of ranges) for (let x = a; x < b; x += CHUNK) work.push([x, Math.min(CHUNK, b - x)]);
  const slot = async (): Promise<void> => {
    for (let w = work.shift(); w !== undefined; w = work.shift()) {
      const [block, n] = w;
      let r;
      try {
        r = await stats.timed(() => session.read((block * BLOCK) / 512, (n * BLOCK) / 512, IO_TIMEOUT_MS));
      } catch (err) {
        stats.error(`READ of blocks ${block}+${n}: ${(err as Error).message}`);
        return;
      }
      if (r.status !== GOOD) {
        stats.error(`READ of blocks ${block}+${n}: ${describeIo(r)}`);
        continue;
      }
      stats.s.ios++;
      stats.s.bytes += r.data.length;
      for (let i = 0; i < n; i++) {
        const want = state[block + i] ?? 0;
        checked++;
        if (want === UNKNOWN) continue;
        if (want !== 0) written++;
        const got = inspect(r.data.subarray(i * BLOCK, (i + 1) * BLOCK), block + i);
        if ('bad' in got) stats.error(got.bad);
        else if (got.seq !== want) stats.error(`block ${block + i}: seq ${got.seq}, its last GOOD write was seq ${want}`);
      }
    }
  };
  await Promise.all(Array.from({ length: 4 }, () => slot()));
  return { ...stats.s, blocks: checked, written };
}

async function main(argv: readonly string[]): Promise<void> {
  const [mode, portal, iqn, sizeText, ...rest] = argv;
  if (portal === undefined || iqn === undefined || sizeText === undefined) throw new Error('usage: write|read|verify PORTAL IQN SIZE ...');
  const blocks = Number(sizeText) / BLOCK;
  if (!Number.isInteger(blocks) || blocks <= 0) throw new Error(`size ${sizeText} is not whole 4 KiB blocks`);
  const session = await LunSession.open(portal, iqn);
  let summary: MirrorIoSummary;
  if (mode === 'write') {
    const [state, depth, seconds, ranges] = rest;
    if (state === undefined) throw new Error('write: STATE missing');
    summary = await write(session, blocks, state, Number(depth ?? 16), Number(seconds ?? 600), parseRanges(ranges, blocks));
  } else if (mode === 'read') {
    const [depth, seconds] = rest;
    summary = await read(session, blocks, Number(depth ?? 4), Number(seconds ?? 600));
  } else if (mode === 'verify') {
    const [state, ranges] = rest;
    if (state === undefined) throw new Error('verify: STATE missing');
    summary = await verify(session, blocks, state, parseRanges(ranges, blocks));
  } else {
    throw new Error(`unknown mode ${String(mode)}`);
  }
  session.close();
  process.stdout.write(`${JSON.stringify(summary)}\n`);
}

// Only as a program: the test imports the types and inspect/stamp.
if (process.argv[1] !== undefined && /mirror-io\.[jt]s$/.test(process.argv[1])) {
  main(process.argv.slice(2)).then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`mirror-io: ${(err as Error).message}\n`);
      process.exit(2);
    },
  );
}
