import { expect } from 'chai';
import { InlinePolicy } from '../../../src/blockdev/inline-policy.js';

/** Busy-waits so took() sees a slow call (the policy reads performance.now()). */
function spin(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    // waiting
  }
}

describe('blockdev/InlinePolicy', () => {
  it('allows transfers up to its limit, never with limit 0', () => {
    const p = new InlinePolicy(4096);
    expect(p.allows(4096)).to.equal(true);
    expect(p.allows(4097)).to.equal(false);
    expect(new InlinePolicy(0).allows(512)).to.equal(false);
  });

  it('backs off after a streak of slow calls, not after one', () => {
    const p = new InlinePolicy(4096);
    const slow = (): void => {
      const t = p.start();
      spin(0.5);
      p.took(t);
    };
    slow();
    slow();
    expect(p.allows(512)).to.equal(true);
    p.took(p.start()); // a fast call ends the streak
    slow();
    slow();
    expect(p.backingOff).to.equal(false);
    slow();
    expect(p.backingOff).to.equal(true);
    expect(p.allows(512)).to.equal(false);
  });
});
