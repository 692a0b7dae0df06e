// Tabula's own iSCSI initiator (src/iscsi/initiator) against real targets on
// loopback: `tabula target` and tgtd. Login plain, with CHAP and mutual CHAP,
// with CRC32C digests; INQUIRY and READ CAPACITY(16); 1 MiB transfers that
// need R2T; 64 commands in flight with their data checked.
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { loadavg } from 'node:os';
import { startTarget, type RunningTarget, type TargetKind } from '../support/target-process.js';
import {
  IscsiInitiatorSession,
  IscsiSessionPool,
  TransportError,
  discoverTargets,
  randomIsid,
  connectSession,
  reportLuns,
  inquiryCdb,
  read16Cdb,
  readCapacity16Cdb,
  senseKey,
  write16Cdb,
  type ConnectOptions,
  type ScsiRequest,
  type ScsiResult,
  type ScsiTransport,
} from '../../src/iscsi/initiator/index.js';
import { log } from '../../src/util/log.js';
import { killGroup } from '../support/bounded-run.js';
import { sleep } from '../support/process.js';

const MiB = 1 << 20;
const SIZE = 64 * MiB;
const BLOCK = 512;
const INITIATOR = 'iqn.2026-11.org.tabula:initiator-interop';
const CHAP = { user: 'interop-user', secret: 'interop-secret-1' };
const MUTUAL = { user: 'interop-target', secret: 'interop-secret-2' };

const isUnitAttention = (r: ScsiResult): boolean => r.status === 2 && senseKey(r.sense) === 6;

/**
 * A command run again while it gets UNIT ATTENTION: a target reports one to
 * the first commands of every new I_T nexus (tgtd: POWER ON OCCURRED), which
 * is the driver's business, not the initiator's.
 */
async function run(t: ScsiTransport, req: ScsiRequest): Promise<ScsiResult> {
  for (let i = 0; ; i++) {
    const r = await t.execute(req);
    if (!isUnitAttention(r) || i === 8) return r;
  }
}

async function write16(t: ScsiTransport, lun: number, lba: number, data: Buffer): Promise<void> {
  const r = await run(t, { lun, cdb: write16Cdb(lba, data.length / BLOCK), dataOut: data });
  expect(r.status, `WRITE(16) lba=${lba} sense=${r.sense?.toString('hex')}`).to.equal(0);
}

async function read16(t: ScsiTransport, lun: number, lba: number, bytes: number): Promise<Buffer> {
  const r = await run(t, { lun, cdb: read16Cdb(lba, bytes / BLOCK), dataInLength: bytes });
  expect(r.status, `READ(16) lba=${lba} sense=${r.sense?.toString('hex')}`).to.equal(0);
  expect(r.data?.length).to.equal(bytes);
  return r.data as Buffer;
}

function useTarget(kind: TargetKind, extra: { chap?: typeof CHAP; mutualChap?: typeof MUTUAL } = {}): () => RunningTarget {
  let target: RunningTarget | undefined;
  let failed = false;
  before(async function () {
    this.timeout(90_000);
    if (kind === 'tgtd' && process.getuid?.() !== 0) this.skip();
    target = await startTarget({ kind, sizeBytes: SIZE, label: `initiator-${kind}`, ...extra });
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });
  after(async function () {
    this.timeout(30_000);
    if (!target) return;
    await target.stop({ keepLogs: failed });
    if (failed) log.warn(`initiator interop: ${kind} logs kept in ${target.dir}`);
  });
  return () => {
    if (!target) throw new Error('target not started');
    return target;
  };
}

function optionsFor(t: RunningTarget, extra: Partial<ConnectOptions> = {}): ConnectOptions {
  return { host: t.host, port: t.port, targetName: t.iqn, initiatorName: INITIATOR, loginTimeoutMs: 20_000, commandTimeoutMs: 60_000, ...extra };
}

async function withSession<T>(opts: ConnectOptions, fn: (s: IscsiInitiatorSession) => Promise<T>): Promise<T> {
  const s = await connectSession(opts);
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

async function expectTransportError(p: Promise<unknown>, kind: string): Promise<TransportError> {
  try {
    await p;
  } catch (e) {
    expect(e, (e as Error).message).to.be.instanceOf(TransportError);
    expect((e as TransportError).kind, (e as Error).message).to.equal(kind);
    return e as TransportError;
  }
  throw new Error(`expected TransportError(${kind}), it succeeded`);
}

for (const kind of ['tabula', 'tgtd'] as const) {
  describe(`iSCSI initiator against ${kind}`, function () {
    this.timeout(120_000);
    const target = useTarget(kind);

    it('discovers the target with SendTargets and lists its LUNs with REPORT LUNS', async () => {
      const t = target();
      const found = await discoverTargets({ host: t.host, port: t.port, initiatorName: INITIATOR, loginTimeoutMs: 20_000 });
      const mine = found.find((f) => f.name === t.iqn);
      expect(mine, JSON.stringify(found)).to.not.equal(undefined);
      expect(mine?.addresses.some((a) => a.startsWith(`${t.portal},`)), JSON.stringify(mine)).to.equal(true);
      const luns = await withSession(optionsFor(t), (s) => reportLuns(s));
      expect(luns).to.include(t.lun);
    });

    it('logs in and answers INQUIRY and READ CAPACITY(16)', async () => {
      const t = target();
      await withSession(optionsFor(t), async (s) => {
        const inq = await run(s, { lun: t.lun, cdb: inquiryCdb(96), dataInLength: 96 });
        expect(inq.status).to.equal(0);
        expect((inq.data as Buffer)[0]! & 0x1f, 'peripheral device type').to.equal(0);
        const cap = await run(s, { lun: t.lun, cdb: readCapacity16Cdb(32), dataInLength: 32 });
        expect(cap.status).to.equal(0);
        const data = cap.data as Buffer;
        expect(data.readBigUInt64BE(0) + 1n).to.equal(BigInt(SIZE / BLOCK));
        expect(data.readUInt32BE(8)).to.equal(BLOCK);
      });
    });

    it('reports a CHECK CONDITION with its sense data as a result', async () => {
      const t = target();
      await withSession(optionsFor(t), async (s) => {
        const r = await run(s, { lun: t.lun, cdb: read16Cdb(SIZE / BLOCK, 1), dataInLength: BLOCK });
        expect(r.status).to.equal(2);
        const sense = r.sense as Buffer;
        expect(sense[2]! & 0x0f, 'ILLEGAL REQUEST').to.equal(5);
        expect(sense[12], 'LBA OUT OF RANGE').to.equal(0x21);
      });
    });

    it('writes and reads 1 MiB with R2T only (InitialR2T=Yes, ImmediateData=No), CRC32C digests', async () => {
      const t = target();
      await withSession(optionsFor(t, { initialR2T: true, immediateData: false, headerDigest: 'CRC32C', dataDigest: 'CRC32C' }), async (s) => {
        expect(s.params.headerDigest).to.equal(true);
        expect(s.params.dataDigest).to.equal(true);
        expect(s.params.immediateData).to.equal(false);
        expect(s.params.initialR2T).to.equal(true);
        const data = randomBytes(MiB);
        await write16(s, t.lun, 2048, data);
        expect((await read16(s, t.lun, 2048, MiB)).equals(data)).to.equal(true);
      });
    });

    it('writes with immediate and unsolicited data (InitialR2T=No, ImmediateData=Yes) and reads back', async () => {
      const t = target();
      await withSession(optionsFor(t, { initialR2T: false, immediateData: true, headerDigest: 'prefer', dataDigest: 'None' }), async (s) => {
        const sizes = [BLOCK, 8 * 1024, 64 * 1024, 300 * 1024, MiB];
        let lba = 8192;
        for (const n of sizes) {
          const data = randomBytes(n);
          await write16(s, t.lun, lba, data);
          expect((await read16(s, t.lun, lba, n)).equals(data), `${n} bytes`).to.equal(true);
          lba += n / BLOCK;
        }
      });
    });

    it('keeps 64 commands in flight and every one carries its own data', async () => {
      const t = target();
      await withSession(optionsFor(t, { queueDepth: 64 }), async (s) => {
        const n = 64;
        const chunk = 64 * 1024;
        const base = 16384;
        const bufs = Array.from({ length: n }, () => randomBytes(chunk));
        await Promise.all(bufs.map((b, i) => write16(s, t.lun, base + (i * chunk) / BLOCK, b)));
        const back = await Promise.all(bufs.map((_, i) => read16(s, t.lun, base + (i * chunk) / BLOCK, chunk)));
        back.forEach((b, i) => expect(b.equals(bufs[i] as Buffer), `command ${i}`).to.equal(true));
        expect(s.pending).to.deep.equal({ inFlight: 0, queued: 0 });
      });
    });

    it('aborts a command that times out while the target is stopped (SIGSTOP), and the session goes on', async () => {
      const t = target();
      await withSession(optionsFor(t, { nopIntervalMs: 0, abortTimeoutMs: 30_000 }), async (s) => {
        const data = randomBytes(4096);
        await write16(s, t.lun, 64, data);
        killGroup(t.pid, 'SIGSTOP');
        let outcome: Promise<unknown>;
        try {
          outcome = s.execute({ lun: t.lun, cdb: read16Cdb(64, 8), dataInLength: 4096, timeoutMs: 500 }).then(
            () => undefined,
            (e: unknown) => e,
          );
          await sleep(1500);
        } finally {
          killGroup(t.pid, 'SIGCONT');
        }
        const err = await outcome;
        expect(err, 'the command did not time out').to.be.instanceOf(TransportError);
        expect((err as TransportError).kind, (err as Error).message).to.equal('timeout');
        expect(s.state).to.equal('up');
        expect((await read16(s, t.lun, 64, 4096)).equals(data)).to.equal(true);
      });
    });

    it('spreads commands over a pool of sessions', async () => {
      const t = target();
      const pool = await IscsiSessionPool.connect({ ...optionsFor(t), holdMs: 30_000 }, 3);
      try {
        expect(pool.state).to.equal('up');
        const chunk = 32 * 1024;
        const bufs = Array.from({ length: 48 }, () => randomBytes(chunk));
        const lba = (i: number): number => 40960 + (i * chunk) / BLOCK;
        await Promise.all(bufs.map((b, i) => write16(pool, t.lun, lba(i), b)));
        const back = await Promise.all(bufs.map((_, i) => read16(pool, t.lun, lba(i), chunk)));
        back.forEach((b, i) => expect(b.equals(bufs[i] as Buffer), `command ${i}`).to.equal(true));
      } finally {
        await pool.close();
      }
      expect(pool.state).to.equal('closed');
    });

    it('reinstates a session: a new login with the same ISID and TSIH 0 replaces the old one', async () => {
      const t = target();
      const isid = randomIsid();
      const old = await connectSession(optionsFor(t, { isid, nopIntervalMs: 0 }));
      const down = new Promise<TransportError>((resolve) => old.onDown(resolve));
      await read16(old, t.lun, 0, 4096);
      await withSession(optionsFor(t, { isid }), async (s) => {
        expect(s.isid).to.equal(isid);
        const data = randomBytes(8192);
        await write16(s, t.lun, 256, data);
        expect((await read16(s, t.lun, 256, data.length)).equals(data)).to.equal(true);
        // The target dropped the old session's connection.
        const err = await Promise.race([down, sleep(20_000).then(() => undefined)]);
        expect(err, 'the old session is still up').to.be.instanceOf(TransportError);
        expect(old.state).to.equal('down');
      });
      await old.close();
    });

    it('measures 4 KiB random reads at depth 32 (printed, not asserted)', async () => {
      const t = target();
      await withSession(optionsFor(t, { queueDepth: 32 }), async (s) => {
        await read16(s, t.lun, 0, 4096);
        const blocks = SIZE / 4096;
        const measure = async (ms: number): Promise<{ n: number; secs: number; cpuUs: number }> => {
          let n = 0;
          const end = Date.now() + ms;
          const cpu = process.cpuUsage();
          const start = process.hrtime.bigint();
          const worker = async (): Promise<void> => {
            while (Date.now() < end) {
              const lba = Math.floor(Math.random() * blocks) * 8;
              const r = await s.execute({ lun: t.lun, cdb: read16Cdb(lba, 8), dataInLength: 4096 });
              if (r.status !== 0) throw new Error(`READ(16) status ${r.status}`);
              n++;
            }
          };
          await Promise.all(Array.from({ length: 32 }, worker));
          const used = process.cpuUsage(cpu);
          return { n, secs: Number(process.hrtime.bigint() - start) / 1e9, cpuUs: used.user + used.system };
        };
        await measure(300); // warm-up
        const m = await measure(2000);
        console.log(
          `      ${kind}: 4 KiB random reads at depth 32: ${Math.round(m.n / m.secs)} IOPS, initiator CPU ${(m.cpuUs / m.n).toFixed(1)} us per read (load average ${loadavg()[0]?.toFixed(1)})`,
        );
      });
    });
  });

  describe(`iSCSI initiator CHAP against ${kind}`, function () {
    this.timeout(120_000);
    const target = useTarget(kind, { chap: CHAP, mutualChap: MUTUAL });

    it('logs in with CHAP and mutual CHAP', async () => {
      const t = target();
      await withSession(optionsFor(t, { chap: CHAP, mutualChap: MUTUAL, headerDigest: 'CRC32C', dataDigest: 'CRC32C' }), async (s) => {
        const data = randomBytes(128 * 1024);
        await write16(s, t.lun, 0, data);
        expect((await read16(s, t.lun, 0, data.length)).equals(data)).to.equal(true);
      });
    });

    it('logs in with one-way CHAP', async () => {
      const t = target();
      await withSession(optionsFor(t, { chap: CHAP }), async (s) => {
        expect(s.state).to.equal('up');
      });
    });

    it('fails as auth with a wrong secret, without CHAP, and when the target proves the wrong mutual secret', async () => {
      const t = target();
      const e1 = await expectTransportError(connectSession(optionsFor(t, { chap: { user: CHAP.user, secret: 'wrong-secret-123' } })), 'auth');
      expect(e1.message).to.match(/AuthenticationFailure|AuthorizationFailure/);
      await expectTransportError(connectSession(optionsFor(t)), 'auth');
      await expectTransportError(connectSession(optionsFor(t, { chap: CHAP, mutualChap: { user: MUTUAL.user, secret: 'not-the-target-1' } })), 'auth');
    });
  });
}
