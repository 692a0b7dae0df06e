import { expect } from 'chai';
import { fixture } from './helpers.js';

const rc16 = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];

describe('READ CAPACITY', () => {
  it('reports one logical block per physical block, thin with LBPRZ', async () => {
    const f = fixture(2048, { thin: true });
    const d = (await f.run(rc16)).dataIn!;
    expect(d.readBigUInt64BE(0)).to.equal(2047n);
    expect(d.readUInt32BE(8)).to.equal(512);
    expect(d[13]! & 0x0f).to.equal(0);
    expect(d[14]! & 0xc0).to.equal(0xc0);
  });

  it('reports one logical block per physical block for 4096-byte blocks', async () => {
    const f = fixture(256, { blockSize: 4096 });
    const d = (await f.run(rc16)).dataIn!;
    expect(d.readUInt32BE(8)).to.equal(4096);
    expect(d[13]! & 0x0f).to.equal(0);
  });

  it('READ CAPACITY(10) saturates at 0xFFFFFFFF', async () => {
    const f = fixture(2048);
    const d = (await f.run([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0])).dataIn!;
    expect(d.readUInt32BE(0)).to.equal(2047);
    expect(d.readUInt32BE(4)).to.equal(512);
  });
});
