import { expect } from 'chai';
import { crc32c, dataDigest, headerDigest, readDigest, writeDigest } from '../../../../src/iscsi/pdu/digest.js';
import { encodePdu } from '../../../../src/iscsi/pdu/encode.js';
import { decodePdu } from '../../../../src/iscsi/pdu/decode.js';
import { bhs, hex, prng, referenceCrc32c } from './hex.js';

/** The digest bytes as they go on the wire. */
function wireBytes(crc: number): string {
  const b = Buffer.alloc(4);
  writeDigest(b, 0, crc);
  return b.toString('hex');
}

// RFC 3720 Appendix B.4 (carried into RFC 7143): data and the CRC bytes in wire order.
const readPdu = bhs([
  '01 c0 00 00',
  '00 00 00 00',
  '00 00 00 00',
  '00 00 00 00',
  '14 00 00 00',
  '00 00 04 00',
  '00 00 00 14',
  '00 00 00 18',
  '28 00 00 00',
  '00 00 00 00',
  '02 00 00 00',
  '00 00 00 00',
]);

describe('iSCSI CRC32C digests', () => {
  const rfc: [string, Buffer, string][] = [
    ['32 bytes of zeros', Buffer.alloc(32, 0), 'aa 36 91 8a'],
    ['32 bytes of ones', Buffer.alloc(32, 0xff), '43 ab a8 62'],
    ['32 incrementing bytes 00..1f', Buffer.from(Array.from({ length: 32 }, (_, i) => i)), '4e 79 dd 46'],
    ['32 decrementing bytes 1f..00', Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i)), '5c db 3f 11'],
    ['an iSCSI SCSI Read (10) Command PDU', readPdu, '56 3a 96 d9'],
  ];
  for (const [name, data, expected] of rfc) {
    it(`matches the RFC example for ${name} (little-endian on the wire)`, () => {
      expect(wireBytes(crc32c(data))).to.equal(hex(expected).toString('hex'));
      expect(readDigest(hex(expected), 0)).to.equal(crc32c(data));
    });
  }

  it('agrees with a bitwise reference implementation on random inputs', () => {
    const rnd = prng(7);
    for (let i = 0; i < 200; i++) {
      const b = Buffer.from(Array.from({ length: Math.floor(rnd() * 300) }, () => Math.floor(rnd() * 256)));
      expect(crc32c(b)).to.equal(referenceCrc32c(b));
    }
  });

  it('continues over several buffers when given the previous result as seed', () => {
    const a = hex('01 02 03 04 05');
    const b = hex('06 07 08');
    expect(crc32c(b, crc32c(a))).to.equal(crc32c(Buffer.concat([a, b])));
  });

  it('computes the data digest over data and zero padding', () => {
    for (let n = 1; n <= 9; n++) {
      const d = Buffer.alloc(n, 0x5a);
      const padded = Buffer.concat([d, Buffer.alloc((4 - (n % 4)) % 4)]);
      expect(dataDigest(d), `length ${n}`).to.equal(referenceCrc32c(padded));
    }
  });

  it('puts the RFC example digest after the Read (10) BHS when encoding it', () => {
    const pdu = decodePdu(readPdu, Buffer.alloc(0));
    const [header] = encodePdu(pdu, { header: true, data: true });
    expect(header!.toString('hex')).to.equal(readPdu.toString('hex') + '563a96d9');
    expect(headerDigest(readPdu)).to.equal(0xd9963a56);
  });
});
