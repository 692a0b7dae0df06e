import { expect } from 'chai';
import { parseText, serializeText, splitText, TextAccumulator, TextError } from '../../../../src/iscsi/login/text.js';

describe('iscsi/login/text', () => {
  describe('parseText', () => {
    it('parses NUL-terminated key=value pairs in order', () => {
      const data = Buffer.from('InitiatorName=iqn.x:y\0SessionType=Normal\0HeaderDigest=None,CRC32C\0', 'latin1');
      expect(parseText(data)).to.deep.equal([
        ['InitiatorName', 'iqn.x:y'],
        ['SessionType', 'Normal'],
        ['HeaderDigest', 'None,CRC32C'],
      ]);
    });

    it('keeps "=" inside values and accepts empty values', () => {
      expect(parseText(Buffer.from('X-a=b=c\0SendTargets=\0'))).to.deep.equal([
        ['X-a', 'b=c'],
        ['SendTargets', ''],
      ]);
    });

    it('skips empty strings between NULs and accepts a missing final NUL', () => {
      expect(parseText(Buffer.from('\0A=1\0\0\0B=2'))).to.deep.equal([
        ['A', '1'],
        ['B', '2'],
      ]);
    });

    it('returns nothing for empty data', () => {
      expect(parseText(Buffer.alloc(0))).to.deep.equal([]);
    });

    it('decodes UTF-8 values', () => {
      const data = Buffer.from([...Buffer.from('InitiatorAlias='), 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0]);
      expect(parseText(data)).to.deep.equal([['InitiatorAlias', 'é€']]);
    });

    it('rejects a pair without "="', () => {
      expect(() => parseText(Buffer.from('A=1\0garbage\0'))).to.throw(TextError, /no '='/);
    });

    it('rejects an empty key', () => {
      expect(() => parseText(Buffer.from('=x\0'))).to.throw(TextError, /empty key/);
    });

    it('rejects a key of 64 bytes, accepts 63', () => {
      expect(parseText(Buffer.from(`X-${'k'.repeat(61)}=1\0`))).to.have.length(1);
      expect(() => parseText(Buffer.from(`X-${'k'.repeat(62)}=1\0`))).to.throw(TextError, /longer than 63/);
    });

    it('limits most values to 255 bytes', () => {
      expect(parseText(Buffer.from(`InitiatorAlias=${'a'.repeat(255)}\0`))).to.have.length(1);
      expect(() => parseText(Buffer.from(`InitiatorAlias=${'a'.repeat(256)}\0`))).to.throw(TextError, /longer than 255/);
    });

    it('limits iSCSI names to 223 bytes', () => {
      expect(() => parseText(Buffer.from(`InitiatorName=iqn.${'a'.repeat(220)}\0`))).to.throw(TextError, /longer than 223/);
    });

    it('allows 8192-byte values for CHAP_C/CHAP_R and unknown keys', () => {
      const v = `0x${'ab'.repeat(4095)}`; // 8192 bytes
      expect(parseText(Buffer.from(`CHAP_C=${v}\0`))[0][1]).to.equal(v);
      expect(() => parseText(Buffer.from(`CHAP_C=${v}a\0`))).to.throw(TextError, /longer than 8192/);
      expect(parseText(Buffer.from(`X-big=${'z'.repeat(8192)}\0`))).to.have.length(1);
    });

    it('rejects a key given twice', () => {
      expect(() => parseText(Buffer.from('MaxBurstLength=512\0MaxBurstLength=1024\0'))).to.throw(TextError, /given twice/);
    });

    it('rejects invalid UTF-8', () => {
      expect(() => parseText(Buffer.from([0x41, 0x3d, 0xff, 0xfe, 0]))).to.throw(TextError, /UTF-8/);
    });
  });

  describe('serializeText', () => {
    it('writes key=value\\0 for each pair', () => {
      expect(serializeText([['A', '1'], ['TargetAlias', 'é']]).toString('hex')).to.equal(Buffer.from('A=1\0TargetAlias=\xc3\xa9\0', 'latin1').toString('hex'));
    });
    it('writes nothing for no pairs', () => {
      expect(serializeText([])).to.have.length(0);
    });
  });

  describe('splitText', () => {
    it('splits into views of at most n bytes', () => {
      const parts = splitText(Buffer.from('abcdefg'), 3);
      expect(parts.map((p) => p.toString())).to.deep.equal(['abc', 'def', 'g']);
    });
  });

  describe('TextAccumulator', () => {
    it('returns a single final piece as is', () => {
      const acc = new TextAccumulator();
      const d = Buffer.from('A=1\0');
      const r = acc.push(d, false);
      expect(r.kind).to.equal('complete');
      if (r.kind === 'complete') expect(r.data).to.equal(d);
    });

    it('joins a pair split across PDUs, even inside a UTF-8 sequence', () => {
      const whole = Buffer.from('InitiatorAlias=caf\xc3\xa9\0B=2\0', 'latin1');
      const acc = new TextAccumulator();
      expect(acc.push(whole.subarray(0, 19), true).kind).to.equal('partial'); // ends after 0xc3
      expect(acc.pending).to.equal(19);
      expect(acc.push(whole.subarray(19, 22), true).kind).to.equal('partial');
      const r = acc.push(whole.subarray(22), false);
      if (r.kind !== 'complete') throw new Error('expected complete');
      expect(parseText(r.data)).to.deep.equal([
        ['InitiatorAlias', 'café'],
        ['B', '2'],
      ]);
      expect(acc.pending).to.equal(0);
    });

    it('reports overflow past its limit and starts over', () => {
      const acc = new TextAccumulator(10);
      expect(acc.push(Buffer.alloc(6), true).kind).to.equal('partial');
      expect(acc.push(Buffer.alloc(6), true)).to.deep.equal({ kind: 'overflow', size: 12 });
      expect(acc.pending).to.equal(0);
    });
  });
});
