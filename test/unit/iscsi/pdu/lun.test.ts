import { expect } from 'chai';
import { decodeLun, encodeLun } from '../../../../src/iscsi/pdu/lun.js';

describe('SAM LUN addressing', () => {
  const cases: [number, bigint][] = [
    [0, 0x0000000000000000n], // peripheral device addressing
    [5, 0x0005000000000000n],
    [255, 0x00ff000000000000n],
    [256, 0x4100000000000000n], // flat space addressing from 256 up
    [0x1234, 0x5234000000000000n],
    [16383, 0x7fff000000000000n],
  ];
  for (const [lun, raw] of cases) {
    it(`LUN ${lun} <-> 0x${raw.toString(16).padStart(16, '0')}`, () => {
      expect(encodeLun(lun)).to.equal(raw);
      expect(decodeLun(raw)).to.equal(lun);
    });
  }

  it('accepts flat space addressing for small LUNs too', () => {
    expect(decodeLun(0x4005000000000000n)).to.equal(5);
  });

  it('returns -1 for other address methods, a non-zero bus or several levels', () => {
    expect(decodeLun(0x0105000000000000n)).to.equal(-1); // peripheral, bus 1
    expect(decodeLun(0x8001000000000000n)).to.equal(-1); // logical unit addressing
    expect(decodeLun(0xc001000000000000n)).to.equal(-1); // extended addressing
    expect(decodeLun(0x0001000100000000n)).to.equal(-1); // second level present
  });

  it('refuses LUNs it cannot encode', () => {
    expect(() => encodeLun(16384)).to.throw(RangeError, /16384/);
    expect(() => encodeLun(-1)).to.throw(RangeError);
    expect(() => encodeLun(1.5)).to.throw(RangeError);
  });
});
