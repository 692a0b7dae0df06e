import { expect } from 'chai';
import {
  PduError,
  dataSegmentLength,
  decodePdu,
  itt,
  peekOpcode,
  totalAhsLength,
} from '../../../../src/iscsi/pdu/decode.js';
import { encodeHeader, encodePdu, rejectData, senseSegment } from '../../../../src/iscsi/pdu/encode.js';
import { Opcode, RejectReason, TaskAttr } from '../../../../src/iscsi/pdu/types.js';
import type { DataOut, NopIn, Pdu, ScsiCommandPdu } from '../../../../src/iscsi/pdu/types.js';
import { bhs, hex, referenceCrc32c } from './hex.js';
import { vectors, wire } from './vectors.js';

const noDigests = { header: false, data: false };

function le32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

function expectPduError(fn: () => unknown, reason: RejectReason, pattern: RegExp): void {
  try {
    fn();
  } catch (e) {
    expect(e).to.be.instanceOf(PduError);
    expect((e as PduError).reason).to.equal(reason);
    expect((e as PduError).message).to.match(pattern);
    return;
  }
  expect.fail('expected a PduError');
}

describe('iSCSI PDU codec: per-opcode vectors', () => {
  for (const v of vectors) {
    describe(v.name, () => {
      it('decodes the hand-written bytes to the expected PDU', () => {
        const pdu = decodePdu(v.header, v.data);
        expect(pdu).to.deep.equal(v.pdu);
        expect(pdu.data).to.equal(v.data); // the caller's Buffer, not a copy
      });

      it('encodes the PDU to the hand-written header bytes', () => {
        expect(encodeHeader(v.pdu).toString('hex')).to.equal(v.header.toString('hex'));
      });

      it('encodes an iovec of header, data (same Buffer) and padding', () => {
        const iov = encodePdu(v.pdu, noDigests);
        expect(Buffer.concat(iov).toString('hex')).to.equal(wire(v).toString('hex'));
        if (v.data.length === 0) {
          expect(iov).to.have.length(1);
        } else {
          expect(iov[1]).to.equal(v.pdu.data);
          expect(iov).to.have.length(v.data.length % 4 === 0 ? 2 : 3);
        }
      });

      it('appends CRC32C digests in little-endian byte order', () => {
        const iov = encodePdu(v.pdu, { header: true, data: true });
        const pad = Buffer.alloc((4 - (v.data.length % 4)) % 4);
        const parts = [v.header, le32(referenceCrc32c(v.header))];
        if (v.data.length > 0) parts.push(v.data, pad, le32(referenceCrc32c(Buffer.concat([v.data, pad]))));
        expect(Buffer.concat(iov).toString('hex')).to.equal(Buffer.concat(parts).toString('hex'));
      });

      it('exposes header fields to the framing helpers', () => {
        expect(peekOpcode(v.header)).to.equal(v.pdu.opcode);
        expect(dataSegmentLength(v.header)).to.equal(v.data.length);
        expect(totalAhsLength(v.header)).to.equal(v.header.length - 48);
        expect(itt(v.header)).to.equal(v.header.readUInt32BE(16));
      });
    });
  }

  it('covers every opcode of types.ts', () => {
    const seen = new Set(vectors.map((v) => v.pdu.opcode));
    expect([...seen].sort((a, b) => a - b)).to.deep.equal([
      0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3f,
    ]);
  });
});

describe('iSCSI PDU codec: encoding details', () => {
  const nopIn: NopIn = {
    opcode: Opcode.NopIn,
    immediate: true, // reserved bit for target PDUs: must not reach the wire
    ahs: [],
    data: Buffer.alloc(0),
    lun: 0n,
    itt: 1,
    ttt: 0xffffffff,
    statSN: 2,
    expCmdSN: 3,
    maxCmdSN: 4,
  };

  it('never sets the I bit on opcodes where it is reserved', () => {
    expect(encodeHeader(nopIn)[0]).to.equal(0x20);
  });

  it('zeroes reserved bytes even when the allocation pool holds garbage', () => {
    for (let i = 0; i < 64; i++) Buffer.allocUnsafe(48).fill(0xa5); // dirty the pool
    const h = encodeHeader(nopIn);
    expect(h.subarray(36, 48).every((b) => b === 0)).to.equal(true);
    expect(h.subarray(1, 8).toString('hex')).to.equal('80000000000000');
  });

  it('zero-pads a CDB shorter than 16 bytes', () => {
    const cmd: ScsiCommandPdu = {
      opcode: Opcode.ScsiCommand,
      immediate: false,
      ahs: [],
      data: Buffer.alloc(0),
      final: true,
      read: false,
      write: false,
      attr: TaskAttr.Simple,
      lun: 0n,
      itt: 1,
      expectedDataTransferLength: 0,
      cmdSN: 1,
      expStatSN: 1,
      cdb: hex('00 00 00 00 00 00'), // TEST UNIT READY
    };
    for (let i = 0; i < 64; i++) Buffer.allocUnsafe(48).fill(0xa5);
    expect(encodeHeader(cmd).subarray(32).toString('hex')).to.equal('00'.repeat(16));
  });

  it('encodes a 32-byte CDB as an Extended CDB AHS without padding', () => {
    const cdb = Buffer.from(Array.from({ length: 32 }, (_, i) => i + 1));
    const cmd: ScsiCommandPdu = {
      opcode: Opcode.ScsiCommand,
      immediate: false,
      ahs: [],
      data: Buffer.alloc(0),
      final: true,
      read: true,
      write: false,
      attr: TaskAttr.Simple,
      lun: 0n,
      itt: 1,
      expectedDataTransferLength: 0,
      cmdSN: 1,
      expStatSN: 1,
      cdb,
    };
    const h = encodeHeader(cmd);
    expect(h.length).to.equal(48 + 20);
    expect(h[4]).to.equal(5);
    // AHSLength 17 (32 - 15), type 1, reserved, then CDB bytes 16..31
    expect(h.subarray(48).toString('hex')).to.equal('001101' + '00' + cdb.subarray(16).toString('hex'));
    expect(h.subarray(32, 48).toString('hex')).to.equal(cdb.subarray(0, 16).toString('hex'));
    const back = decodePdu(h, Buffer.alloc(0)) as ScsiCommandPdu;
    expect(back.cdb.toString('hex')).to.equal(cdb.toString('hex'));
  });

  it('passes other AHS types through with padding', () => {
    const pdu: NopIn = { ...nopIn, immediate: false, ahs: [{ type: 0x40, data: hex('aa bb') }] };
    const h = encodeHeader(pdu);
    expect(h.toString('hex')).to.equal(
      bhs([
        '20 80 00 00',
        '02 00 00 00', // TotalAHSLength 2 words
        '00 00 00 00',
        '00 00 00 00',
        '00 00 00 01',
        'ff ff ff ff',
        '00 00 00 02',
        '00 00 00 03',
        '00 00 00 04',
        '00 00 00 00',
        '00 00 00 00',
        '00 00 00 00',
      ]).toString('hex') + '000240aabb000000', // AHSLength 2, type 0x40, data, 3 bytes padding
    );
    expect(decodePdu(h, Buffer.alloc(0)).ahs).to.deep.equal([{ type: 0x40, data: hex('aa bb') }]);
  });

  it('uses the payload Buffer itself in the iovec (no copy)', () => {
    const payload = Buffer.alloc(8192, 7);
    const out: DataOut = {
      opcode: Opcode.DataOut,
      immediate: false,
      ahs: [],
      data: payload,
      final: true,
      lun: 0n,
      itt: 1,
      ttt: 2,
      expStatSN: 3,
      dataSN: 0,
      bufferOffset: 0,
    };
    const iov = encodePdu(out, { header: true, data: true });
    expect(iov[1]).to.equal(payload);
    expect(iov).to.have.length(3);
    expect(iov[2]!.toString('hex')).to.equal(le32(referenceCrc32c(payload)).toString('hex'));
  });

  it('rejects a data segment beyond 24 bits', () => {
    const big: NopIn = { ...nopIn, data: Buffer.alloc(0x1000000) };
    expectPduError(() => encodeHeader(big), RejectReason.InvalidPduField, /24 bits/);
  });

  it('builds the SCSI Response sense segment (SenseLength + sense)', () => {
    expect(senseSegment(hex('70 00 06')).toString('hex')).to.equal('0003700006');
    expect(senseSegment(Buffer.alloc(0))).to.have.length(0);
  });

  it('copies the rejected BHS for a Reject data segment', () => {
    const src = Buffer.concat([vectors[0]!.header, hex('ff ff')]);
    const d = rejectData(src);
    expect(d.toString('hex')).to.equal(vectors[0]!.header.toString('hex'));
    src[0] = 0xee;
    expect(d[0]).to.equal(0x40);
  });
});

describe('iSCSI PDU codec: malformed input', () => {
  const nop = vectors[0]!;

  it('rejects a header shorter than the BHS', () => {
    expectPduError(() => decodePdu(nop.header.subarray(0, 47), nop.data), RejectReason.ProtocolError, /truncated: 47 bytes/);
  });

  it('rejects a header shorter than TotalAHSLength says', () => {
    const h = Buffer.from(nop.header);
    h[4] = 2;
    expectPduError(() => decodePdu(h, nop.data), RejectReason.ProtocolError, /BHS\+AHS needs 56/);
  });

  it('rejects a data segment that disagrees with DataSegmentLength', () => {
    expectPduError(() => decodePdu(nop.header, hex('01 02 03')), RejectReason.ProtocolError, /DataSegmentLength 4 but 3/);
  });

  it('rejects an unknown opcode', () => {
    const h = Buffer.from(nop.header);
    h[0] = 0x1c;
    expectPduError(() => decodePdu(h, nop.data), RejectReason.CommandNotSupported, /unknown PDU opcode 0x1c itt=0x11223344/);
  });

  it('rejects an AHS whose length overruns TotalAHSLength', () => {
    const h = Buffer.concat([Buffer.from(nop.header), hex('00 05 40 00')]);
    h[4] = 1;
    expectPduError(() => decodePdu(h, nop.data), RejectReason.ProtocolError, /AHS type 64 length 5 .* overruns/);
  });

  it('rejects an AHS whose padding overruns TotalAHSLength', () => {
    const h = Buffer.concat([Buffer.from(nop.header), hex('00 02 40 00 aa')]);
    h[4] = 1; // 3 + 2 = 5 bytes, padded to 8, but only 4 declared
    expectPduError(() => decodePdu(h, nop.data), RejectReason.ProtocolError, /overruns/);
  });

  const cmd = vectors.find((v) => v.name.startsWith('SCSI Command (18-byte'))!;

  it('rejects an Extended CDB AHS with no CDB bytes', () => {
    const h = Buffer.concat([cmd.header.subarray(0, 48), hex('00 01 01 00')]); // AHSLength 1: only the reserved byte
    h[4] = 1;
    expectPduError(() => decodePdu(h, cmd.data), RejectReason.ProtocolError, /malformed Extended CDB AHS/);
  });

  it('rejects a bidirectional read length AHS of the wrong length', () => {
    const h = Buffer.concat([cmd.header.subarray(0, 56), hex('00 04 02 00 00 00 04 00')]);
    h[4] = 4;
    expectPduError(() => decodePdu(h, cmd.data), RejectReason.ProtocolError, /Bidirectional .*AHSLength 4, expected 5/);
  });

  it('rejects a duplicated Extended CDB AHS', () => {
    const h = Buffer.concat([cmd.header.subarray(0, 56), cmd.header.subarray(48, 56)]);
    h[4] = 4;
    expectPduError(() => decodePdu(h, cmd.data), RejectReason.ProtocolError, /duplicate Extended CDB AHS/);
  });
});

describe('iSCSI PDU codec: round trips', () => {
  it('decode(encode(pdu)) is the identity for every vector', () => {
    for (const v of vectors) {
      const [header, data] = encodePdu(v.pdu, noDigests) as [Buffer, Buffer?];
      const back: Pdu = decodePdu(header, data ?? Buffer.alloc(0));
      expect(back, v.name).to.deep.equal(v.pdu);
    }
  });
});
