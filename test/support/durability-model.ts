// What a vdisk may read back after a crash, from the logs of
// test/system/durability-writer.c: every block a write reported GOOD, and
// whether a completed SYNCHRONIZE CACHE or FUA made it durable. A block read
// back is checked against the writes issued to it: after a process crash
// (nothing committed is lost) it must hold its last GOOD write or a later one
// that did not complete; after a power loss, its last durable write or a later
// one (any), or, with none durable, zeros or any of its writes. A block that
// holds another vdisk's data, or garbage, is always wrong.

/** One write of the writer, as far as it is known. */
interface WriteRec {
  id: number;
  /** GOOD seen; false while pending or when it failed. */
  good: boolean;
  /** GOOD and then covered by a completed SYNCHRONIZE CACHE, or written FUA. */
  durable: boolean;
  fua: boolean;
}

export const BLOCK = 512;
const MAGIC = Buffer.from('TDUR');

/** What a 512-byte block read back holds: zeros, a writer's block (its tag, LBA and write id), or garbage. */
export type BlockContent = { kind: 'zero' } | { kind: 'data'; tag: number; lba: number; id: number } | { kind: 'garbage' };

/** FNV-1a 64 over b[from, to), in two 32-bit halves (BigInt per byte is too slow for whole vdisks). */
function fnv(b: Buffer, from: number, to: number, h: [number, number]): [number, number] {
  let [hi, lo] = h;
  for (let i = from; i < to; i++) {
    lo = (lo ^ b[i]!) >>> 0;
    // h * (2^40 + 0x1b3) mod 2^64.
    const l = lo * 0x1b3;
    const carry = Math.floor(l / 0x100000000);
    hi = (hi * 0x1b3 + carry + ((lo << 8) >>> 0)) % 0x100000000;
    lo = l % 0x100000000;
  }
  return [hi, lo];
}

const FNV_BASIS: [number, number] = [0xcbf29ce4, 0x84222325];

function checksum(b: Buffer): bigint {
  const [hi, lo] = fnv(b, 32, BLOCK, fnv(b, 0, 24, FNV_BASIS));
  return (BigInt(hi) << 32n) | BigInt(lo);
}

const ZERO_BLOCK = Buffer.alloc(BLOCK);

/** Decodes one block as durability-writer.c lays it out (checksum checked). */
export function decodeBlock(b: Buffer): BlockContent {
  if (b.equals(ZERO_BLOCK)) return { kind: 'zero' };
  if (!b.subarray(0, 4).equals(MAGIC)) return { kind: 'garbage' };
  if (checksum(b) !== b.readBigUInt64LE(24)) return { kind: 'garbage' };
  return { kind: 'data', tag: b.readUInt32LE(4), lba: Number(b.readBigUInt64LE(8)), id: Number(b.readBigUInt64LE(16)) };
}

export type CrashKind = 'process' | 'power';

/** The writes of one vdisk's writers, per block. */
export class VdiskModel {
  /** Writes issued to each block, in issue order (no two were ever in flight at once). */
  readonly #blocks = new Map<number, WriteRec[]>();
  /** Every write (by id) with the blocks it covers. */
  readonly #writes = new Map<number, { rec: WriteRec; lba: number; blocks: number }>();
  #goodCount = 0;
  #durableCount = 0;

  constructor(
    readonly name: string,
    readonly tag: number,
  ) {}

  get goodWrites(): number {
    return this.#goodCount;
  }

  get durableWrites(): number {
    return this.#durableCount;
  }

  /** Blocks any writer wrote (or tried to). */
  get touched(): number[] {
    return [...this.#blocks.keys()].sort((a, b) => a - b);
  }

  /**
   * Takes in one writer's output (lines in event order). Returns the sense
   * of every SYNCHRONIZE CACHE that did not complete GOOD ("CHECK 03/0c/00", ...).
   */
  ingest(log: string): { syncFailures: string[]; writeFailures: string[] } {
    const syncFailures: string[] = [];
    const writeFailures: string[] = [];
    // Writes completed GOOD since the last SYNCHRONIZE CACHE was issued, and those each sync in flight covers.
    let sinceSync: WriteRec[] = [];
    const covered = new Map<number, WriteRec[]>();
    for (const line of log.split('\n')) {
      const f = line.trim().split(' ');
      switch (f[0]) {
        case 'WI': {
          const id = Number(f[1]);
          const lba = Number(f[2]);
          const blocks = Number(f[3]);
          const rec: WriteRec = { id, good: false, durable: false, fua: f[4] === '1' };
          this.#writes.set(id, { rec, lba, blocks });
          for (let b = lba; b < lba + blocks; b++) {
            const list = this.#blocks.get(b) ?? [];
            list.push(rec);
            this.#blocks.set(b, list);
          }
          break;
        }
        case 'W': {
          const w = this.#writes.get(Number(f[1]));
          if (w === undefined) throw new Error(`writer log: completion of unknown write ${f[1]}`);
          if (f[2] === 'GOOD') {
            w.rec.good = true;
            this.#goodCount++;
            if (w.rec.fua) {
              w.rec.durable = true;
              this.#durableCount++;
            } else {
              sinceSync.push(w.rec);
            }
          } else {
            writeFailures.push(f.slice(2).join(' '));
          }
          break;
        }
        case 'SI':
          covered.set(Number(f[1]), sinceSync);
          sinceSync = [];
          break;
        case 'S': {
          const recs = covered.get(Number(f[1])) ?? [];
          covered.delete(Number(f[1]));
          if (f[2] === 'GOOD') {
            for (const r of recs) {
              if (!r.durable) this.#durableCount++;
              r.durable = true;
            }
          } else {
            // The initiator was told these may be lost (reported once, as
            // fsync does): a later sync does not promise them again.
            syncFailures.push(f.slice(2).join(' '));
          }
          break;
        }
        default:
          break;
      }
    }
    return { syncFailures, writeFailures };
  }

  /** Records a write made outside the writer (e.g. by the test itself), as completed. */
  record(id: number, lba: number, blocks: number, durable: boolean): void {
    const rec: WriteRec = { id, good: true, durable, fua: durable };
    this.#writes.set(id, { rec, lba, blocks });
    for (let b = lba; b < lba + blocks; b++) {
      const list = this.#blocks.get(b) ?? [];
      list.push(rec);
      this.#blocks.set(b, list);
    }
  }

  /** Write `id` completed GOOD and a SYNCHRONIZE CACHE after it too. */
  makeDurable(id: number): void {
    const w = this.#writes.get(id);
    if (w === undefined || !w.rec.good) throw new Error(`write ${id} is not known GOOD`);
    if (!w.rec.durable) this.#durableCount++;
    w.rec.durable = true;
  }

  /**
   * Why block `lba` may not read back as `c` after a crash of `kind`
   * (undefined: it may). Blocks nobody wrote must read zeros.
   */
  judge(lba: number, c: BlockContent, kind: CrashKind): string | undefined {
    const what = describeContent(c);
    if (c.kind === 'garbage') return `LBA ${lba} of ${this.name}: garbage`;
    if (c.kind === 'data' && c.tag !== this.tag) return `LBA ${lba} of ${this.name}: another vdisk's data (${what})`;
    if (c.kind === 'data' && c.lba !== lba) return `LBA ${lba} of ${this.name}: data written for another LBA (${what})`;
    const ws = this.#blocks.get(lba) ?? [];
    let floor = -1;
    for (let i = ws.length - 1; i >= 0; i--) {
      const w = ws[i]!;
      if (kind === 'process' ? w.good : w.durable) {
        floor = i;
        break;
      }
    }
    const allowed = ws.slice(Math.max(floor, 0));
    const zeroOk = floor < 0;
    if (c.kind === 'zero') return zeroOk ? undefined : `LBA ${lba} of ${this.name}: zeros, but write ${hex(ws[floor]!.id)} was ${kind === 'process' ? 'GOOD' : 'durable'}`;
    if (allowed.some((w) => w.id === c.id)) return undefined;
    const known = ws.some((w) => w.id === c.id);
    return `LBA ${lba} of ${this.name}: ${what}${known ? ' (an older write)' : ' (never written here)'}; expected ${floor < 0 ? 'zeros or one of' : 'one of'} ${allowed.map((w) => hex(w.id)).join(',')}`;
  }

  /**
   * After a check: what each block was found to hold (`found`: every block
   * that did not read zeros) becomes its only history, durable, so that the
   * next round is judged from there.
   */
  settle(found: ReadonlyMap<number, BlockContent>): void {
    // Blocks not found (zeros) have no history left.
    for (const lba of [...this.#blocks.keys()]) if (!found.has(lba)) this.#blocks.delete(lba);
    for (const [lba, c] of found) {
      if (c.kind !== 'data') {
        this.#blocks.delete(lba);
        continue;
      }
      this.#blocks.set(lba, [{ id: c.id, good: true, durable: true, fua: false }]);
    }
  }
}

function hex(id: number): string {
  return `${Math.floor(id / 2 ** 32)}:${id % 2 ** 32}`;
}

export function describeContent(c: BlockContent): string {
  switch (c.kind) {
    case 'zero':
      return 'zeros';
    case 'garbage':
      return 'garbage';
    default:
      return `tag ${c.tag} LBA ${c.lba} write ${hex(c.id)}`;
  }
}

/** `blocks` blocks at `lba` exactly as durability-writer.c writes them for vdisk `tag`, write `id`. */
export function encodeBlocks(tag: number, lba: number, blocks: number, id: number): Buffer {
  const mask = (1n << 64n) - 1n;
  const out = Buffer.alloc(blocks * BLOCK);
  for (let i = 0; i < blocks; i++) {
    const b = out.subarray(i * BLOCK, (i + 1) * BLOCK);
    const at = BigInt(lba + i);
    MAGIC.copy(b, 0);
    b.writeUInt32LE(tag, 4);
    b.writeBigUInt64LE(at, 8);
    b.writeBigUInt64LE(BigInt(id), 16);
    let s = (BigInt(id) ^ ((at * 0x9e3779b97f4a7c15n) & mask)) | 1n;
    for (let off = 32; off < BLOCK; off += 8) {
      s ^= (s << 13n) & mask;
      s ^= s >> 7n;
      s ^= (s << 17n) & mask;
      b.writeBigUInt64LE(s, off);
    }
    b.writeBigUInt64LE(checksum(b), 24);
  }
  return out;
}
