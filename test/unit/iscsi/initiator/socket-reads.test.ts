// The initiator's reused socket read buffer: reused while the parser holds
// nothing of it, replaced while it does (a PDU spanning reads), so bytes
// the parser keeps are never overwritten by the next read.
import { expect } from 'chai';
import { SocketReads } from '../../../../src/iscsi/initiator/connect.js';
import { PduParser } from '../../../../src/iscsi/pdu/parser.js';
import { encodePdu } from '../../../../src/iscsi/pdu/encode.js';
import { Opcode, RESERVED_TAG, type NopIn } from '../../../../src/iscsi/pdu/types.js';

function nopIn(itt: number): Buffer {
  const pdu: NopIn = { opcode: Opcode.NopIn, immediate: false, ahs: [], data: Buffer.alloc(0), lun: 0n, itt, ttt: RESERVED_TAG, statSN: 1, expCmdSN: 1, maxCmdSN: 1 };
  return Buffer.concat(encodePdu(pdu, { header: false, data: false }));
}

/** Copies `bytes` into the buffer the socket would read into, and delivers them as a read of that length. */
function deliver(reads: SocketReads, bytes: Buffer): Buffer {
  const o = reads.options();
  const buf = (o.buffer as () => Buffer)();
  bytes.copy(buf);
  expect(o.callback(bytes.length, buf)).to.equal(true);
  return buf;
}

describe('initiator socket reads', () => {
  it('reuses one buffer while every read is parsed whole, and hands out views of exactly the bytes read', () => {
    const parser = new PduParser();
    const reads = new SocketReads(parser);
    const seen: number[] = [];
    reads.sink = (view) => {
      parser.push(view);
      for (let r = parser.next(); r !== null; r = parser.next()) if (r.ok && r.pdu.opcode === Opcode.NopIn) seen.push(r.pdu.itt);
    };
    const first = deliver(reads, Buffer.concat([nopIn(1), nopIn(2)]));
    const second = deliver(reads, nopIn(3));
    expect(second).to.equal(first);
    expect(seen).to.deep.equal([1, 2, 3]);
  });

  it('reads into a fresh buffer while the parser holds bytes of the last one, so a PDU spanning reads arrives intact', () => {
    const parser = new PduParser();
    const reads = new SocketReads(parser);
    const seen: number[] = [];
    reads.sink = (view) => {
      parser.push(view);
      for (let r = parser.next(); r !== null; r = parser.next()) if (r.ok && r.pdu.opcode === Opcode.NopIn) seen.push(r.pdu.itt);
    };
    const two = Buffer.concat([nopIn(7), nopIn(8)]);
    const first = deliver(reads, two.subarray(0, 60));
    const second = deliver(reads, two.subarray(60));
    expect(second).to.not.equal(first);
    expect(seen).to.deep.equal([7, 8]);
    // Nothing held any more: the last buffer is reused.
    expect(deliver(reads, nopIn(9))).to.equal(second);
    expect(seen).to.deep.equal([7, 8, 9]);
  });
});

describe('initiator socket reads, a read ending right after a header', () => {
  function nopInWithData(itt: number, data: Buffer): Buffer {
    const pdu: NopIn = { opcode: Opcode.NopIn, immediate: false, ahs: [], data, lun: 0n, itt, ttt: RESERVED_TAG, statSN: 1, expCmdSN: 1, maxCmdSN: 1 };
    return Buffer.concat(encodePdu(pdu, { header: false, data: false }));
  }

  it('keeps the header the parser took (its data still to come) out of the next read', () => {
    // The parser consumes a header as soon as it is whole and keeps a view of
    // it until the data arrives: it buffers nothing then, yet the next read
    // must not land on that header.
    const parser = new PduParser();
    const reads = new SocketReads(parser);
    const seen: Array<{ itt: number; data: string }> = [];
    reads.sink = (view) => {
      parser.push(view);
      for (let r = parser.next(); r !== null; r = parser.next()) {
        expect(r.ok, r.ok ? '' : r.message).to.equal(true);
        if (r.ok && r.pdu.opcode === Opcode.NopIn) seen.push({ itt: r.pdu.itt, data: r.pdu.data.toString('hex') });
      }
    };
    const data = Buffer.alloc(64, 0xa5);
    const first = nopInWithData(5, data);
    deliver(reads, first.subarray(0, 48));
    expect(parser.buffered).to.equal(0);
    deliver(reads, Buffer.concat([first.subarray(48), nopInWithData(6, Buffer.alloc(0))]));
    expect(seen).to.deep.equal([
      { itt: 5, data: data.toString('hex') },
      { itt: 6, data: '' },
    ]);
  });
});
