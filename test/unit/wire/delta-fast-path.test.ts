import { expect } from 'chai';
import type protobuf from 'protobufjs';
import { tryDecodeControllerMessage } from '../../../src/wire/stream-codec.js';
import { messageType } from '../../../src/wire/grpc.js';
import type { ControllerMessage, TableDeltaMsg, WireExtent } from '../../../src/wire/proto-types.js';

// tryDecodeControllerMessage reads a TableDelta first on a fast path that
// takes only the shape the controller writes and leaves everything else to
// the general readers (or protobufjs). Whichever path answers, the answer is
// what protobufjs decodes, or null where protobufjs must decide.

const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, enums: Number, defaults: true, arrays: true, objects: true, oneofs: true };
const C = messageType('ControllerMessage');
const E = messageType('Extent');

function pbEncode(t: protobuf.Type, m: object): Buffer {
  return Buffer.from(t.encode(t.fromObject(m as Record<string, unknown>)).finish());
}

/** What protobufjs makes of the bytes, or 'throws'. */
function pbDecode(b: Buffer): unknown {
  try {
    return C.toObject(C.decode(b), TO_OBJECT);
  } catch {
    return 'throws';
  }
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return s / 2 ** 32;
  };
}

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)] as T;
}

const U32 = [0, 1, 127, 128, 16383, 16384, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1];
const U64 = [...U32, 2 ** 32, 2 ** 35 + 3, 2 ** 53 - 1];
const IDS = ['', 'v', '91c4d811-e1e4-4bc7-b20a-0123456789ab', 'c'.repeat(200)];

function extent(r: () => number): WireExtent {
  const e: WireExtent = { first: pick(r, U32), count: pick(r, U32), state: pick(r, [0, 1, 2, 3, 4]), container: pick(r, IDS), offset: pick(r, U32) };
  const k = r();
  if (k < 0.2) e.owner = pick(r, U32);
  else if (k < 0.3) e.legs = { list: [{ container: pick(r, IDS), offset: pick(r, U32) }] };
  return e;
}

function delta(r: () => number): TableDeltaMsg {
  const d: TableDeltaMsg = {
    vdiskId: pick(r, IDS),
    fromVersion: pick(r, U64),
    toVersion: pick(r, U64),
    segmentCount: pick(r, U32),
    extents: Array.from({ length: Math.floor(r() * 4) }, () => extent(r)),
  };
  if (r() < 0.3) d.lazy = r() < 0.5;
  return d;
}

/** ControllerMessage{table_delta} around `inner`, the TableDelta's bytes. */
function wrapDelta(inner: Buffer): Buffer {
  const len: number[] = [];
  for (let v = inner.length; ; v >>>= 7) {
    if (v < 0x80) {
      len.push(v);
      break;
    }
    len.push((v & 0x7f) | 0x80);
  }
  return Buffer.concat([Buffer.from([0x22, ...len]), inner]);
}

/** A field's bytes: tag and value (varint, or length-delimited bytes). */
function field(no: number, v: number | Buffer): Buffer {
  const varint = (x: number): number[] => {
    const out: number[] = [];
    while (x > 0x7f) {
      out.push((x % 0x80) | 0x80);
      x = Math.floor(x / 0x80);
    }
    out.push(x);
    return out;
  };
  if (typeof v === 'number') return Buffer.from([...varint(no << 3), ...varint(v)]);
  return Buffer.concat([Buffer.from([...varint((no << 3) | 2), ...varint(v.length)]), v]);
}

function agrees(bytes: Buffer, what: string): void {
  const mine = tryDecodeControllerMessage(bytes);
  const theirs = pbDecode(bytes);
  if (mine === null) return; // protobufjs decides
  expect(theirs, `${what}: decoded what protobufjs rejects`).to.not.equal('throws');
  expect(mine, what).to.deep.equal(theirs);
}

describe('wire: the TableDelta fast path of tryDecodeControllerMessage', () => {
  it('decodes the deltas the controller writes (owners, lazy, edge values) as protobufjs does, legs included', () => {
    const r = rng(18);
    for (let i = 0; i < 800; i++) {
      const m: ControllerMessage = { body: 'tableDelta', tableDelta: delta(r) };
      const bytes = pbEncode(C, m);
      const mine = tryDecodeControllerMessage(bytes);
      expect(mine, JSON.stringify(m)).to.not.equal(null);
      expect(mine, JSON.stringify(m)).to.deep.equal(pbDecode(bytes));
    }
  });

  it('decodes fields in any order, repeated, unknown or with another wire type as protobufjs does, or leaves them to it', () => {
    const r = rng(7);
    for (let i = 0; i < 600; i++) {
      const d = delta(r);
      const parts: Buffer[] = [
        field(1, Buffer.from(d.vdiskId, 'latin1')),
        field(2, d.fromVersion),
        field(3, d.toVersion),
        field(4, d.segmentCount),
        ...d.extents.map((e) => field(5, pbEncode(E, e))),
      ];
      if (d.lazy !== undefined) parts.push(field(7, d.lazy ? 1 : 0));
      // Shuffle, repeat one, add an unknown field or a field of another wire type.
      for (let k = parts.length - 1; k > 0; k--) {
        const j = Math.floor(r() * (k + 1));
        [parts[k], parts[j]] = [parts[j] as Buffer, parts[k] as Buffer];
      }
      const x = r();
      if (x < 0.2) parts.push(parts[Math.floor(r() * parts.length)] as Buffer);
      else if (x < 0.3) parts.push(field(9, 5));
      else if (x < 0.4) parts.push(field(2, Buffer.from('ab')));
      else if (x < 0.5) parts.push(field(6, pbEncode(messageType('LuChange'), { events: [] })));
      agrees(wrapDelta(Buffer.concat(parts)), `case ${i}`);
    }
  });

  it('never answers differently from protobufjs for truncated or corrupted bytes', () => {
    const r = rng(99);
    for (let i = 0; i < 3000; i++) {
      const bytes = pbEncode(C, { body: 'tableDelta', tableDelta: delta(r) });
      const bad = Buffer.from(bytes);
      const how = r();
      if (how < 0.3) {
        agrees(bad.subarray(0, Math.floor(r() * bad.length)), `truncated ${i}`);
        continue;
      }
      const flips = 1 + Math.floor(r() * 3);
      for (let k = 0; k < flips; k++) bad[Math.floor(r() * bad.length)] = Math.floor(r() * 256);
      agrees(bad, `corrupted ${i}`);
    }
  });

  it('keeps the general readers for a delta in extents the fast path does not take (a TableDelta read as protobufjs reads it)', () => {
    // An extent with its fields out of order, and one with legs.
    const e = Buffer.concat([field(5, 3), field(1, 2), field(2, 1)]);
    const legs = pbEncode(E, { first: 1, count: 1, state: 1, container: 'c', offset: 2, legs: { list: [{ container: 'd', offset: 3 }] } });
    const bytes = wrapDelta(Buffer.concat([field(1, Buffer.from('v')), field(3, 2), field(5, e), field(5, legs)]));
    const mine = tryDecodeControllerMessage(bytes);
    expect(mine).to.not.equal(null);
    expect(mine).to.deep.equal(pbDecode(bytes));
  });
});
