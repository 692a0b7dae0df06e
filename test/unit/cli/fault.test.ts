// `tabula fault ls --since`: an ISO time or how long ago, sent as an ISO time.
import { expect } from 'chai';
import { parseSince } from '../../../src/cli/fault.js';

describe('cli: fault ls --since', () => {
  const now = Date.parse('2026-12-06T12:00:00.000Z');

  it('reads how long ago (s, m, h, d) and ISO times', () => {
    expect(parseSince('90s', now)).to.equal('2026-12-06T11:58:30.000Z');
    expect(parseSince('10m', now)).to.equal('2026-12-06T11:50:00.000Z');
    expect(parseSince('2h', now)).to.equal('2026-12-06T10:00:00.000Z');
    expect(parseSince('1.5d', now)).to.equal('2026-12-05T00:00:00.000Z');
    expect(parseSince('2026-12-01T10:00:00Z', now)).to.equal('2026-12-01T10:00:00.000Z');
    expect(parseSince('2026-12-01', now)).to.equal('2026-12-01T00:00:00.000Z');
  });

  it('refuses anything else with a one-line reason', () => {
    for (const bad of ['yesterday', '10', '5w', '', 'x2026-12-01']) {
      expect(() => parseSince(bad, now)).to.throw(/^bad --since .*: give an ISO time \(2026-12-01T10:00:00Z\) or how long ago \(90s, 10m, 2h, 7d\)$/);
    }
  });
});
