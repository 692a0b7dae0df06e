import { expect } from 'chai';
import { Backoff } from '../../../src/agent/backoff.js';

describe('agent/backoff', () => {
  it('doubles from the initial delay up to the cap, and starts over after reset', () => {
    const b = new Backoff({ initialMs: 100, maxMs: 1000, factor: 2, jitter: 0 });
    expect([b.next(), b.next(), b.next(), b.next(), b.next(), b.next()]).to.deep.equal([100, 200, 400, 800, 1000, 1000]);
    b.reset();
    expect(b.next()).to.equal(100);
  });

  it('jitters downwards by at most the jitter fraction', () => {
    const lowest = new Backoff({ initialMs: 100, maxMs: 1000, jitter: 0.5, random: () => 0.999999 });
    expect([lowest.next(), lowest.next()]).to.deep.equal([50, 100]);
    const highest = new Backoff({ initialMs: 100, maxMs: 1000, jitter: 0.5, random: () => 0 });
    expect([highest.next(), highest.next()]).to.deep.equal([100, 200]);
  });

  it('refuses nonsense', () => {
    expect(() => new Backoff({ initialMs: 0 })).to.throw(RangeError);
    expect(() => new Backoff({ initialMs: 100, maxMs: 50 })).to.throw(RangeError);
    expect(() => new Backoff({ factor: 0.5 })).to.throw(RangeError);
  });
});
