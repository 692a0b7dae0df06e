// One logical unit on every path: a vdisk exported by agents a and b is one
// LU to initiators, whichever agent each uses. libiscsi's suites that use two
// initiators (persistent reservations, RESERVE(6), MultipathIO, and
// CompareAndWrite, which the issue counts among them) run with
// their first session through agent a and their second through agent b; and
// APTPL registrations made through agent a are reported on both agents after
// the controller restarts (the controller owns the LU state, in its database);
// a MODE SELECT through agent a changes the mode pages agent b reports.
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireTools } from '../support/tools.js';
import { badResults, runConformance, type ConformanceRun } from '../support/iscsi-test-cu.js';
import { SUITE_TIMEOUT, completed, describeCounts, resultLine, resultsContext } from '../support/conformance.js';
import { log } from '../../src/util/log.js';
import { useCluster } from './cluster.js';
import { GOOD, LunSession, describeIo, type IoResult } from './scsi-client.js';

const VDISK = 'shared';
const IQN = `iqn.2026-11.org.tabula:${VDISK}`;

/** The suites of iscsi-test-cu that use a second initiator (the MultipathIO URL). */
export const TWO_INITIATOR_SUITES = [
  'SCSI.PrinReadKeys',
  'SCSI.PrinServiceactionRange',
  'SCSI.PrinReportCapabilities',
  'SCSI.ProutRegister',
  'SCSI.ProutReserve',
  'SCSI.ProutClear',
  'SCSI.ProutPreempt',
  'SCSI.Reserve6',
  'SCSI.MultipathIO',
  'SCSI.CompareAndWrite',
];

function prinCdb(sa: number): Buffer {
  const c = Buffer.alloc(10);
  c[0] = 0x5e;
  c[1] = sa;
  c.writeUInt16BE(4096, 7);
  return c;
}

function proutCdb(sa: number, type = 0): Buffer {
  const c = Buffer.alloc(10);
  c[0] = 0x5f;
  c[1] = sa;
  c[2] = type;
  c.writeUInt32BE(24, 5);
  return c;
}

function proutParams(key: bigint, sark: bigint, flags: number): Buffer {
  const b = Buffer.alloc(24);
  b.writeBigUInt64BE(key, 0);
  b.writeBigUInt64BE(sark, 8);
  b[20] = flags;
  return b;
}

/**
 * A PROUT as initiators send it: again while it fails with 02/04/0A, which
 * the agent answers while it cannot reach the controller (an agent that kept
 * serving may reconnect a little after the controller is back). Bounded.
 */
async function proutRetrying(s: LunSession, cdb: Buffer, params: Buffer): Promise<IoResult> {
  for (let i = 0; ; i++) {
    const r = await s.command(cdb, { write: params });
    const transition = r.status === 2 && r.sense?.key === 2 && r.sense.asc === 0x04 && r.sense.ascq === 0x0a;
    if (!transition || i >= 100) return r;
    await new Promise((res) => setTimeout(res, 200));
  }
}

/**
 * A command as initiators send it after a path event: again while it reports
 * a unit attention (e.g. 06/2A/06 when a restarted agent's port group turned
 * active again, or 06/29/xx), which initiators consume and retry. Bounded.
 */
async function afterUnitAttentions(s: LunSession, cdb: Buffer, read: number): Promise<IoResult> {
  for (let i = 0; ; i++) {
    const r = await s.command(cdb, { read });
    if (!(r.status === 2 && r.sense?.key === 6) || i >= 16) return r;
  }
}

/** PRIN READ KEYS: generation and keys. */
async function readKeys(s: LunSession): Promise<{ generation: number; keys: bigint[] }> {
  const r = await afterUnitAttentions(s, prinCdb(0), 4096);
  expect(r.status, `PRIN READ KEYS: ${describeIo(r)}`).to.equal(GOOD);
  const n = r.data.readUInt32BE(4) / 8;
  return { generation: r.data.readUInt32BE(0), keys: Array.from({ length: n }, (_, i) => r.data.readBigUInt64BE(8 + i * 8)) };
}

/** PRIN READ FULL STATUS: each registration's key and TransportID text. */
async function fullStatus(s: LunSession): Promise<{ key: bigint; holder: boolean; initiator: string }[]> {
  const r = await afterUnitAttentions(s, prinCdb(3), 4096);
  expect(r.status, `PRIN READ FULL STATUS: ${describeIo(r)}`).to.equal(GOOD);
  const out: { key: bigint; holder: boolean; initiator: string }[] = [];
  const end = 8 + r.data.readUInt32BE(4);
  for (let at = 8; at < end; ) {
    const tidLen = r.data.readUInt32BE(at + 20);
    const tid = r.data.subarray(at + 24 + 4, at + 24 + tidLen);
    out.push({ key: r.data.readBigUInt64BE(at), holder: (r.data[at + 12]! & 1) === 1, initiator: tid.toString('utf8').replace(/\0+$/, '') });
    at += 24 + tidLen;
  }
  return out;
}

const MODE_SENSE_CACHING = Buffer.from([0x1a, 0x08, 0x08, 0, 0xff, 0]); // MODE SENSE(6), DBD, caching page
const MODE_SELECT_6 = Buffer.from([0x15, 0x10, 0, 0, 24, 0]); // PF, a 4-byte header and the caching page

/** A MODE SELECT(6) parameter list: the caching page with WCE as given, every other field at its default. */
function cachingPage(wce: boolean): Buffer {
  return Buffer.from([0, 0, 0, 0, 0x08, 0x12, wce ? 0x04 : 0, 0, 0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
}

/** WCE of the caching page; `consumeUnitAttentions`: after any unit attentions pending, else the first answer must be GOOD. */
async function wce(s: LunSession, consumeUnitAttentions: boolean): Promise<boolean> {
  const r = consumeUnitAttentions ? await afterUnitAttentions(s, MODE_SENSE_CACHING, 255) : await s.command(MODE_SENSE_CACHING, { read: 255 });
  expect(r.status, `MODE SENSE: ${describeIo(r)}`).to.equal(GOOD);
  return (r.data[4 + 2]! & 0x04) !== 0;
}

describe('system: one logical unit on every path (vdisk exported by two agents)', function () {
  this.timeout(12 * 60_000);
  let run: ConformanceRun | undefined;
  let outDir = '';
  let failed = false;

  const cluster = useCluster('lu-state', async (c) => {
    requireTools(['timeout', 'stdbuf', 'iscsi-test-cu']);
    await c.serveVdisk({ vdisk: VDISK, size: '256MiB', containerSize: '512MiB', agents: { a: {}, b: {} } });
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });

  after(function () {
    if (outDir !== '' && !failed && process.env.TABULA_SYSTEM_KEEP !== '1') rmSync(outDir, { recursive: true, force: true });
  });

  describe('iscsi-test-cu, first session through agent a, second through agent b', function () {
    before(async function () {
      this.timeout(10 * 60_000);
      const c = cluster();
      outDir = mkdtempSync(join(tmpdir(), 'tabula-system-lu-state-'));
      run = await runConformance({
        url: c.url('a', VDISK),
        mpathUrl: c.url('b', VDISK),
        outDir,
        tests: TWO_INITIATOR_SUITES,
        suiteTimeoutMs: SUITE_TIMEOUT,
        totalTimeoutMs: 8 * 60_000,
        dataloss: true,
        sanitize: false,
      });
      log.warn(describeCounts('one vdisk through agents a and b', run));
    });

    it('passes every two-initiator suite: none failed, hung or crashed', function () {
      const r = completed(run);
      const bad = badResults(r.results);
      expect(bad.map(resultLine), `tests not passed:\n${bad.map(resultLine).join('\n')}${resultsContext(r)}`).to.deep.equal([]);
      expect(r.counts.passed).to.be.greaterThan(20);
    });
  });

  describe('APTPL registrations and a controller restart', function () {
    it('are reported on both agents after the controller restarts', async function () {
      this.timeout(120_000);
      const c = cluster();
      const a = await LunSession.open(c.agent('a').portal, IQN);
      const b = await LunSession.open(c.agent('b').portal, IQN);
      try {
        // Whatever the suites left: CLEAR needs a registration, so register first (REGISTER AND IGNORE EXISTING KEY).
        expect((await a.command(proutCdb(6), { write: proutParams(0n, 0xc1ea2n, 0) })).status).to.equal(GOOD);
        expect((await a.command(proutCdb(3), { write: proutParams(0xc1ea2n, 0n, 0) })).status).to.equal(GOOD);
        // Through agent a: REGISTER with APTPL, then a WRITE EXCLUSIVE reservation.
        const reg = await a.command(proutCdb(0), { write: proutParams(0n, 0xa1a1n, 0x01) });
        expect(reg.status, `REGISTER: ${describeIo(reg)}`).to.equal(GOOD);
        const res = await a.command(proutCdb(1, 1), { write: proutParams(0xa1a1n, 0n, 0) });
        expect(res.status, `RESERVE: ${describeIo(res)}`).to.equal(GOOD);
        const before = await readKeys(b);
        expect(before.keys).to.deep.equal([0xa1a1n]);
        expect(await readKeys(a)).to.deep.equal(before);
        // Through agent b the other initiator is not registered: its WRITE conflicts, its READ does not.
        expect((await b.write(0, Buffer.alloc(512))).status).to.equal(0x18);
        expect((await b.read(0, 1)).status).to.equal(GOOD);

        // Everything but agent a restarts: agent b comes back with no state of its own, so what it reports is
        // the controller's, from its database.
        b.close();
        await c.killController();
        await c.agent('b').daemon.kill();
        await c.startController();
        await c.startAgent('b', { containers: [c.containerGlob] });
        await c.waitServed(VDISK, ['a', 'b']);
        const b2 = await LunSession.open(c.agent('b').portal, IQN);
        try {
          for (const s of [a, b2]) {
            expect(await readKeys(s)).to.deep.equal(before);
            const full = await fullStatus(s);
            expect(full.map((f) => [f.key, f.holder])).to.deep.equal([[0xa1a1n, true]]);
            expect(full[0]!.initiator).to.match(/^iqn\.2026-11\.org\.tabula\.test:raw,i,0x[0-9a-f]{12}$/);
          }
          // And enforced there: b2's initiator is not registered.
          expect((await b2.write(0, Buffer.alloc(512))).status).to.equal(0x18);
        } finally {
          b2.close();
        }
        // Clean up: release and unregister (APTPL off).
        const clear = await proutRetrying(a, proutCdb(3), proutParams(0xa1a1n, 0n, 0));
        expect(clear.status, `CLEAR: ${describeIo(clear)}`).to.equal(GOOD);
      } finally {
        a.close();
        b.close();
      }
    });
  });

  describe('mode parameters', function () {
    it('MODE SELECT through agent a changes them on agent b, whose nexus is told first (06/2A/01)', async function () {
      this.timeout(60_000);
      const c = cluster();
      const a = await LunSession.open(c.agent('a').portal, IQN);
      const b = await LunSession.open(c.agent('b').portal, IQN);
      try {
        // Whatever path events came before (ports restarting, resets) are consumed first, as initiators do.
        const before = await wce(a, true);
        expect(await wce(b, true)).to.equal(before);
        // The caching page's WCE, the other way round, through agent a.
        const select = await proutRetrying(a, MODE_SELECT_6, cachingPage(!before));
        expect(select.status, `MODE SELECT: ${describeIo(select)}`).to.equal(GOOD);
        // The issuer is not told; it sees the new value.
        expect(await wce(a, false)).to.equal(!before);
        // Through agent b: MODE PARAMETERS CHANGED first, then the new value.
        const ua = await b.command(MODE_SENSE_CACHING, { read: 255 });
        expect(ua.status, `first command on b: ${describeIo(ua)}`).to.equal(2);
        expect([ua.sense?.key, ua.sense?.asc, ua.sense?.ascq]).to.deep.equal([6, 0x2a, 0x01]);
        expect(await wce(b, false)).to.equal(!before);
        // Back as it was, now through agent b.
        const back = await proutRetrying(b, MODE_SELECT_6, cachingPage(before));
        expect(back.status, `MODE SELECT back: ${describeIo(back)}`).to.equal(GOOD);
        expect(await wce(a, true)).to.equal(before);
      } finally {
        a.close();
        b.close();
      }
    });
  });
});
