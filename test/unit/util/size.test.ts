import { expect } from 'chai';
import { formatSize, parseHostPort, parseSize } from '../../../src/util/size.js';

describe('sizes and addresses', () => {
  it('parses binary and decimal units', () => {
    expect(parseSize('4096')).to.equal(4096);
    expect(parseSize('4k')).to.equal(4096);
    expect(parseSize('512MiB')).to.equal(512 * 2 ** 20);
    expect(parseSize('10GiB')).to.equal(10 * 2 ** 30);
    expect(parseSize('1G')).to.equal(2 ** 30);
    expect(parseSize('1GB')).to.equal(1e9);
    expect(parseSize('1.5KiB')).to.equal(1536);
    expect(parseSize(' 2 TiB ')).to.equal(2 * 2 ** 40);
  });

  it('rejects nonsense with a reason', () => {
    for (const bad of ['', 'abc', '-1', '1.3', '1XB', 'i', '10iB']) expect(() => parseSize(bad), bad).to.throw(/bad size/);
  });

  it('formats sizes', () => {
    expect(formatSize(2 ** 30)).to.equal('1GiB');
    expect(formatSize(1536)).to.equal('1.5KiB');
    expect(formatSize(100)).to.equal('100B');
  });

  it('parses HOST:PORT', () => {
    expect(parseHostPort('127.0.0.1:3260', 1)).to.deep.equal({ host: '127.0.0.1', port: 3260 });
    expect(parseHostPort('localhost', 3260)).to.deep.equal({ host: 'localhost', port: 3260 });
    expect(parseHostPort('[::1]:3261', 1)).to.deep.equal({ host: '::1', port: 3261 });
    expect(() => parseHostPort('a:99999', 1)).to.throw(/port/);
  });
});
