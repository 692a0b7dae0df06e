import { expect } from 'chai';
import type protobuf from 'protobufjs';
import { tryDecodeAgentMessage, tryDecodeControllerMessage, tryEncodeAgentMessage, tryEncodeControllerMessage } from '../../../src/wire/stream-codec.js';
import { agentServiceDefinition, messageType } from '../../../src/wire/grpc.js';
import type { AgentMessage, ControllerMessage, TableDeltaMsg, TableFull } from '../../../src/wire/proto-types.js';

// The hand-written codec must be indistinguishable from protobufjs: the same
// bytes for what it encodes, the same objects (decode + toObject with the
// project's options) for what it decodes, and no answer at all (null) for
// anything it does not handle exactly, so protobufjs takes over.

const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, enums: Number, defaults: true, arrays: true, objects: true, oneofs: true };
const A = messageType('AgentMessage');
const C = messageType('ControllerMessage');

function pbEncode(t: protobuf.Type, m: object): Buffer {
  return Buffer.from(t.encode(t.fromObject(m as Record<string, unknown>)).finish());
}
function pbDecode(t: protobuf.Type, b: Buffer): unknown {
  return t.toObject(t.decode(b), TO_OBJECT);
}

/** A small deterministic PRNG: failures reproduce. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return s / 2 ** 32;
  };
}

const EDGE_U32 = [0, 1, 127, 128, 16383, 16384, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1];
const EDGE_U64 = [...EDGE_U32, 2 ** 32, 2 ** 35 + 3, 2 ** 53 - 1];
const STRINGS = ['', 'v', '91c4d811-e1e4-4bc7-b20a-0123456789ab', 'container full: x'.repeat(20)];

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)] as T;
}

function controllerMessages(seed: number, n: number): ControllerMessage[] {
  const r = rng(seed);
  const out: ControllerMessage[] = [];
  for (let i = 0; i < n; i++) {
    const k = i % 3;
    if (k === 0) {
      const extents = Array.from({ length: Math.floor(r() * 4) }, () => ({
        first: pick(r, EDGE_U32),
        count: pick(r, EDGE_U32),
        state: pick(r, [0, 1, 2, 3, 4]),
        container: pick(r, STRINGS),
        offset: pick(r, EDGE_U32),
      }));
      out.push({
        body: 'tableDelta',
        tableDelta: { vdiskId: pick(r, STRINGS), fromVersion: pick(r, EDGE_U64), toVersion: pick(r, EDGE_U64), segmentCount: pick(r, EDGE_U32), extents },
      });
    } else if (k === 1) {
      out.push({
        body: 'faultReply',
        faultReply: {
          faultId: pick(r, EDGE_U64),
          action: pick(r, [0, 1, 2, 3]),
          tableVersion: pick(r, EDGE_U64),
          senseKey: pick(r, EDGE_U32),
          asc: pick(r, EDGE_U32),
          ascq: pick(r, EDGE_U32),
          reason: pick(r, STRINGS),
        },
      });
    } else {
      out.push({ body: 'heartbeatReply', heartbeatReply: { seq: pick(r, EDGE_U64) } });
    }
  }
  return out;
}

function agentMessages(seed: number, n: number): AgentMessage[] {
  const r = rng(seed);
  const out: AgentMessage[] = [];
  for (let i = 0; i < n; i++) {
    const k = i % 3;
    if (k === 0) out.push({ body: 'tableAck', tableAck: { vdiskId: pick(r, STRINGS), version: pick(r, EDGE_U64) } });
    else if (k === 1) out.push({ body: 'heartbeat', heartbeat: { seq: pick(r, EDGE_U64), heldIos: pick(r, EDGE_U32), draining: pick(r, [false, true]) } });
    else {
      out.push({
        body: 'fault',
        fault: {
          faultId: pick(r, EDGE_U64),
          vdiskId: pick(r, STRINGS),
          tableVersion: pick(r, EDGE_U64),
          segment: pick(r, EDGE_U32),
          op: pick(r, [0, 1, 2, 3, 4, 5]),
          lba: pick(r, EDGE_U64),
          blocks: pick(r, EDGE_U32),
          state: pick(r, [0, 1, 2, 3, 4]),
          detail: pick(r, STRINGS),
        },
      });
    }
  }
  return out;
}

describe('wire: the hand-written codec of the table-change and fault stream messages', () => {
  it('encodes controller messages to the bytes protobufjs makes, and decodes them to the objects protobufjs makes', () => {
    for (const m of controllerMessages(1, 600)) {
      const mine = tryEncodeControllerMessage(m);
      expect(mine, m.body).to.not.equal(null);
      const theirs = pbEncode(C, m);
      expect(mine!.toString('hex'), JSON.stringify(m)).to.equal(theirs.toString('hex'));
      expect(tryDecodeControllerMessage(theirs), JSON.stringify(m)).to.deep.equal(pbDecode(C, theirs));
    }
  });

  it('encodes and decodes agent messages as protobufjs does', () => {
    for (const m of agentMessages(2, 600)) {
      const mine = tryEncodeAgentMessage(m);
      expect(mine, m.body).to.not.equal(null);
      const theirs = pbEncode(A, m);
      expect(mine!.toString('hex'), JSON.stringify(m)).to.equal(theirs.toString('hex'));
      expect(tryDecodeAgentMessage(theirs), JSON.stringify(m)).to.deep.equal(pbDecode(A, theirs));
    }
  });

  it('encodes a vdisk\'s acks from its cached id as protobufjs does: every version, long ids, an id that failed once', () => {
    const ids = ['0f8e2c1a-7d6b-4e5f-9a3b-2c1d0e9f8a7b', '', 'x'.repeat(200), 'vdisk-é'];
    for (let round = 0; round < 3; round++) {
      for (const vdiskId of ids) {
        for (const version of [0, 1, 127, 128, 300, 2 ** 32, 2 ** 53 - 1]) {
          const m: AgentMessage = { body: 'tableAck', tableAck: { vdiskId, version } };
          const mine = tryEncodeAgentMessage(m);
          if (vdiskId === 'vdisk-é') {
            expect(mine, 'non-ASCII id').to.equal(null);
            continue;
          }
          expect(mine?.toString('hex'), JSON.stringify(m)).to.equal(pbEncode(A, m).toString('hex'));
        }
      }
    }
    // A version it cannot hold exactly is declined after the id was cached too.
    expect(tryEncodeAgentMessage({ body: 'tableAck', tableAck: { vdiskId: ids[0]!, version: 2 ** 53 } })).to.equal(null);
  });

  it('declines what it does not handle exactly: other kinds, values a field cannot hold exactly, non-ASCII text', () => {
    expect(tryEncodeControllerMessage({ body: 'fence', fence: { vdiskId: 'v', reason: 'r' } } as ControllerMessage)).to.equal(null);
    expect(tryEncodeAgentMessage({ body: 'tableRequest', tableRequest: { vdiskId: 'v', haveVersion: 1, reason: '' } })).to.equal(null);
    expect(tryEncodeAgentMessage({ body: 'tableAck', tableAck: { vdiskId: 'v', version: 2 ** 53 } })).to.equal(null);
    expect(tryEncodeAgentMessage({ body: 'tableAck', tableAck: { vdiskId: 'v', version: -1 } })).to.equal(null);
    expect(tryEncodeAgentMessage({ body: 'tableAck', tableAck: { vdiskId: 'v', version: 1.5 } })).to.equal(null);
    expect(tryEncodeAgentMessage({ body: 'heartbeat', heartbeat: { seq: 1, heldIos: 2 ** 32 } })).to.equal(null);
    expect(tryEncodeAgentMessage({ body: 'tableAck', tableAck: { vdiskId: 'vdisk-é', version: 1 } })).to.equal(null);
    expect(tryEncodeAgentMessage({ body: 'tableAck', tableAck: null } as unknown as AgentMessage)).to.equal(null);
    // protobufjs then encodes them its own way, through the stream serializer.
    const connect = agentServiceDefinition().Connect!;
    const m: AgentMessage = { body: 'tableAck', tableAck: { vdiskId: 'vdisk-é', version: 1 } };
    expect(connect.requestDeserialize(connect.requestSerialize(m))).to.deep.equal(pbDecode(A, pbEncode(A, m)));
  });

  it('declines bytes off the plain path, so protobufjs decodes them or reports them malformed', () => {
    const delta = pbEncode(C, controllerMessages(3, 1)[0]!);
    const cases: [string, Buffer][] = [
      ['empty', Buffer.alloc(0)],
      ['another kind (fence)', pbEncode(C, { body: 'fence', fence: { vdiskId: 'v', reason: 'r' } })],
      ['truncated', delta.subarray(0, delta.length - 1)],
      ['two oneof members', Buffer.concat([delta, pbEncode(C, { body: 'heartbeatReply', heartbeatReply: { seq: 1 } })])],
      ['wrong wire type', Buffer.from('5a020d05', 'hex')],
      ['unknown field inside', Buffer.from('5a021005', 'hex')],
      ['field repeated', Buffer.from('5a0408050806', 'hex')],
      ['varint over 2^53', Buffer.from('5a0b08ffffffffffffffffff01', 'hex')],
      ['uint32 over 2^32 - 1', Buffer.from('120708808080801010', 'hex')],
      ['non-ASCII string', Buffer.from('1a050a03c3a978', 'hex')],
      ['garbage', Buffer.from('ffffffff', 'hex')],
    ];
    for (const [what, b] of cases) {
      expect(tryDecodeControllerMessage(b), what).to.equal(null);
      expect(tryDecodeAgentMessage(b), what).to.equal(null);
    }
    // Through the stream deserializer: protobufjs's answer, malformed or not.
    const connect = agentServiceDefinition().Connect!;
    const bad = connect.responseDeserialize(Buffer.from('ffffffff', 'hex')) as { body: string };
    expect(bad.body).to.equal('malformed');
    const two = connect.responseDeserialize(cases[3]![1]) as { body: string };
    expect(two.body).to.equal('heartbeatReply');
  });
});

describe('wire: Extent.owner on the hand-written path', () => {
  const delta = (owner?: number): ControllerMessage => ({
    body: 'tableDelta',
    tableDelta: {
      vdiskId: 'v',
      fromVersion: 4,
      toVersion: 5,
      segmentCount: 9,
      extents: [{ first: 2, count: 1, state: 0, container: 'c', offset: 3, ...(owner === undefined ? {} : { owner }) }],
    },
  });

  it('an unowned extent is the same bytes as before owners existed', () => {
    // ControllerMessage.table_delta(4) { vdisk_id "v", from 4, to 5, count 9, extents(5) { first 2, count 1, container "c", offset 3 } }
    expect(tryEncodeControllerMessage(delta())!.toString('hex')).to.equal('22140a0176100418052009' + '2a09' + '080210012201632803');
  });

  it('an owned extent encodes and decodes as protobufjs does, the owner included', () => {
    for (const owner of [0, 1, 300, 2 ** 32 - 1]) {
      const m = delta(owner);
      const mine = tryEncodeControllerMessage(m);
      expect(mine!.toString('hex')).to.equal(pbEncode(C, m).toString('hex'));
      const back = tryDecodeControllerMessage(mine!);
      expect(back).to.deep.equal(pbDecode(C, mine!));
      expect((back as { tableDelta: { extents: { owner?: number }[] } }).tableDelta.extents[0]!.owner).to.equal(owner);
    }
  });
});

describe('wire: lazy (committed, not yet durable) tables and SyncRequest/SyncReply', () => {
  const deltaMsg = (lazy?: boolean): TableDeltaMsg => ({
    vdiskId: 'v',
    fromVersion: 4,
    toVersion: 5,
    segmentCount: 9,
    extents: [{ first: 2, count: 1, state: 0, container: 'c', offset: 3 }],
    ...(lazy === undefined ? {} : { lazy }),
  });
  const delta = (lazy?: boolean): ControllerMessage => ({ body: 'tableDelta', tableDelta: deltaMsg(lazy) });
  const fullMsg = (lazy: boolean | undefined, runs: boolean): TableFull => ({
    vdiskId: 'v',
    version: 7,
    segmentSize: 1 << 20,
    blockSize: 512,
    segmentCount: 3,
    containers: ['c'],
    extents: runs ? [] : [{ first: 0, count: 3, state: 1, container: 'c', offset: 0 }],
    ...(runs ? { firstSegment: 0, runCounts: [3], runStates: [1], runContainers: [1], runOffsets: [0], more: true } : {}),
    ...(lazy === undefined ? {} : { lazy }),
  });
  const full = (lazy: boolean | undefined, runs: boolean): ControllerMessage => ({ body: 'tableFull', tableFull: fullMsg(lazy, runs) });
  const BEFORE = '22140a0176100418052009' + '2a09' + '080210012201632803';

  it('a durable delta (no lazy key, as the controller sends it) is the same bytes as before lazy existed, and decodes without the key', () => {
    const bytes = tryEncodeControllerMessage(delta())!;
    expect(bytes.toString('hex')).to.equal(BEFORE);
    expect(pbEncode(C, delta()).toString('hex')).to.equal(BEFORE);
    const back = tryDecodeControllerMessage(bytes) as { tableDelta: TableDeltaMsg };
    expect(back).to.deep.equal(pbDecode(C, bytes));
    expect(back.tableDelta).to.not.have.property('lazy');
  });

  it('lazy true or false encodes as protobufjs does (optional: written when given) and round-trips', () => {
    // ControllerMessage.table_delta with lazy (field 7) = 1 at the end.
    expect(tryEncodeControllerMessage(delta(true))!.toString('hex')).to.equal('22160a0176100418052009' + '2a09' + '080210012201632803' + '3801');
    for (const lazy of [false, true]) {
      const m = delta(lazy);
      const mine = tryEncodeControllerMessage(m)!;
      expect(mine.toString('hex'), String(lazy)).to.equal(pbEncode(C, m).toString('hex'));
      const back = tryDecodeControllerMessage(mine) as { tableDelta: TableDeltaMsg };
      expect(back).to.deep.equal(pbDecode(C, mine));
      expect(back.tableDelta).to.deep.equal(deltaMsg(lazy));
    }
  });

  it('a lazy full table, extents and run form, encodes and decodes as protobufjs does; a durable one is the bytes of before', () => {
    for (const runs of [false, true]) {
      const durable = tryEncodeControllerMessage(full(undefined, runs))!;
      expect(durable.toString('hex')).to.equal(pbEncode(C, full(undefined, runs)).toString('hex'));
      expect(tryDecodeControllerMessage(durable)).to.deep.equal(pbDecode(C, durable));
      expect((tryDecodeControllerMessage(durable) as { tableFull: TableFull }).tableFull).to.not.have.property('lazy');
      for (const lazy of [false, true]) {
        const m = full(lazy, runs);
        const mine = tryEncodeControllerMessage(m)!;
        expect(mine.toString('hex'), `${runs} ${lazy}`).to.equal(pbEncode(C, m).toString('hex'));
        const back = tryDecodeControllerMessage(mine) as { tableFull: TableFull };
        expect(back).to.deep.equal(pbDecode(C, mine));
        expect(back.tableFull.lazy).to.equal(lazy);
      }
    }
  });

  it('declines a lazy that is not a boolean, and lazy bytes off the plain path', () => {
    expect(tryEncodeControllerMessage({ body: 'tableDelta', tableDelta: { ...deltaMsg(), lazy: 1 } } as unknown as ControllerMessage)).to.equal(null);
    expect(tryEncodeControllerMessage({ body: 'tableFull', tableFull: { ...fullMsg(undefined, false), lazy: 'yes' } } as unknown as ControllerMessage)).to.equal(null);
    const lazyDelta = tryEncodeControllerMessage(delta(true))!;
    // lazy given twice (protobufjs keeps the last): off the path.
    const twice = Buffer.concat([Buffer.from([0x22, lazyDelta[1]! + 2]), lazyDelta.subarray(2), Buffer.from('3800', 'hex')]);
    expect(tryDecodeControllerMessage(twice)).to.equal(null);
    expect((pbDecode(C, twice) as { tableDelta: TableDeltaMsg }).tableDelta.lazy).to.equal(false);
    // lazy with the wrong wire type.
    const wrong = Buffer.concat([Buffer.from([0x22, lazyDelta[1]!]), lazyDelta.subarray(2, lazyDelta.length - 2), Buffer.from('3a00', 'hex')]);
    expect(tryDecodeControllerMessage(wrong)).to.equal(null);
    const fullLazy = tryEncodeControllerMessage(full(true, true))!;
    expect(fullLazy[1]! + 3).to.be.below(128);
    const fullTwice = Buffer.concat([Buffer.from([0x1a, fullLazy[1]! + 3]), fullLazy.subarray(2), Buffer.from('c00100', 'hex')]);
    expect(tryDecodeControllerMessage(fullTwice)).to.equal(null);
    expect((pbDecode(C, fullTwice) as { tableFull: TableFull }).tableFull.lazy).to.equal(false);
  });

  it('SyncRequest and SyncReply round-trip through the stream (de)serializers', () => {
    const connect = agentServiceDefinition().Connect!;
    const req: AgentMessage = { body: 'syncRequest', syncRequest: { requestId: 2 ** 40, vdiskId: 'v', version: 12 } };
    expect(tryEncodeAgentMessage(req)).to.equal(null);
    expect(connect.requestDeserialize(connect.requestSerialize(req))).to.deep.equal(req);
    for (const syncReply of [
      { requestId: 3, ok: true, durableVersion: 12, reason: '' },
      { requestId: 4, ok: false, durableVersion: 0, reason: 'vdisk v is gone' },
    ]) {
      const rep: ControllerMessage = { body: 'syncReply', syncReply };
      expect(tryEncodeControllerMessage(rep)).to.equal(null);
      expect(connect.responseDeserialize(connect.responseSerialize(rep))).to.deep.equal(rep);
    }
  });
});
