// Mirrored vdisks on the wire: extra legs in extents (hand-written stream
// codec and protobufjs alike), in the run form of TableFull, leg faults and
// ContainerShare.near; a one-copy table travels as the same bytes as before.
import { expect } from 'chai';
import type protobuf from 'protobufjs';
import { MappingTable, SegmentState, diff, tableRuns, toExtents } from '../../../src/table/index.js';
import { decodeMessage, encodeMessage, messageType } from '../../../src/wire/grpc.js';
import { tryDecodeAgentMessage, tryDecodeControllerMessage, tryEncodeAgentMessage, tryEncodeControllerMessage } from '../../../src/wire/stream-codec.js';
import { fromWireExtent, wireExtent } from '../../../src/wire/table-extents.js';
import type { AgentMessage, ContainerSet, ControllerMessage, TableFull, WireExtent } from '../../../src/wire/proto-types.js';

const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, enums: Number, defaults: true, arrays: true, objects: true, oneofs: true };
const A = messageType('AgentMessage');
const C = messageType('ControllerMessage');
const pbEncode = (t: protobuf.Type, m: object): Buffer => Buffer.from(t.encode(t.fromObject(m as Record<string, unknown>)).finish());
const pbDecode = (t: protobuf.Type, b: Buffer): unknown => t.toObject(t.decode(b), TO_OBJECT);

const C1 = '11111111-aaaa-4bbb-8ccc-000000000001';
const C2 = '22222222-aaaa-4bbb-8ccc-000000000002';
const C3 = '33333333-aaaa-4bbb-8ccc-000000000003';
const N = SegmentState.Normal;

function delta(extents: WireExtent[]): ControllerMessage {
  return { body: 'tableDelta', tableDelta: { vdiskId: 'v', fromVersion: 4, toVersion: 5, segmentCount: 9, extents } };
}

describe('wire: mirrored legs', () => {
  it('extents with legs: the hand-written codec makes the bytes and objects protobufjs makes', () => {
    const legs = (...l: [string, number][]): WireExtent['legs'] => ({ list: l.map(([container, offset]) => ({ container, offset })) });
    const cases: WireExtent[][] = [
      [{ first: 2, count: 3, state: N, container: C1, offset: 7, legs: legs([C2, 9]) }],
      [
        { first: 0, count: 1, state: N, container: C1, offset: 0, owner: 3, legs: legs([C2, 0], [C3, 2 ** 32 - 1]) },
        { first: 1, count: 1, state: SegmentState.Zero, container: '', offset: 0 },
        { first: 2, count: 7, state: SegmentState.NoWrite, container: C3, offset: 128, legs: legs([C1, 16384]) },
      ],
    ];
    for (const extents of cases) {
      const m = delta(extents);
      const mine = tryEncodeControllerMessage(m);
      expect(mine).to.not.equal(null);
      expect(mine!.toString('hex')).to.equal(pbEncode(C, m).toString('hex'));
      const back = tryDecodeControllerMessage(mine!);
      expect(back).to.deep.equal(pbDecode(C, mine!));
      expect(back).to.deep.equal(m);
    }
    // An empty legs message is left to protobufjs (it is not what wireExtent makes).
    expect(tryEncodeControllerMessage(delta([{ first: 0, count: 1, state: N, container: C1, offset: 0, legs: { list: [] } }]))).to.equal(null);
  });

  it('a one-copy extent has no legs key, on the wire or decoded', () => {
    const e = wireExtent({ first: 0, count: 2, state: N, container: C1, offset: 4 });
    expect(e).to.deep.equal({ first: 0, count: 2, state: N, container: C1, offset: 4 });
    const bytes = encodeMessage(C, delta([e]));
    expect(decodeMessage<ControllerMessage>(C, bytes)).to.deep.equal(delta([e]));
    expect(pbDecode(C, bytes)).to.deep.equal(delta([e]));
    expect(fromWireExtent(e)).to.deep.equal({ first: 0, count: 2, state: N, container: C1, offset: 4 });
  });

  it('wireExtent and fromWireExtent carry the legs; a delta applies with them', () => {
    const a = new MappingTable({ segmentCount: 8, version: 1 });
    const b = a.clone();
    b.setRange(1, 4, { state: N, container: C1, offset: 10, legs: [{ container: C2, offset: 0 }, { container: C3, offset: 40 }] });
    b.bumpVersion();
    const d = diff(a, b);
    const wire = d.extents.map(wireExtent);
    expect(wire).to.deep.equal([
      { first: 1, count: 4, state: N, container: C1, offset: 10, legs: { list: [{ container: C2, offset: 0 }, { container: C3, offset: 40 }] } },
    ]);
    const m = decodeMessage<ControllerMessage>(C, encodeMessage(C, delta(wire)));
    const got = m.body === 'tableDelta' ? m.tableDelta.extents.map(fromWireExtent) : [];
    expect(got).to.deep.equal(d.extents);
  });

  it('leg faults carry the failed container; other faults are the bytes and objects they were', () => {
    const fault = { faultId: 9, vdiskId: 'v', tableVersion: 3, segment: 17, op: 1, lba: 17 * 2048, blocks: 8, state: N, detail: 'EIO' };
    const plain: AgentMessage = { body: 'fault', fault };
    expect(tryDecodeAgentMessage(tryEncodeAgentMessage(plain)!)).to.deep.equal(plain);
    expect(pbDecode(A, pbEncode(A, plain))).to.deep.equal(plain);
    const leg: AgentMessage = { body: 'fault', fault: { ...fault, failedContainer: C2 } };
    const mine = tryEncodeAgentMessage(leg)!;
    expect(mine.toString('hex')).to.equal(pbEncode(A, leg).toString('hex'));
    expect(tryDecodeAgentMessage(mine)).to.deep.equal(leg);
    expect(pbDecode(A, mine)).to.deep.equal(leg);
  });

  it('ContainerShare.near round-trips', () => {
    const set: ContainerSet = { containers: [{ id: C1, shared: false, near: true }, { id: C2, shared: true, near: false }] };
    const T = messageType('ContainerSet');
    expect(pbDecode(T, pbEncode(T, set))).to.deep.equal(set);
  });

  it('TableFull run form: legs in run_leg_*; a one-copy table is the same bytes as without the leg fields', () => {
    const T = messageType('TableFull');
    const full = (t: MappingTable): TableFull[] =>
      [...tableRuns(t, 3)].map((r) => ({
        vdiskId: 'v',
        version: t.version,
        segmentSize: t.segmentSize,
        blockSize: t.blockSize,
        segmentCount: t.segmentCount,
        containers: [...t.containers],
        extents: [],
        firstSegment: r.firstSegment,
        runCounts: r.counts,
        runStates: r.states,
        runContainers: r.containers,
        runOffsets: r.offsets,
        ...(r.legCounts !== undefined ? { runLegCounts: r.legCounts, runLegContainers: r.legContainers, runLegOffsets: r.legOffsets } : {}),
        more: false,
      }));
    const one = new MappingTable({ segmentCount: 10, version: 2 });
    one.setRange(0, 4, { state: N, container: C1, offset: 10 });
    one.set(7, { state: N, container: C2, offset: 1 });
    for (const m of full(one)) {
      expect(m).to.not.have.property('runLegCounts');
      const withEmpty = { ...m, runLegCounts: [], runLegContainers: [], runLegOffsets: [] };
      expect(pbEncode(T, m).toString('hex')).to.equal(pbEncode(T, withEmpty).toString('hex'));
      const back = pbDecode(T, pbEncode(T, m)) as TableFull;
      expect([back.runLegCounts, back.runLegContainers, back.runLegOffsets]).to.deep.equal([[], [], []]);
    }
    const two = one.clone();
    two.setRange(0, 4, { state: N, container: C1, offset: 10, legs: [{ container: C3, offset: 0 }] });
    two.set(7, { state: N, container: C2, offset: 1, legs: [{ container: C1, offset: 99 }, { container: C3, offset: 4 }] });
    const pieces = full(two).map((m) => pbDecode(T, pbEncode(T, m)) as TableFull);
    // Runs 0-3 (one extra leg), 4-6 zero, 7 (two) | 8-9 zero: the second piece has no legs.
    expect(pieces.map((p) => p.runLegCounts)).to.deep.equal([[1, 0, 2], []]);
    expect(two.containers).to.deep.equal([C1, C2, C3]);
    expect(pieces[0]!.runLegContainers).to.deep.equal([3, 1, 3]);
    expect(pieces[0]!.runLegOffsets).to.deep.equal([0, 99, 4]);
    expect(toExtents(two)[2]).to.deep.equal({ first: 7, count: 1, state: N, container: C2, offset: 1, legs: [{ container: C1, offset: 99 }, { container: C3, offset: 4 }] });
  });
});

describe('wire: TableFull on the hand-written path', () => {
  const T = messageType('ControllerMessage');
  const rand = (seed: number): (() => number) => {
    let s = seed >>> 0;
    return () => {
      s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
      return s / 2 ** 32;
    };
  };
  const U32 = [0, 1, 127, 128, 16384, 2 ** 31, 2 ** 32 - 1];

  function randomFull(r: () => number): TableFull {
    const pick = <X>(xs: readonly X[]): X => xs[Math.floor(r() * xs.length)] as X;
    const n = Math.floor(r() * 6);
    const arr = (k: number): number[] => Array.from({ length: k }, () => pick(U32));
    const runs = r() < 0.5;
    const legs = r() < 0.5;
    const full: TableFull = {
      vdiskId: pick(['', 'v', '0c2b6f0e-1111-4222-8333-444455556666']),
      version: pick([0, 1, 2 ** 40 + 3]),
      segmentSize: pick(U32),
      blockSize: pick([0, 512, 4096]),
      segmentCount: pick(U32),
      containers: Array.from({ length: Math.floor(r() * 3) }, () => pick([C1, C2, C3, ''])),
      extents: runs
        ? []
        : Array.from({ length: n }, () => ({
            first: pick(U32),
            count: pick(U32),
            state: pick([0, 1, 2, 3, 4]),
            container: pick(['', C1]),
            offset: pick(U32),
            ...(r() < 0.3 ? { owner: pick(U32) } : {}),
            ...(legs ? { legs: { list: [{ container: C2, offset: pick(U32) }] } } : {}),
          })),
    };
    if (runs) {
      Object.assign(full, { firstSegment: pick(U32), runCounts: arr(n), runStates: arr(n), runContainers: arr(n), runOffsets: arr(n), more: r() < 0.5 });
      if (r() < 0.3) full.runOwners = arr(n);
      if (legs) Object.assign(full, { runLegCounts: arr(n), runLegContainers: arr(n + 1), runLegOffsets: arr(n + 1) });
    }
    return full;
  }

  it('encodes and decodes both forms, legs and owners included, as protobufjs does', () => {
    const r = rand(21);
    for (let i = 0; i < 400; i++) {
      const m: ControllerMessage = { body: 'tableFull', tableFull: randomFull(r) };
      const bytes = pbEncode(T, m);
      expect(tryEncodeControllerMessage(m)?.toString('hex'), JSON.stringify(m)).to.equal(bytes.toString('hex'));
      const mine = tryDecodeControllerMessage(bytes);
      expect(mine, JSON.stringify(m)).to.not.equal(null);
      expect(mine, JSON.stringify(m)).to.deep.equal(pbDecode(T, bytes));
    }
  });

  it('leaves a TableFull with LU state, values a field cannot hold, or a singular field twice, to protobufjs', () => {
    const full: TableFull = { ...randomFull(rand(3)), luState: { prGeneration: 1, aptpl: false, registrations: [], reservationType: 0, reservationHolder: '' } };
    const bytes = pbEncode(T, { body: 'tableFull', tableFull: full });
    expect(tryEncodeControllerMessage({ body: 'tableFull', tableFull: full })).to.equal(null);
    expect(tryDecodeControllerMessage(bytes)).to.equal(null);
    const base = randomFull(rand(4));
    expect(tryEncodeControllerMessage({ body: 'tableFull', tableFull: { ...base, runCounts: [2 ** 32] } })).to.equal(null);
    expect(tryEncodeControllerMessage({ body: 'tableFull', tableFull: { ...base, runLegOffsets: [-1] } })).to.equal(null);
    expect(tryEncodeControllerMessage({ body: 'tableFull', tableFull: { ...base, containers: ['é'] } })).to.equal(null);
    expect((decodeMessage<ControllerMessage>(T, bytes) as { tableFull: TableFull }).tableFull.luState).to.not.equal(undefined);
    // ControllerMessage.table_full { segment_count 1, segment_count 2 }
    expect(tryDecodeControllerMessage(Buffer.from('1a0428012802', 'hex'))).to.equal(null);
    // Unpacked run_counts (two plain varints) decode as protobufjs reads them.
    const unpacked = Buffer.from('1a0448034805', 'hex');
    expect(tryDecodeControllerMessage(unpacked)).to.deep.equal(pbDecode(T, unpacked));
    // A packed run count over 2^32 - 1: protobufjs decides (it truncates).
    expect(tryDecodeControllerMessage(Buffer.from('1a074a058080808010', 'hex'))).to.equal(null);
    // Truncated packed varint.
    expect(tryDecodeControllerMessage(Buffer.from('1a034a0180', 'hex'))).to.equal(null);
  });
});
