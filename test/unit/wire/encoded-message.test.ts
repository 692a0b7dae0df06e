import { expect } from 'chai';
import { EncodedMessage, agentServiceDefinition, encodeControllerMessage } from '../../../src/wire/grpc.js';
import type { ControllerMessage } from '../../../src/wire/proto-types.js';

describe('wire: a message encoded once for many streams', () => {
  const connect = agentServiceDefinition().Connect!;

  it('the stream serializer passes the encoded bytes through as they are', () => {
    const e = encodeControllerMessage({ body: 'heartbeatReply', heartbeatReply: { seq: 5 } });
    expect(e).to.be.instanceOf(EncodedMessage);
    expect(e.body).to.equal('heartbeatReply');
    // ControllerMessage field 11 (heartbeat_reply), length 2: HeartbeatReply field 1 (seq) = 5.
    expect(e.bytes.toString('hex')).to.equal('5a020805');
    expect(connect.responseSerialize(e)).to.equal(e.bytes);
  });

  it('a delta encoded once decodes as the message it was made from, and as the same bytes a plain write makes', () => {
    const msg: ControllerMessage = {
      body: 'tableDelta',
      tableDelta: {
        vdiskId: '0c2b6f0e-1111-4222-8333-444455556666',
        fromVersion: 7,
        toVersion: 8,
        segmentCount: 64,
        extents: [{ first: 3, count: 2, state: 0, container: 'aaaaaaaa-0000-4000-8000-00000000000a', offset: 9 }],
      },
    };
    const e = encodeControllerMessage(msg);
    expect(connect.responseSerialize(msg)).to.deep.equal(e.bytes);
    expect(connect.responseDeserialize(e.bytes)).to.deep.include({ body: 'tableDelta', tableDelta: msg.tableDelta });
  });
});
