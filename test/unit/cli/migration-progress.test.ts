import { expect } from 'chai';
import { formatDuration, formatRate, migrationLine, migrationRows, requireDone } from '../../../src/cli/migration-progress.js';
import type { MigrationInfo } from '../../../src/wire/proto-types.js';

const MiB = 1 << 20;
const TO = '1c077dfc-0000-4000-8000-000000000001';
const FROM = '2d188e0d-0000-4000-8000-000000000002';

function info(over: Partial<MigrationInfo>): MigrationInfo {
  return {
    vdiskId: 'id-1',
    vdiskName: 'disk0',
    toContainer: TO,
    fromContainer: '',
    state: 'running',
    segmentsTotal: 256,
    segmentsDone: 116,
    bytesDone: 116 * MiB,
    percent: (116 / 256) * 100,
    bytesPerSecond: 38_200_000,
    etaSeconds: 3.8,
    started: '2026-11-25T10:00:00.000Z',
    updated: '2026-11-25T10:00:03.000Z',
    finished: '',
    error: '',
    ...over,
  };
}

describe('cli: migration progress lines', () => {
  it('formats durations and rates', () => {
    expect(formatDuration(0)).to.equal('0s');
    expect(formatDuration(59.4)).to.equal('59s');
    expect(formatDuration(185)).to.equal('3m05s');
    expect(formatDuration(3720)).to.equal('1h02m');
    expect(formatRate(38_200_000)).to.equal('38.2 MB/s');
    expect(formatRate(0)).to.equal('- MB/s');
  });

  it('running: percent, segments, bytes, MB/s and ETA', () => {
    expect(migrationLine(info({}))).to.equal('vdisk disk0 to 1c077dfc: running 45.3% (116/256 segments, 116MiB), 38.2 MB/s, ETA 4s');
    expect(migrationLine(info({ bytesPerSecond: 0, etaSeconds: -1, segmentsDone: 0, bytesDone: 0, percent: 0 }))).to.equal(
      'vdisk disk0 to 1c077dfc: running 0.0% (0/256 segments, 0B), - MB/s, ETA unknown',
    );
  });

  it('finished ones: the end state, and the reason when failed; evacuations say off', () => {
    expect(migrationLine(info({ state: 'done', segmentsDone: 256, bytesDone: 256 * MiB, percent: 100, etaSeconds: 0 }))).to.equal(
      'vdisk disk0 to 1c077dfc: done 100.0% (256/256 segments, 256MiB)',
    );
    expect(migrationLine(info({ state: 'failed', toContainer: '', fromContainer: FROM, segmentsDone: 32, bytesDone: 32 * MiB, percent: 12.5, error: 'no room' }))).to.equal(
      'vdisk disk0 off 2d188e0d: failed 12.5% (32/256 segments, 32MiB): no room',
    );
  });

  it('table of migrations', () => {
    const t = migrationRows([info({}), info({ vdiskName: 'd2', state: 'cancelled' })]).split('\n');
    expect(t[0]).to.match(/^VDISK\s+TARGET\s+STATE\s+PERCENT\s+SEGMENTS\s+MOVED\s+RATE\s+ETA\s+STARTED\s+NOTE$/);
    expect(t[1]).to.match(/^disk0\s+to 1c077dfc\s+running\s+45\.3%\s+116\/256\s+116MiB\s+38\.2 MB\/s\s+4s\s+2026-11-25T10:00:00\.000Z\s+-$/);
    expect(t[2]).to.match(/^d2\s+to 1c077dfc\s+cancelled\s+45\.3%\s+116\/256\s+116MiB\s+-\s+-\s+/);
  });

  it('requireDone: one line naming every migration that did not finish', () => {
    expect(() => requireDone([info({ state: 'done' })])).to.not.throw();
    expect(() => requireDone([info({ state: 'done' }), info({ vdiskName: 'd2', state: 'failed', error: 'container full' })])).to.throw(
      'migration of vdisk d2 failed: container full',
    );
  });
});
