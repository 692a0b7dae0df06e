// How the CLI words a vdisk's health: the HEALTH column and `vdisk show`'s line.
import { expect } from 'chai';
import type { VdiskHealthInfo } from '../../../src/wire/proto-types.js';
import { healthLine, healthText } from '../../../src/cli/mirror-progress.js';

const MiB = 1 << 20;
const h = (x: Partial<VdiskHealthInfo>): VdiskHealthInfo => ({
  copies: 2,
  segments: 64,
  degraded: 0,
  stale: 0,
  dirty: 0,
  rebuilding: null,
  blocked: '',
  resyncing: null,
  ...x,
});

describe('cli: mirror health words', () => {
  it('HEALTH column: healthy, degraded N, rebuilding x/y, resyncing x/y; - from an older controller', () => {
    expect(healthText(h({}))).to.equal('healthy');
    expect(healthText(h({ degraded: 12 }))).to.equal('degraded 12');
    expect(healthText(h({ degraded: 12, rebuilding: { done: 3, total: 12, bytes: 3 * MiB } }))).to.equal('rebuilding 3/12');
    expect(healthText(h({ degraded: 5, resyncing: { done: 2, total: 5, bytes: 2 * MiB } }))).to.equal('resyncing 2/5');
    expect(healthText(null)).to.equal('-');
    expect(healthText(undefined)).to.equal('-');
  });

  it('show line: copies, degraded of segments, stale and dirty legs, progress with bytes, why it waits', () => {
    expect(healthLine(h({ copies: 1, segments: 4 }))).to.equal('1 copy, healthy (4 segments)');
    expect(healthLine(h({}))).to.equal('2 copies, healthy (64 segments)');
    expect(healthLine(h({ degraded: 40, stale: 40, dirty: 3, rebuilding: { done: 12, total: 40, bytes: 12 * MiB } }))).to.equal(
      '2 copies, degraded: 40 of 64 segments, 40 stale legs (3 dirty); rebuilding 12/40 segments, 12MiB copied',
    );
    expect(healthLine(h({ degraded: 1, rebuilding: { done: 0, total: 1, bytes: 0 }, blocked: 'no room' }))).to.equal(
      '2 copies, degraded: 1 of 64 segments; rebuilding 0/1 segments, 0B copied; waiting: no room',
    );
  });
});
