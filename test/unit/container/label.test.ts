import { expect } from 'chai';
import {
  DEFAULT_DATA_OFFSET,
  LABEL_SIZE,
  LabelError,
  dataSegments,
  decodeLabel,
  encodeLabel,
  type ContainerLabel,
} from '../../../src/container/label.js';

/** Bitwise CRC32C (Castagnoli, reflected 0x82F63B78): slow, independent of @node-rs/crc32. */
function refCrc32c(b: Buffer): number {
  let crc = 0xffffffff;
  for (const byte of b) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

const LABEL: ContainerLabel = {
  id: '0123abcd-4567-489a-bcde-f0123456789a',
  formatVersion: 1,
  size: 0x1_2345_6000,
  dataOffset: DEFAULT_DATA_OFFSET,
  segmentSize: 1 << 20,
  createdMs: 0x0190_0000_1234, // 2024-06
};

/** The expected block, laid out by hand from the format comment. */
function handBuilt(): Buffer {
  const b = Buffer.alloc(4096);
  const hex =
    '5441 4255 4c41 2d43' + // "TABULA-C"
    '0100 0000' + // version 1
    '0000 0000' + // flags
    '0123 abcd 4567 489a bcde f012 3456 789a' + // uuid
    '0060 4523 0100 0000' + // size 0x123456000
    '0000 1000 0000 0000' + // data offset 1 MiB
    '0000 1000' + // segment size 1 MiB
    '0000 0000' + // reserved
    '3412 0000 9001 0000'; // created ms 0x19000001234
  const head = Buffer.from(hex.replace(/ /g, ''), 'hex');
  head.copy(b, 0);
  b.writeUInt32LE(refCrc32c(b.subarray(0, 4092)), 4092);
  return b;
}

describe('container/label', () => {
  it('encodes byte for byte as the layout says', () => {
    const b = encodeLabel(LABEL);
    expect(b.length).to.equal(LABEL_SIZE);
    expect(b.equals(handBuilt())).to.equal(true);
  });

  it('round-trips', () => {
    expect(decodeLabel(encodeLabel(LABEL))).to.deep.equal(LABEL);
    expect(decodeLabel(handBuilt())).to.deep.equal(LABEL);
  });

  it('reads a label from a longer block (the first 4 KiB)', () => {
    const big = Buffer.concat([handBuilt(), Buffer.alloc(512, 0xee)]);
    expect(decodeLabel(big).id).to.equal(LABEL.id);
  });

  it('counts whole data segments', () => {
    expect(dataSegments({ ...LABEL, size: (1 << 20) + 5 * (1 << 20) + 17 })).to.equal(5);
    expect(dataSegments({ ...LABEL, size: 9 << 20 }, 256 << 10)).to.equal(32);
  });

  function kindOf(b: Buffer): string {
    try {
      decodeLabel(b, '/x/c.img');
    } catch (e) {
      expect(e).to.be.instanceOf(LabelError);
      expect((e as Error).message).to.match(/^\/x\/c\.img: /);
      return (e as LabelError).kind;
    }
    throw new Error('expected a LabelError');
  }

  it('a foreign or empty block is unlabelled', () => {
    expect(kindOf(Buffer.alloc(0))).to.equal('unlabelled');
    expect(kindOf(Buffer.alloc(4096))).to.equal('unlabelled');
    const qcow = Buffer.alloc(4096);
    qcow.write('QFI\xfb', 'latin1');
    expect(kindOf(qcow)).to.equal('unlabelled');
  });

  it('a flipped bit anywhere is corrupt', () => {
    for (const at of [9, 20, 33, 41, 50, 60, 100, 4000, 4093]) {
      const b = handBuilt();
      b[at] = (b[at] as number) ^ 0x10;
      expect(kindOf(b), `byte ${at}`).to.equal('corrupt');
    }
  });

  it('a label cut short is truncated', () => {
    expect(kindOf(handBuilt().subarray(0, 100))).to.equal('truncated');
  });

  it('a newer format version is reported as such', () => {
    const b = handBuilt();
    b.writeUInt32LE(2, 8);
    b.writeUInt32LE(refCrc32c(b.subarray(0, 4092)), 4092);
    expect(kindOf(b)).to.equal('unsupported-version');
  });

  it('nonsense fields with a good checksum are invalid', () => {
    const b = handBuilt();
    b.writeBigUInt64LE(100n, 40); // data offset inside the label
    b.writeUInt32LE(refCrc32c(b.subarray(0, 4092)), 4092);
    expect(kindOf(b)).to.equal('invalid');
  });

  it('refuses to encode a bad label', () => {
    expect(() => encodeLabel({ ...LABEL, id: 'nope' })).to.throw(LabelError, /not a lower-case UUID/);
    expect(() => encodeLabel({ ...LABEL, segmentSize: 3000 })).to.throw(LabelError, /segment size/);
    expect(() => encodeLabel({ ...LABEL, size: LABEL.dataOffset })).to.throw(LabelError, /no room/);
    expect(() => encodeLabel({ ...LABEL, dataOffset: 4097 * 2 })).to.throw(LabelError, /multiple of 4096/);
  });
});
