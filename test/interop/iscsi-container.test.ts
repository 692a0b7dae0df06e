// iSCSI containers through Tabula's own initiator against real targets on
// loopback, `tabula target` and tgtd (LUN 1): `container init` of a LUN, the
// label read back (`container add`'s path) and found by a portal scan, then
// the driver's read, write (FUA), flush, discard and zeroes with the data
// checked, CHAP on the locator, a MEDIUM ERROR from the backend as EIO, and a
// target gone for good as EUNREACHABLE (never EIO) once the hold is over.
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { truncateSync } from 'node:fs';
import { startTarget, type RunningTarget, type TargetKind } from '../support/target-process.js';
import { ContainerIoError } from '../../src/container/driver.js';
import { initContainer } from '../../src/container/init.js';
import { readIscsiLabel, scanIscsiLocator, type IscsiScanOptions } from '../../src/container/iscsi-scan.js';
import { IscsiContainerDriver } from '../../src/container/iscsi-driver.js';
import { log } from '../../src/util/log.js';

const MiB = 1 << 20;
const SIZE = 64 * MiB;
const CHAP = { user: 'container-user', secret: 'container-secret-1' };
const MUTUAL = { user: 'container-target', secret: 'container-secret-2' };
const CLIENT: IscsiScanOptions = { initiatorName: 'iqn.2024-01.io.tabula:agent.interop', holdMs: 8000, commandTimeoutMs: 4000 };

function useTarget(kind: TargetKind, extra: { chap?: typeof CHAP; mutualChap?: typeof MUTUAL } = {}): () => RunningTarget {
  let target: RunningTarget | undefined;
  let failed = false;
  before(async function () {
    this.timeout(90_000);
    if (kind === 'tgtd' && process.getuid?.() !== 0) this.skip();
    target = await startTarget({ kind, sizeBytes: SIZE, label: `container-${kind}`, ...extra });
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });
  after(async function () {
    this.timeout(30_000);
    if (!target) return;
    await target.stop({ keepLogs: failed });
    if (failed) log.warn(`iscsi container interop: ${kind} logs kept in ${target.dir}`);
  });
  return () => {
    if (!target) throw new Error('target not started');
    return target;
  };
}

async function rejects(p: Promise<unknown>): Promise<ContainerIoError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof ContainerIoError) return e;
    throw e;
  }
  expect.fail('expected a ContainerIoError');
}

for (const kind of ['tabula', 'tgtd'] as const) {
  describe(`iSCSI container on ${kind === 'tabula' ? 'tabula target' : 'tgtd'}`, function () {
    this.timeout(120_000);
    const target = useTarget(kind);
    let driver: IscsiContainerDriver | undefined;

    after(async () => {
      await driver?.close();
    });

    it('init labels the LUN at its capacity; the label reads back and a portal scan finds it', async () => {
      const t = target();
      const r = await initContainer(t.url, { iscsi: CLIENT });
      expect(r.medium).to.equal('iscsi');
      expect(r.label.size).to.equal(SIZE);
      const found = await readIscsiLabel(t.url, CLIENT);
      expect(found).to.include({ id: r.label.id, path: `iscsi://${t.portal}/${t.iqn}/${t.lun}`, size: SIZE, medium: 'iscsi' });
      const scan = await scanIscsiLocator(`iscsi://${t.portal}`, CLIENT);
      expect(scan.problems, JSON.stringify(scan.problems)).to.deep.equal([]);
      expect(scan.found.map((d) => d.id)).to.deep.equal([r.label.id]);
      driver = scan.found[0]!;
      expect(driver.geometry.blockSize).to.equal(512);
    });

    it('reads back what it writes: large, unaligned, FUA and 64 writes in flight', async () => {
      const d = driver!;
      const big = randomBytes(3 * MiB + 4096);
      await d.write(MiB, big);
      expect(Buffer.compare(await d.read(MiB, big.length), big)).to.equal(0);
      const odd = randomBytes(1500);
      await d.write(10 * MiB + 300, odd, { fua: true });
      expect(Buffer.compare(await d.read(10 * MiB + 300, odd.length), odd)).to.equal(0);
      const pieces = Array.from({ length: 64 }, () => randomBytes(64 * 1024));
      await Promise.all(pieces.map((p, i) => d.write(16 * MiB + i * p.length, p)));
      const back = await d.read(16 * MiB, 64 * 64 * 1024);
      pieces.forEach((p, i) => expect(Buffer.compare(back.subarray(i * p.length, (i + 1) * p.length), p), `piece ${i}`).to.equal(0));
      await d.flush();
    });

    it('discards and zeroes ranges: zeros read back, the rest untouched', async () => {
      const d = driver!;
      const data = randomBytes(4 * MiB);
      await d.write(24 * MiB, data);
      await d.discard(24 * MiB + MiB, MiB);
      await d.writeZeroes(24 * MiB + 3 * MiB, 512 * 1024);
      const back = await d.read(24 * MiB, 4 * MiB);
      expect(back.subarray(MiB, 2 * MiB).equals(Buffer.alloc(MiB))).to.equal(true);
      expect(back.subarray(3 * MiB, 3 * MiB + 512 * 1024).equals(Buffer.alloc(512 * 1024))).to.equal(true);
      expect(Buffer.compare(back.subarray(0, MiB), data.subarray(0, MiB))).to.equal(0);
      expect(Buffer.compare(back.subarray(2 * MiB, 3 * MiB), data.subarray(2 * MiB, 3 * MiB))).to.equal(0);
      await d.flush();
    });

    it('the data is on the medium: a new session (a second agent) reads it', async () => {
      const t = target();
      const d = driver!;
      const data = randomBytes(MiB);
      await d.write(40 * MiB, data, { fua: true });
      const other = await scanIscsiLocator(t.url, { ...CLIENT, initiatorName: 'iqn.2024-01.io.tabula:agent.other' });
      expect(other.found).to.have.length(1);
      try {
        expect(Buffer.compare(await other.found[0]!.read(40 * MiB, MiB), data)).to.equal(0);
      } finally {
        await other.found[0]!.close();
      }
    });

    it('two sessions with CRC32C digests: data intact', async () => {
      const t = target();
      const scan = await scanIscsiLocator(t.url, { ...CLIENT, sessions: 2, headerDigest: 'CRC32C', dataDigest: 'CRC32C', queueDepth: 8 });
      expect(scan.problems).to.deep.equal([]);
      const d = scan.found[0]!;
      try {
        const pieces = Array.from({ length: 48 }, () => randomBytes(128 * 1024));
        await Promise.all(pieces.map((p, i) => d.write(32 * MiB + i * p.length, p)));
        const back = await Promise.all(pieces.map((p, i) => d.read(32 * MiB + i * p.length, p.length)));
        back.forEach((b, i) => expect(Buffer.compare(b, pieces[i]!), `piece ${i}`).to.equal(0));
      } finally {
        await d.close();
      }
    });

    it('a MEDIUM ERROR from the backend (its file cut short) is EIO for that range only', async () => {
      const t = target();
      const d = driver!;
      // Past the new end of the backing file the target's reads come up short.
      truncateSync(t.backingFile, 48 * MiB);
      const e = await rejects(d.read(56 * MiB, 64 * 1024));
      expect(e.code, e.message).to.equal('EIO');
      expect(e.message).to.match(/MEDIUM ERROR 03\/11/);
      expect((await d.read(0, 64 * 1024)).length).to.equal(64 * 1024);
    });

    it('a target gone for good fails I/O as EUNREACHABLE once the hold is over, never EIO', async () => {
      const t = target();
      const scan = await scanIscsiLocator(t.url, { ...CLIENT, holdMs: 1500, commandTimeoutMs: 1000 });
      expect(scan.found).to.have.length(1);
      const d = scan.found[0]!;
      try {
        await t.stop({ keepLogs: false });
        const e = await rejects(d.read(0, 4096));
        expect(e.code, e.message).to.equal('EUNREACHABLE');
      } finally {
        await d.close();
      }
    });
  });
}

describe('iSCSI container with CHAP and mutual CHAP (tabula target)', function () {
  this.timeout(120_000);
  const target = useTarget('tabula', { chap: CHAP, mutualChap: MUTUAL });

  it('logs in with the locator credentials and the mutual CHAP of the client options; a wrong secret is unreachable', async () => {
    const t = target();
    const url = `iscsi://${CHAP.user}%${encodeURIComponent(CHAP.secret)}@${t.portal}/${t.iqn}/${t.lun}`;
    const opts = { ...CLIENT, mutualChap: MUTUAL };
    const r = await initContainer(url, { iscsi: opts });
    const scan = await scanIscsiLocator(url, opts);
    expect(scan.found.map((d) => d.id)).to.deep.equal([r.label.id]);
    expect(scan.found[0]!.path).to.equal(`iscsi://${CHAP.user}@${t.portal}/${t.iqn}/${t.lun}`);
    await scan.found[0]!.close();
    const wrong = await scanIscsiLocator(`iscsi://${CHAP.user}%nope-nope-nope@${t.portal}/${t.iqn}/${t.lun}`, opts);
    expect(wrong.found).to.deep.equal([]);
    expect(wrong.problems.map((p) => p.kind)).to.deep.equal(['unreachable']);
    expect(wrong.problems[0]!.message).to.not.include('nope-nope');
  });
});
