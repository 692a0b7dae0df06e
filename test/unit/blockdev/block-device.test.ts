import { expect } from 'chai';
import { BLOCK_ERROR_SENSE, BlockDeviceError, blockErrorKind } from '../../../src/blockdev/block-device.js';

const hex = (s: { key: number; asc: number; ascq: number }): string => [s.key, s.asc, s.ascq].map((n) => n.toString(16).padStart(2, '0')).join('/');

describe('blockdev/BlockDeviceError', () => {
  it('each named error is one sense code (the file device\'s errors map as they always have)', () => {
    const table = Object.fromEntries(Object.keys(BLOCK_ERROR_SENSE).map((k) => [k, hex(new BlockDeviceError(k as keyof typeof BLOCK_ERROR_SENSE, 'x').sense)]));
    expect(table).to.deep.equal({
      'read-error': '03/11/00',
      'write-error': '03/0c/00',
      'not-ready': '02/04/0a',
      'no-space': '07/27/07',
      'write-protected': '07/27/00',
      'out-of-range': '05/21/00',
      'lu-not-supported': '05/25/00',
      'internal-failure': '04/44/00',
      unreachable: '0b/08/00',
    });
  });

  it('carries a sense given as such unchanged, named when it has a name', () => {
    const e = new BlockDeviceError({ key: 0x5, asc: 0x25, ascq: 0x00 }, 'not exported', 12);
    expect([hex(e.sense), e.kind, e.lba]).to.deep.equal(['05/25/00', 'lu-not-supported', 12]);
    const odd = new BlockDeviceError({ key: 0xb, asc: 0x47, ascq: 0x00 }, 'parity');
    expect([hex(odd.sense), odd.kind]).to.deep.equal(['0b/47/00', 'other-sense']);
    expect(blockErrorKind({ key: 0x3, asc: 0x11, ascq: 0x00 })).to.equal('read-error');
  });
});
