// Hand-written protobuf codec for the stream messages of table changes and
// faults: TableDelta, FaultReply and HeartbeatReply (controller -> agent),
// TableAck, Fault and Heartbeat (agent -> controller), and TableFull (whole
// tables: a fragmented 1 TiB one is a million runs, whose protobufjs
// encoding held the controller's event loop for most of a second); grpc.ts
// tries it before protobufjs. Why by hand: these go by on every table change and
// every fault, and protobufjs reflection (fromObject, encode, decode,
// toObject) was a fifth of an agent's CPU per delta: 16 agents on 2 CPUs run
// each of those rarely, so V8 never optimises it. These few fixed shapes cost
// a few small loops.
//
// Same bytes and same objects as protobufjs (test/unit/wire/stream-codec.test.ts
// checks both ways). Anything outside the plain case (another message kind,
// an unknown or repeated field, a value beyond what the field holds exactly,
// a non-ASCII string, truncation) yields null and the caller uses protobufjs,
// which also produces the error for malformed bytes.
//
// Written out per message rather than driven by a table of fields: a
// table-driven version was tried and cost the agents ~6 % more CPU per
// delta in alternating runs (the generic loop runs cold as well).
import type {
  AgentMessage,
  ControllerMessage,
  ExtentLeg,
  ExtentLegs,
  Fault,
  FaultReply,
  Heartbeat,
  HeartbeatReply,
  TableAck,
  TableDeltaMsg,
  TableFull,
  WireExtent,
} from './proto-types.js';

const U32_MAX = 0xffffffff;
const I32_MAX = 0x7fffffff;

// ---- writing ----

class Writer {
  buf: Buffer;
  n = 0;

  constructor(size: number) {
    this.buf = Buffer.allocUnsafe(size);
  }

  ensure(k: number): void {
    if (this.n + k <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.n + k));
    this.buf.copy(next, 0, 0, this.n);
    this.buf = next;
  }

  varint(v: number): void {
    this.ensure(10);
    while (v > 0x7f) {
      this.buf[this.n++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.n++] = v;
  }

  /** A varint field, omitted when 0 (proto3). */
  uint(field: number, v: number): void {
    if (v === 0) return;
    this.varint(field << 3);
    this.varint(v);
  }

  /** An ASCII string field, omitted when empty. */
  ascii(field: number, s: string): void {
    if (s.length === 0) return;
    this.varint((field << 3) | 2);
    this.varint(s.length);
    this.ensure(s.length);
    this.n += this.buf.write(s, this.n, 'latin1');
  }

  /** A length-delimited field holding `inner`'s bytes. */
  nested(field: number, inner: Writer): void {
    this.varint((field << 3) | 2);
    this.varint(inner.n);
    this.ensure(inner.n);
    inner.buf.copy(this.buf, this.n, 0, inner.n);
    this.n += inner.n;
  }

  bytes(): Buffer {
    return this.buf.subarray(0, this.n);
  }
}

// What the fields can hold exactly: protobufjs would truncate or round
// anything else in its own way, so those go through it.
const u32 = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= U32_MAX;
const u64 = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const enumValue = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= I32_MAX;
// eslint-disable-next-line no-control-regex
const ASCII = /^[\x00-\x7f]*$/;
const ascii = (v: unknown): v is string => typeof v === 'string' && ASCII.test(v);

function extent(e: WireExtent): Writer | null {
  const owner = e.owner;
  const legs = e.legs;
  if (!u32(e.first) || !u32(e.count) || !enumValue(e.state) || !ascii(e.container) || !u32(e.offset)) return null;
  if (owner !== undefined && !u32(owner)) return null;
  // An empty legs message, a null one: rare shapes left to protobufjs.
  if (legs !== undefined && !plainLegs(legs)) return null;
  const w = new Writer(16 + e.container.length + (legs === undefined ? 0 : legs.list.length * 48));
  w.uint(1, e.first);
  w.uint(2, e.count);
  w.uint(3, e.state);
  w.ascii(4, e.container);
  w.uint(5, e.offset);
  // `optional` (explicit presence): written when given, even 0, as
  // protobufjs does; unowned extents carry none and their bytes are as before.
  if (owner !== undefined) {
    w.varint(6 << 3);
    w.varint(owner);
  }
  // Extra legs (mirrored vdisks): none for one copy, so its bytes are as before.
  if (legs !== undefined) {
    const list = new Writer(legs.list.length * 48);
    for (const l of legs.list) {
      const x = new Writer(8 + l.container.length);
      x.ascii(1, l.container);
      x.uint(2, l.offset);
      list.nested(1, x);
    }
    w.nested(7, list);
  }
  return w;
}

const plainLeg = (l: unknown): l is ExtentLeg =>
  l !== null && typeof l === 'object' && ascii((l as ExtentLeg).container) && u32((l as ExtentLeg).offset);

const plainLegs = (l: unknown): l is ExtentLegs =>
  l !== null && typeof l === 'object' && Array.isArray((l as ExtentLegs).list) && (l as ExtentLegs).list.length > 0 && (l as ExtentLegs).list.every(plainLeg);

function tableDelta(d: TableDeltaMsg): Writer | null {
  if (!ascii(d.vdiskId) || !u64(d.fromVersion) || !u64(d.toVersion) || !u32(d.segmentCount) || !Array.isArray(d.extents)) return null;
  // A delta that carries LU state or unit attention events (rare: PROUT, RESERVE, resets) goes through protobufjs.
  if (d.lu !== undefined && d.lu !== null) return null;
  const lazy = d.lazy;
  if (lazy !== undefined && typeof lazy !== 'boolean') return null;
  const w = new Writer(64 + d.extents.length * 48);
  w.ascii(1, d.vdiskId);
  w.uint(2, d.fromVersion);
  w.uint(3, d.toVersion);
  w.uint(4, d.segmentCount);
  for (const e of d.extents) {
    const x = extent(e);
    if (x === null) return null;
    w.nested(5, x);
  }
  // `optional` (explicit presence): written when given, even false, as
  // protobufjs does; the controller gives it only when true, so a durable
  // delta is the same bytes as before lazy existed.
  if (lazy !== undefined) {
    w.varint(7 << 3);
    w.varint(lazy ? 1 : 0);
  }
  return w;
}

/** A packed repeated uint32 field, omitted when empty (as protobufjs writes proto3 repeated scalars); false if a value does not fit. */
function packedU32(w: Writer, field: number, values: readonly number[] | undefined): boolean {
  if (values === undefined || values.length === 0) return true;
  if (!Array.isArray(values)) return false;
  let len = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!u32(v)) return false;
    len += v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : v < 0x10000000 ? 4 : 5;
  }
  w.varint((field << 3) | 2);
  w.varint(len);
  w.ensure(len);
  const buf = w.buf;
  let n = w.n;
  for (let i = 0; i < values.length; i++) {
    let v = values[i] as number;
    while (v > 0x7f) {
      buf[n++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    buf[n++] = v;
  }
  w.n = n;
  return true;
}

/** TableFull, both forms (the controller sends a whole table in these); one with LU state goes through protobufjs. */
function tableFull(t: TableFull): Writer | null {
  if (t.luState !== undefined && t.luState !== null) return null;
  if (!ascii(t.vdiskId) || !u64(t.version) || !u32(t.segmentSize) || !u32(t.blockSize) || !u32(t.segmentCount)) return null;
  if (!Array.isArray(t.containers) || !Array.isArray(t.extents) || !t.containers.every(ascii)) return null;
  const first = t.firstSegment ?? 0;
  if (!u32(first) || (t.more !== undefined && typeof t.more !== 'boolean') || (t.lazy !== undefined && typeof t.lazy !== 'boolean')) return null;
  const runs = (t.runCounts?.length ?? 0) + (t.runLegContainers?.length ?? 0);
  const w = new Writer(64 + t.containers.length * 40 + t.extents.length * 48 + runs * 16);
  w.ascii(1, t.vdiskId);
  w.uint(2, t.version);
  w.uint(3, t.segmentSize);
  w.uint(4, t.blockSize);
  w.uint(5, t.segmentCount);
  for (const c of t.containers) {
    // Repeated strings are written even when empty.
    w.varint((6 << 3) | 2);
    w.varint(c.length);
    w.ensure(c.length);
    w.n += w.buf.write(c, w.n, 'latin1');
  }
  for (const e of t.extents) {
    const x = extent(e);
    if (x === null) return null;
    w.nested(7, x);
  }
  w.uint(8, first);
  if (!packedU32(w, 9, t.runCounts) || !packedU32(w, 10, t.runStates) || !packedU32(w, 11, t.runContainers) || !packedU32(w, 12, t.runOffsets)) return null;
  w.uint(13, t.more === true ? 1 : 0);
  if (!packedU32(w, 20, t.runOwners) || !packedU32(w, 21, t.runLegCounts) || !packedU32(w, 22, t.runLegContainers) || !packedU32(w, 23, t.runLegOffsets)) return null;
  // `optional`, as lazy in tableDelta: written when given.
  if (t.lazy !== undefined) {
    w.varint(24 << 3);
    w.varint(t.lazy ? 1 : 0);
  }
  return w;
}

function faultReply(r: FaultReply): Writer | null {
  if (!u64(r.faultId) || !enumValue(r.action) || !u64(r.tableVersion) || !u32(r.senseKey) || !u32(r.asc) || !u32(r.ascq) || !ascii(r.reason)) return null;
  const w = new Writer(48 + r.reason.length);
  w.uint(1, r.faultId);
  w.uint(2, r.action);
  w.uint(3, r.tableVersion);
  w.uint(4, r.senseKey);
  w.uint(5, r.asc);
  w.uint(6, r.ascq);
  w.ascii(7, r.reason);
  return w;
}

function heartbeatReply(r: HeartbeatReply): Writer | null {
  if (!u64(r.seq)) return null;
  const w = new Writer(12);
  w.uint(1, r.seq);
  return w;
}

/** TableAck.vdisk_id's field bytes by vdisk id (bounded: an agent exports a few vdisks). */
const ackPrefixes = new Map<string, Buffer>();
const MAX_ACK_PREFIXES = 1024;

/** Bytes of `v` as a varint. */
function varintLength(v: number): number {
  let n = 1;
  for (let x = v; x > 0x7f; x = Math.floor(x / 0x80)) n++;
  return n;
}

/** Writes `v` as a varint at `n` in `buf` (room checked by the caller); the position after it. */
function putVarint(buf: Buffer, n: number, v: number): number {
  while (v > 0x7f) {
    buf[n++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  buf[n++] = v;
  return n;
}

/**
 * AgentMessage{table_ack} in one buffer of its exact size, the vdisk id's
 * field cached: every holder of a vdisk sends one per change, and the id's
 * check and copy were most of its encoding. The same bytes as protobufjs
 * (unit tests). Null when the id is not ASCII or the version not exact.
 */
export function encodeTableAck(id: string, v: number): Buffer | null {
  let prefix = ackPrefixes.get(id);
  if (prefix === undefined) {
    if (!ascii(id)) return null;
    const p = new Writer(6 + id.length);
    p.ascii(1, id);
    prefix = Buffer.from(p.bytes());
    if (ackPrefixes.size >= MAX_ACK_PREFIXES) ackPrefixes.clear();
    ackPrefixes.set(id, prefix);
  }
  if (!u64(v)) return null;
  const vlen = v === 0 ? 0 : 1 + varintLength(v);
  const inner = prefix.length + vlen;
  const out = Buffer.allocUnsafe(1 + varintLength(inner) + inner);
  out[0] = (3 << 3) | 2;
  let n = putVarint(out, 1, inner);
  n += prefix.copy(out, n);
  if (v !== 0) {
    out[n++] = 2 << 3;
    putVarint(out, n, v);
  }
  return out;
}

function heartbeat(h: Heartbeat): Writer | null {
  if (!u64(h.seq) || !u32(h.heldIos)) return null;
  const w = new Writer(20);
  w.uint(1, h.seq);
  w.uint(2, h.heldIos);
  w.uint(3, h.draining === true ? 1 : 0);
  return w;
}

function fault(f: Fault): Writer | null {
  if (
    !u64(f.faultId) ||
    !ascii(f.vdiskId) ||
    !u64(f.tableVersion) ||
    !u32(f.segment) ||
    !enumValue(f.op) ||
    !u64(f.lba) ||
    !u32(f.blocks) ||
    !enumValue(f.state) ||
    !ascii(f.detail) ||
    (f.failedContainer !== undefined && !ascii(f.failedContainer))
  ) {
    return null;
  }
  const w = new Writer(80 + f.vdiskId.length + f.detail.length);
  w.uint(1, f.faultId);
  w.ascii(2, f.vdiskId);
  w.uint(3, f.tableVersion);
  w.uint(4, f.segment);
  w.uint(5, f.op);
  w.uint(6, f.lba);
  w.uint(7, f.blocks);
  w.uint(8, f.state);
  w.ascii(9, f.detail);
  // `optional` (explicit presence): written when given, even '', as protobufjs does.
  if (f.failedContainer !== undefined) {
    w.varint((10 << 3) | 2);
    w.varint(f.failedContainer.length);
    w.ensure(f.failedContainer.length);
    w.n += w.buf.write(f.failedContainer, w.n, 'latin1');
  }
  return w;
}

function wrap(field: number, inner: Writer | null): Buffer | null {
  if (inner === null) return null;
  const w = new Writer(inner.n + 6);
  w.nested(field, inner);
  return w.bytes();
}

/** ControllerMessage bytes for TableFull, TableDelta, FaultReply and HeartbeatReply, else null (use protobufjs). */
export function tryEncodeControllerMessage(m: ControllerMessage): Buffer | null {
  switch (m.body) {
    case 'tableFull':
      return m.tableFull !== null && typeof m.tableFull === 'object' ? wrap(3, tableFull(m.tableFull)) : null;
    case 'tableDelta':
      return m.tableDelta !== null && typeof m.tableDelta === 'object' ? wrap(4, tableDelta(m.tableDelta)) : null;
    case 'faultReply':
      return m.faultReply !== null && typeof m.faultReply === 'object' ? wrap(5, faultReply(m.faultReply)) : null;
    case 'heartbeatReply':
      return m.heartbeatReply !== null && typeof m.heartbeatReply === 'object' ? wrap(11, heartbeatReply(m.heartbeatReply)) : null;
    default:
      return null;
  }
}

/** AgentMessage bytes for TableAck, Fault and Heartbeat, else null (use protobufjs). */
export function tryEncodeAgentMessage(m: AgentMessage): Buffer | null {
  switch (m.body) {
    case 'heartbeat':
      return m.heartbeat !== null && typeof m.heartbeat === 'object' ? wrap(2, heartbeat(m.heartbeat)) : null;
    case 'tableAck':
      return m.tableAck !== null && typeof m.tableAck === 'object' ? encodeTableAck(m.tableAck.vdiskId, m.tableAck.version) : null;
    case 'fault':
      return m.fault !== null && typeof m.fault === 'object' ? wrap(5, fault(m.fault)) : null;
    default:
      return null;
  }
}

// ---- reading ----

/** Thrown inside the reader for anything off the plain path; never escapes. */
const OFF_PATH = new Error('not a plain table or fault message');

class Reader {
  pos: number;

  constructor(
    readonly buf: Buffer,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  /** A varint up to 2^53 - 1. */
  varint(): number {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      if (this.pos >= this.end) throw OFF_PATH;
      const b = this.buf[this.pos++] as number;
      v += (b & 0x7f) * mul;
      if (b < 0x80) {
        if (!Number.isSafeInteger(v)) throw OFF_PATH;
        return v;
      }
      mul *= 0x80;
    }
    throw OFF_PATH;
  }

  u32(): number {
    const v = this.varint();
    if (v > U32_MAX) throw OFF_PATH;
    return v;
  }

  enumValue(): number {
    const v = this.varint();
    if (v > I32_MAX) throw OFF_PATH;
    return v;
  }

  /** [start, end) of a length-delimited field's bytes. */
  span(): [number, number] {
    const len = this.varint();
    const start = this.pos;
    if (len > this.end - start) throw OFF_PATH;
    this.pos = start + len;
    return [start, start + len];
  }

  ascii(): string {
    const [start, end] = this.span();
    for (let i = start; i < end; i++) if ((this.buf[i] as number) >= 0x80) throw OFF_PATH;
    return this.buf.toString('latin1', start, end);
  }
}

/**
 * Reads the fields of one message: `field(number, wireType)` consumes each
 * value; a field seen twice (not `repeatable`) is off the plain path.
 */
function fields(r: Reader, repeatable: number, field: (no: number, wireType: number) => void): void {
  let seen = 0;
  while (!r.done) {
    const tag = r.varint();
    const no = Math.floor(tag / 8);
    if (no < 1 || no > 30) throw OFF_PATH;
    const bit = 1 << no;
    if (seen & bit & ~(1 << repeatable)) throw OFF_PATH;
    seen |= bit;
    field(no, tag & 7);
  }
}

function expectWire(actual: number, want: number): void {
  if (actual !== want) throw OFF_PATH;
}

function readExtentLeg(r: Reader): ExtentLeg {
  const l: ExtentLeg = { container: '', offset: 0 };
  fields(r, 0, (no, wt) => {
    if (no === 1) {
      expectWire(wt, 2);
      l.container = r.ascii();
    } else if (no === 2) {
      expectWire(wt, 0);
      l.offset = r.u32();
    } else {
      throw OFF_PATH;
    }
  });
  return l;
}

function readExtentLegs(r: Reader): ExtentLegs {
  const legs: ExtentLegs = { list: [] };
  fields(r, 1, (no, wt) => {
    if (no !== 1) throw OFF_PATH;
    expectWire(wt, 2);
    const [start, end] = r.span();
    legs.list.push(readExtentLeg(new Reader(r.buf, start, end)));
  });
  return legs;
}

function readExtent(r: Reader): WireExtent {
  const e: WireExtent = { first: 0, count: 0, state: 0, container: '', offset: 0 };
  fields(r, 0, (no, wt) => {
    switch (no) {
      case 1:
        expectWire(wt, 0);
        e.first = r.u32();
        return;
      case 2:
        expectWire(wt, 0);
        e.count = r.u32();
        return;
      case 3:
        expectWire(wt, 0);
        e.state = r.enumValue();
        return;
      case 4:
        expectWire(wt, 2);
        e.container = r.ascii();
        return;
      case 5:
        expectWire(wt, 0);
        e.offset = r.u32();
        return;
      case 6:
        expectWire(wt, 0);
        e.owner = r.u32();
        return;
      case 7: {
        expectWire(wt, 2);
        const [start, end] = r.span();
        e.legs = readExtentLegs(new Reader(r.buf, start, end));
        return;
      }
      default:
        throw OFF_PATH;
    }
  });
  return e;
}

function readTableDelta(r: Reader): TableDeltaMsg {
  // Key order as protobufjs's toObject gives it (repeated fields first).
  // `lu` (field 6, optional) is off this path: absent, protobufjs gives no key for it either;
  // nor for `lazy` (7, optional) when absent.
  const d: TableDeltaMsg = { extents: [], vdiskId: '', fromVersion: 0, toVersion: 0, segmentCount: 0 } as TableDeltaMsg;
  fields(r, 5, (no, wt) => {
    switch (no) {
      case 1:
        expectWire(wt, 2);
        d.vdiskId = r.ascii();
        return;
      case 2:
        expectWire(wt, 0);
        d.fromVersion = r.varint();
        return;
      case 3:
        expectWire(wt, 0);
        d.toVersion = r.varint();
        return;
      case 4:
        expectWire(wt, 0);
        d.segmentCount = r.u32();
        return;
      case 5: {
        expectWire(wt, 2);
        const [start, end] = r.span();
        d.extents.push(readExtent(new Reader(r.buf, start, end)));
        return;
      }
      case 7:
        expectWire(wt, 0);
        d.lazy = r.varint() !== 0;
        return;
      default:
        throw OFF_PATH;
    }
  });
  return d;
}

// ---- the delta's fast path ----
//
// Every holder of a vdisk decodes each of its deltas, a few times a second
// at most, so this code runs cold (interpreted): what costs is the number
// of calls and closures, not the arithmetic. The fast path reads the one
// shape the controller sends (fields in ascending order, single-byte tags,
// extents without legs) in two loops with the position in a module
// variable (no Reader, no closure per field); anything else returns null
// and the general readers above decide, so the result is the same object.

/** Read position of the fast path (single-threaded, never held across calls). */
let at = 0;

/** A varint at `at` below `end` up to 2^53 - 1 (as Reader.varint), or -1. */
function varintAt(buf: Buffer, end: number): number {
  let b = at < end ? (buf[at++] as number) : 0x100;
  if (b < 0x80) return b;
  if (b === 0x100) return -1;
  let v = b & 0x7f;
  let mul = 0x80;
  for (let i = 1; i < 8; i++) {
    if (at >= end) return -1;
    b = buf[at++] as number;
    v += (b & 0x7f) * mul;
    if (b < 0x80) return Number.isSafeInteger(v) ? v : -1;
    mul *= 0x80;
  }
  return -1;
}

/** An ASCII string field's value at `at` (after its tag), or null. */
function asciiAt(buf: Buffer, end: number): string | null {
  const len = varintAt(buf, end);
  if (len < 0 || len > end - at) return null;
  const start = at;
  const stop = start + len;
  for (let i = start; i < stop; i++) if ((buf[i] as number) >= 0x80) return null;
  at = stop;
  return buf.toString('latin1', start, stop);
}

/** One extent without legs (fields in ascending order), at `at` up to `end`, or null. */
function fastExtent(buf: Buffer, end: number): WireExtent | null {
  const e: WireExtent = { first: 0, count: 0, state: 0, container: '', offset: 0 };
  let last = 0;
  while (at < end) {
    const tag = buf[at++] as number;
    const no = tag >> 3;
    if (no <= last || (tag & 7) !== (no === 4 ? 2 : 0)) return null;
    last = no;
    if (no === 4) {
      const c = asciiAt(buf, end);
      if (c === null) return null;
      e.container = c;
      continue;
    }
    const v = varintAt(buf, end);
    if (v < 0 || v > (no === 3 ? I32_MAX : U32_MAX)) return null;
    if (no === 1) e.first = v;
    else if (no === 2) e.count = v;
    else if (no === 3) e.state = v;
    else if (no === 5) e.offset = v;
    else if (no === 6) e.owner = v;
    else return null;
  }
  return at === end ? e : null;
}

/** ControllerMessage{table_delta} as the controller writes it, or null (the general path decides). */
function fastTableDelta(buf: Buffer): ControllerMessage | null {
  const n = buf.length;
  at = 1;
  const len = varintAt(buf, n);
  if (len !== n - at) return null;
  // Key order as readTableDelta's.
  const d = { extents: [], vdiskId: '', fromVersion: 0, toVersion: 0, segmentCount: 0 } as TableDeltaMsg;
  let last = 0;
  while (at < n) {
    const tag = buf[at++] as number;
    const no = tag >> 3;
    // Ascending, each once, except extents (5) repeated one after another.
    if (no < last || (no === last && no !== 5)) return null;
    last = no;
    if (tag === 0x2a) {
      const elen = varintAt(buf, n);
      if (elen < 0 || elen > n - at) return null;
      const x = fastExtent(buf, at + elen);
      if (x === null) return null;
      d.extents.push(x);
    } else if (tag === 0x0a) {
      const id = asciiAt(buf, n);
      if (id === null) return null;
      d.vdiskId = id;
    } else if (tag === 0x10 || tag === 0x18 || tag === 0x20 || tag === 0x38) {
      const v = varintAt(buf, n);
      if (v < 0) return null;
      if (tag === 0x10) d.fromVersion = v;
      else if (tag === 0x18) d.toVersion = v;
      else if (tag === 0x38) d.lazy = v !== 0;
      else if (v > U32_MAX) return null;
      else d.segmentCount = v;
    } else {
      return null;
    }
  }
  return { tableDelta: d, body: 'tableDelta' };
}

/** Appends a repeated uint32 field's values: packed (wire type 2) or one plain varint (0), as protobufjs accepts both. */
function readU32s(r: Reader, wt: number, out: number[]): void {
  if (wt === 0) {
    out.push(r.u32());
    return;
  }
  expectWire(wt, 2);
  const [start, end] = r.span();
  // Inline varints: a million-run table is a few million of these.
  const buf = r.buf;
  let pos = start;
  while (pos < end) {
    let b = buf[pos++] as number;
    let v = b & 0x7f;
    let mul = 0x80;
    while (b >= 0x80) {
      if (pos >= end || mul > 0x800000000) throw OFF_PATH;
      b = buf[pos++] as number;
      v += (b & 0x7f) * mul;
      mul *= 0x80;
    }
    if (v > U32_MAX) throw OFF_PATH;
    out.push(v);
  }
}

/**
 * TableFull, both forms: a whole table comes in these, and protobufjs took
 * about half of an agent's load time of a fragmented 1 TiB table decoding
 * it. A message with LU state (rare) is off this path.
 */
function readTableFull(r: Reader): TableFull {
  // Every field as protobufjs's toObject gives it (defaults and arrays); lu_state and lazy (optional) absent unless given.
  const t: TableFull = {
    containers: [],
    extents: [],
    runCounts: [],
    runStates: [],
    runContainers: [],
    runOffsets: [],
    runOwners: [],
    runLegCounts: [],
    runLegContainers: [],
    runLegOffsets: [],
    vdiskId: '',
    version: 0,
    segmentSize: 0,
    blockSize: 0,
    segmentCount: 0,
    firstSegment: 0,
    more: false,
  };
  // Singular fields seen twice are off the path (protobufjs keeps the last); repeated ones append.
  let seen = 0;
  let lazySeen = false;
  while (!r.done) {
    const tag = r.varint();
    const no = Math.floor(tag / 8);
    const wt = tag & 7;
    switch (no) {
      case 6:
        expectWire(wt, 2);
        (t.containers as string[]).push(r.ascii());
        continue;
      case 7: {
        expectWire(wt, 2);
        const [start, end] = r.span();
        t.extents.push(readExtent(new Reader(r.buf, start, end)));
        continue;
      }
      case 9:
        readU32s(r, wt, t.runCounts!);
        continue;
      case 10:
        readU32s(r, wt, t.runStates!);
        continue;
      case 11:
        readU32s(r, wt, t.runContainers!);
        continue;
      case 12:
        readU32s(r, wt, t.runOffsets!);
        continue;
      case 20:
        readU32s(r, wt, t.runOwners!);
        continue;
      case 21:
        readU32s(r, wt, t.runLegCounts!);
        continue;
      case 22:
        readU32s(r, wt, t.runLegContainers!);
        continue;
      case 23:
        readU32s(r, wt, t.runLegOffsets!);
        continue;
      default:
        break;
    }
    if (no === 24) {
      if (lazySeen) throw OFF_PATH;
      lazySeen = true;
      expectWire(wt, 0);
      t.lazy = r.varint() !== 0;
      continue;
    }
    if (no < 1 || no > 13 || no === 6 || no === 7 || no === 9 || no === 10 || no === 11 || no === 12) throw OFF_PATH;
    const bit = 1 << no;
    if (seen & bit) throw OFF_PATH;
    seen |= bit;
    if (no === 1) {
      expectWire(wt, 2);
      t.vdiskId = r.ascii();
      continue;
    }
    expectWire(wt, 0);
    if (no === 2) t.version = r.varint();
    else if (no === 3) t.segmentSize = r.u32();
    else if (no === 4) t.blockSize = r.u32();
    else if (no === 5) t.segmentCount = r.u32();
    else if (no === 8) t.firstSegment = r.u32();
    else t.more = r.varint() !== 0; // 13
  }
  return t;
}

function readFaultReply(r: Reader): FaultReply {
  const f: FaultReply = { faultId: 0, action: 0, tableVersion: 0, senseKey: 0, asc: 0, ascq: 0, reason: '' };
  fields(r, 0, (no, wt) => {
    if (no === 7) {
      expectWire(wt, 2);
      f.reason = r.ascii();
      return;
    }
    expectWire(wt, 0);
    switch (no) {
      case 1:
        f.faultId = r.varint();
        return;
      case 2:
        f.action = r.enumValue();
        return;
      case 3:
        f.tableVersion = r.varint();
        return;
      case 4:
        f.senseKey = r.u32();
        return;
      case 5:
        f.asc = r.u32();
        return;
      case 6:
        f.ascq = r.u32();
        return;
      default:
        throw OFF_PATH;
    }
  });
  return f;
}

function readSeqOnly(r: Reader): HeartbeatReply {
  const h: HeartbeatReply = { seq: 0 };
  fields(r, 0, (no, wt) => {
    if (no !== 1) throw OFF_PATH;
    expectWire(wt, 0);
    h.seq = r.varint();
  });
  return h;
}

function readTableAck(r: Reader): TableAck {
  const a: TableAck = { vdiskId: '', version: 0 };
  fields(r, 0, (no, wt) => {
    if (no === 1) {
      expectWire(wt, 2);
      a.vdiskId = r.ascii();
    } else if (no === 2) {
      expectWire(wt, 0);
      a.version = r.varint();
    } else {
      throw OFF_PATH;
    }
  });
  return a;
}

function readHeartbeat(r: Reader): Heartbeat {
  const h: Heartbeat = { seq: 0, heldIos: 0, draining: false };
  fields(r, 0, (no, wt) => {
    expectWire(wt, 0);
    if (no === 1) h.seq = r.varint();
    else if (no === 2) h.heldIos = r.u32();
    else if (no === 3) h.draining = r.varint() !== 0;
    else throw OFF_PATH;
  });
  return h;
}

function readFault(r: Reader): Fault {
  const f: Fault = { faultId: 0, vdiskId: '', tableVersion: 0, segment: 0, op: 0, lba: 0, blocks: 0, state: 0, detail: '' };
  fields(r, 0, (no, wt) => {
    if (no === 2 || no === 9 || no === 10) {
      expectWire(wt, 2);
      if (no === 2) f.vdiskId = r.ascii();
      else if (no === 9) f.detail = r.ascii();
      else f.failedContainer = r.ascii();
      return;
    }
    expectWire(wt, 0);
    switch (no) {
      case 1:
        f.faultId = r.varint();
        return;
      case 3:
        f.tableVersion = r.varint();
        return;
      case 4:
        f.segment = r.u32();
        return;
      case 5:
        f.op = r.enumValue();
        return;
      case 6:
        f.lba = r.varint();
        return;
      case 7:
        f.blocks = r.u32();
        return;
      case 8:
        f.state = r.enumValue();
        return;
      default:
        throw OFF_PATH;
    }
  });
  return f;
}

/** The wrapper's one field: its number and the Reader over its bytes, or null. */
function oneField(buf: Buffer): [number, Reader] | null {
  const r = new Reader(buf, 0, buf.length);
  if (r.done) return null;
  const tag = r.varint();
  if ((tag & 7) !== 2) return null;
  const [start, end] = r.span();
  // A second field (another member of the oneof, or unknown): protobufjs decides.
  if (!r.done) return null;
  return [Math.floor(tag / 8), new Reader(buf, start, end)];
}

/** Decodes TableFull, TableDelta, FaultReply and HeartbeatReply ControllerMessages as protobufjs would (decode, then toObject); null otherwise. */
export function tryDecodeControllerMessage(buf: Buffer): ControllerMessage | null {
  // ControllerMessage.table_delta (4, length-delimited): the message of every table change.
  if (buf[0] === 0x22) {
    const m = fastTableDelta(buf);
    if (m !== null) return m;
  }
  try {
    const f = oneField(buf);
    if (f === null) return null;
    const [no, r] = f;
    switch (no) {
      case 3:
        return { tableFull: readTableFull(r), body: 'tableFull' };
      case 4:
        return { tableDelta: readTableDelta(r), body: 'tableDelta' };
      case 5:
        return { faultReply: readFaultReply(r), body: 'faultReply' };
      case 11:
        return { heartbeatReply: readSeqOnly(r), body: 'heartbeatReply' };
      default:
        return null;
    }
  } catch (e) {
    if (e === OFF_PATH) return null;
    throw e;
  }
}

/** Decodes TableAck, Fault and Heartbeat AgentMessages as protobufjs would (decode, then toObject); null otherwise. */
export function tryDecodeAgentMessage(buf: Buffer): AgentMessage | null {
  try {
    const f = oneField(buf);
    if (f === null) return null;
    const [no, r] = f;
    switch (no) {
      case 2:
        return { heartbeat: readHeartbeat(r), body: 'heartbeat' };
      case 3:
        return { tableAck: readTableAck(r), body: 'tableAck' };
      case 5:
        return { fault: readFault(r), body: 'fault' };
      default:
        return null;
    }
  } catch (e) {
    if (e === OFF_PATH) return null;
    throw e;
  }
}
