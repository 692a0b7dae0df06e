// Table shapes for the load measurement and a direct protobuf encoder for
// the ControllerMessage that carries them. The stub controller pre-encodes a
// TableFull before the clock starts, so the measured time is the agent's
// (transfer, decode, install, ack), not the encoder's; and building a
// 16 M-extent message through protobufjs objects would itself take
// gigabytes. Field numbers follow proto/tabula.proto (ControllerMessage
// table_full = 3; TableFull 1-7; Extent 1-5); checkEncoding() compares the
// bytes with protobufjs on a small table.
import { randomUUID } from 'node:crypto';
import { decodeMessage, messageType } from '../../src/wire/grpc.js';
import type { ControllerMessage } from '../../src/wire/proto-types.js';
import { prng } from '../../test/support/prng.js';

/** One extent as the wire carries it (state as its number; container index into `containers`, -1 for none). */
export interface ShapeExtent {
  first: number;
  count: number;
  state: number;
  container: number;
  offset: number;
}

export interface TableShape {
  name: string;
  segmentCount: number;
  containers: string[];
  extents: ShapeExtent[];
}

export type ShapeKind = 'thick' | 'aged' | 'fragmented';

const NORMAL = 0;


/**
 * - thick: allocated in one go over `nContainers` containers, each holding a
 *   contiguous quarter (what `vdisk create --thick` makes on several
 *   containers): a handful of extents;
 * - aged: filled over time next to other vdisks: runs of 1-256 segments
 *   (mean ~128) round-robin over the containers, with gaps of 0-256 segments
 *   (other vdisks' space) in each container between runs;
 * - fragmented: the worst case: no two neighbouring segments in one run
 *   (segment s on container s mod n, offset s div n), one extent per segment.
 */
export function makeShape(kind: ShapeKind, segmentCount: number, nContainers = 4, seed = 5): TableShape {
  const containers = Array.from({ length: nContainers }, () => randomUUID());
  const extents: ShapeExtent[] = [];
  if (kind === 'thick') {
    const per = Math.ceil(segmentCount / nContainers);
    for (let c = 0, first = 0; first < segmentCount; c++, first += per) {
      extents.push({ first, count: Math.min(per, segmentCount - first), state: NORMAL, container: c, offset: 0 });
    }
  } else if (kind === 'aged') {
    // Seeded, so every run loads the same tables.
    const rand = prng(seed);
    const next = new Array<number>(nContainers).fill(0);
    for (let first = 0, c = 0; first < segmentCount; c = (c + 1) % nContainers) {
      const count = Math.min(segmentCount - first, 1 + Math.floor(rand() * 256));
      extents.push({ first, count, state: NORMAL, container: c, offset: next[c]! });
      next[c]! += count + Math.floor(rand() * 257);
      first += count;
    }
  } else {
    for (let s = 0; s < segmentCount; s++) {
      extents.push({ first: s, count: 1, state: NORMAL, container: s % nContainers, offset: Math.floor(s / nContainers) });
    }
  }
  return { name: `${kind}`, segmentCount, containers, extents };
}

function varintLen(v: number): number {
  let n = 1;
  while (v >= 128) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

class Writer {
  pos = 0;
  constructor(readonly buf: Buffer) {}
  varint(v: number): void {
    while (v >= 128) {
      this.buf[this.pos++] = (v % 128) | 128;
      v = Math.floor(v / 128);
    }
    this.buf[this.pos++] = v;
  }
  tag(field: number, wire: number): void {
    this.varint(field * 8 + wire);
  }
  bytes(field: number, b: Buffer): void {
    this.tag(field, 2);
    this.varint(b.length);
    b.copy(this.buf, this.pos);
    this.pos += b.length;
  }
  uint(field: number, v: number): void {
    if (v === 0) return; // proto3 default: not on the wire
    this.tag(field, 0);
    this.varint(v);
  }
}

/** ControllerMessage{table_full} for the shape, as the bytes gRPC frames. */
export function encodeTableFull(shape: TableShape, vdiskId: string, version: number, segmentSize: number, blockSize: number): Buffer {
  const ids = shape.containers.map((c) => Buffer.from(c));
  const uintLen = (v: number): number => (v === 0 ? 0 : 1 + varintLen(v));
  const extentLen = (e: ShapeExtent): number => {
    const c = e.container < 0 ? 0 : 1 + varintLen(ids[e.container]!.length) + ids[e.container]!.length;
    return uintLen(e.first) + uintLen(e.count) + uintLen(e.state) + c + uintLen(e.offset);
  };
  const vid = Buffer.from(vdiskId);
  let body = 1 + varintLen(vid.length) + vid.length;
  body += uintLen(version) + uintLen(segmentSize) + uintLen(blockSize) + uintLen(shape.segmentCount);
  for (const id of ids) body += 1 + varintLen(id.length) + id.length;
  for (const e of shape.extents) {
    const l = extentLen(e);
    body += 1 + varintLen(l) + l;
  }
  const w = new Writer(Buffer.allocUnsafe(1 + varintLen(body) + body));
  w.tag(3, 2);
  w.varint(body);
  w.bytes(1, vid);
  w.uint(2, version);
  w.uint(3, segmentSize);
  w.uint(4, blockSize);
  w.uint(5, shape.segmentCount);
  for (const id of ids) w.bytes(6, id);
  for (const e of shape.extents) {
    w.tag(7, 2);
    w.varint(extentLen(e));
    w.uint(1, e.first);
    w.uint(2, e.count);
    w.uint(3, e.state);
    if (e.container >= 0) w.bytes(4, ids[e.container]!);
    w.uint(5, e.offset);
  }
  if (w.pos !== w.buf.length) throw new Error(`TableFull encoder: wrote ${w.pos} of ${w.buf.length} bytes`);
  return w.buf;
}

/**
 * The same table in TableFull's run form (fields 8-13): pieces of at most
 * `runsPerPiece` runs, packed arrays, containers as 1-based indices; every
 * piece but the last has `more`. What the controller sends to agents that
 * register with table_runs.
 */
export function encodeTableFullRuns(shape: TableShape, vdiskId: string, version: number, segmentSize: number, blockSize: number, runsPerPiece: number): Buffer[] {
  const ids = shape.containers.map((c) => Buffer.from(c));
  const vid = Buffer.from(vdiskId);
  const uintLen = (v: number): number => (v === 0 ? 0 : 1 + varintLen(v));
  const packedLen = (vals: number[]): number => {
    let n = 0;
    for (const v of vals) n += varintLen(v);
    return n;
  };
  const out: Buffer[] = [];
  for (let i = 0; i === 0 || i < shape.extents.length; i += runsPerPiece) {
    const runs = shape.extents.slice(i, i + runsPerPiece);
    const first = runs[0]?.first ?? 0;
    const more = i + runsPerPiece < shape.extents.length;
    const cols = [runs.map((e) => e.count), runs.map((e) => e.state), runs.map((e) => e.container + 1), runs.map((e) => (e.container < 0 ? 0 : e.offset))];
    let body = 1 + varintLen(vid.length) + vid.length;
    body += uintLen(version) + uintLen(segmentSize) + uintLen(blockSize) + uintLen(shape.segmentCount);
    for (const id of ids) body += 1 + varintLen(id.length) + id.length;
    body += uintLen(first);
    for (const c of cols) if (c.length > 0) body += 1 + varintLen(packedLen(c)) + packedLen(c);
    body += more ? 2 : 0;
    const w = new Writer(Buffer.allocUnsafe(1 + varintLen(body) + body));
    w.tag(3, 2);
    w.varint(body);
    w.bytes(1, vid);
    w.uint(2, version);
    w.uint(3, segmentSize);
    w.uint(4, blockSize);
    w.uint(5, shape.segmentCount);
    for (const id of ids) w.bytes(6, id);
    w.uint(8, first);
    cols.forEach((c, k) => {
      if (c.length === 0) return;
      w.tag(9 + k, 2);
      w.varint(packedLen(c));
      for (const v of c) w.varint(v);
    });
    w.uint(13, more ? 1 : 0);
    if (w.pos !== w.buf.length) throw new Error(`TableFull run encoder: wrote ${w.pos} of ${w.buf.length} bytes`);
    out.push(w.buf);
  }
  return out;
}

/** Throws unless protobufjs decodes the encoder's bytes to the same table (a small one). */
export function checkEncoding(): void {
  const shape = makeShape('aged', 3000, 3, 9);
  shape.extents[1]!.state = 1; // a zero extent: no container, no offset
  shape.extents[1]!.container = -1;
  shape.extents[1]!.offset = 0;
  const id = randomUUID();
  const m = decodeMessage<ControllerMessage>(messageType('ControllerMessage'), encodeTableFull(shape, id, 7, 1 << 20, 512));
  if (m.body !== 'tableFull') throw new Error(`TableFull encoder: decodes as ${m.body}`);
  const t = m.tableFull;
  const ok =
    t.vdiskId === id &&
    t.version === 7 &&
    t.segmentSize === 1 << 20 &&
    t.blockSize === 512 &&
    t.segmentCount === 3000 &&
    t.containers.join() === shape.containers.join() &&
    t.extents.length === shape.extents.length &&
    t.extents.every((e, i) => {
      const s = shape.extents[i]!;
      return e.first === s.first && e.count === s.count && e.state === s.state && e.offset === s.offset && e.container === (s.container < 0 ? '' : shape.containers[s.container]);
    });
  if (!ok) throw new Error('TableFull encoder: protobufjs decodes a different table');
  const pieces = encodeTableFullRuns(shape, id, 7, 1 << 20, 512, 1000);
  const decoded = pieces.map((b) => decodeMessage<ControllerMessage>(messageType('ControllerMessage'), b));
  const runs = decoded.flatMap((d, k) => {
    if (d.body !== 'tableFull' || d.tableFull.more !== (k < pieces.length - 1)) throw new Error(`TableFull run encoder: piece ${k} decodes wrong`);
    const p = d.tableFull;
    let at = p.firstSegment ?? 0;
    return (p.runCounts ?? []).map((count, j) => {
      const e = { first: at, count, state: p.runStates?.[j], container: (p.runContainers?.[j] ?? 0) - 1, offset: p.runOffsets?.[j] };
      at += count;
      return e;
    });
  });
  if (JSON.stringify(runs) !== JSON.stringify(shape.extents)) throw new Error('TableFull run encoder: protobufjs decodes a different table');
}
