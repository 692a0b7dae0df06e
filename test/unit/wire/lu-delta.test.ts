import { expect } from 'chai';
import { tryDecodeControllerMessage, tryEncodeControllerMessage } from '../../../src/wire/stream-codec.js';
import { decodeMessage, encodeMessage, messageType } from '../../../src/wire/grpc.js';
import { LuEventScope, LuRequestKind, type AgentMessage, type ControllerMessage } from '../../../src/wire/proto-types.js';

// A table delta that carries LU state (rare: PROUT, RESERVE, resets) goes
// through protobufjs; the common delta stays on the hand-written fast path,
// its bytes as they were.

const C = messageType('ControllerMessage');
const A = messageType('AgentMessage');
const nexus = { initiatorPort: 'iqn.2007-10.test:one,i,0x000000000001', targetPort: 'iqn.2026-11.org.tabula:d,t,0x0001', relativeTargetPortId: 1, targetPortGroup: 1 };
const plain = { vdiskId: '0c2b6f0e-1111-4222-8333-444455556666', fromVersion: 7, toVersion: 8, segmentCount: 64, extents: [] };

describe('wire: LU state in table deltas', () => {
  it('keeps a delta without LU state on the fast path, byte for byte', () => {
    const m: ControllerMessage = { body: 'tableDelta', tableDelta: plain };
    const fast = tryEncodeControllerMessage(m);
    expect(fast).to.not.equal(null);
    // ControllerMessage field 4 (table_delta): vdisk id, versions, segment count; nothing after them.
    const pb = C.encode(C.fromObject(m)).finish();
    expect(fast!.equals(Buffer.from(pb))).to.equal(true);
    expect(tryDecodeControllerMessage(fast!)).to.deep.equal({ body: 'tableDelta', tableDelta: plain });
  });

  it('sends a delta with LU state and events through protobufjs, and decodes it whole', () => {
    const lu = {
      state: { prGeneration: 3, aptpl: true, registrations: [{ key: '00000000000000ab', nexus, allTgPt: true }], reservationType: 7, reservationHolder: '', spc2Holder: null, modePages: [{ page: 8, subpage: 0, values: '0812000000000000ffffffff0000000000000000' }] },
      events: [{ senseKey: 6, asc: 0x2a, ascq: 0x05, scope: LuEventScope.Only, nexus, abortTasks: false }],
    };
    const m: ControllerMessage = { body: 'tableDelta', tableDelta: { ...plain, lu } };
    expect(tryEncodeControllerMessage(m)).to.equal(null);
    const bytes = encodeMessage(C, m);
    expect(tryDecodeControllerMessage(bytes)).to.equal(null);
    const back = decodeMessage<ControllerMessage>(C, bytes);
    expect(back.body).to.equal('tableDelta');
    expect(back.body === 'tableDelta' && back.tableDelta.lu).to.deep.include(lu);
  });

  it('carries LuRequest and LuReply', () => {
    const req: AgentMessage = {
      body: 'luRequest',
      luRequest: { requestId: 9, vdiskId: 'v', kind: LuRequestKind.LuReset, cdb: Buffer.from([1, 2]), data: Buffer.alloc(0), nexus },
    };
    expect(decodeMessage<AgentMessage>(A, encodeMessage(A, req))).to.deep.include({ body: 'luRequest' });
    const reply: ControllerMessage = {
      body: 'luReply',
      luReply: { requestId: 9, status: 2, senseKey: 5, asc: 0x24, ascq: 0, fieldValid: true, fieldInCdb: true, fieldByte: 1, fieldBit: 8, prGeneration: 4, reason: 'x' },
    };
    expect(decodeMessage<ControllerMessage>(C, encodeMessage(C, reply))).to.deep.equal(reply);
  });
});
