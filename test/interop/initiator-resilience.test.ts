// The initiator when the target misbehaves in time: stopped (SIGSTOP) long
// enough for a command to time out and be aborted, killed and restarted on
// the same port while commands are queued (the ReconnectingSession reinstates
// the session and runs them again), and gone for good (commands fail as
// 'unreachable' after the hold). Every wait is bounded.
import { expect } from 'chai';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { killGroup, spawnBounded } from '../support/bounded-run.js';
import { LOOPBACK, freeLoopbackPort, sleep, terminate, waitExit } from '../support/process.js';
import { cleanEnv, tabulaLauncher } from '../support/tabula-process.js';
import {
  ReconnectingSession,
  connectSession,
  TransportError,
  read16Cdb,
  senseKey,
  write16Cdb,
  type ReconnectingOptions,
  type ScsiRequest,
  type ScsiResult,
  type ScsiTransport,
  type TransportState,
} from '../../src/iscsi/initiator/index.js';

const MiB = 1 << 20;
const SIZE = 64 * MiB;
const INITIATOR = 'iqn.2026-11.org.tabula:initiator-resilience';
const BLOCK = 512;

/** Run again on UNIT ATTENTION: a reinstated session starts with one on some targets. */
async function run(t: ScsiTransport, req: ScsiRequest): Promise<ScsiResult> {
  for (let i = 0; ; i++) {
    const r = await t.execute(req);
    if (!(r.status === 2 && senseKey(r.sense) === 6) || i === 8) return r;
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

/** `tabula target` on a fixed port and file, so that it can be killed and started again. */
class RestartableTarget {
  private child: ChildProcess | undefined;
  readonly dir = mkdtempSync(join(tmpdir(), 'tabula-initiator-resilience-'));
  readonly file = join(this.dir, 'lun.img');
  readonly logFile = join(this.dir, 'target.log');
  readonly iqn: string;

  constructor(readonly port: number) {
    this.iqn = `iqn.2026-11.org.tabula:resilience-${port}`;
    const fd = openSync(this.file, 'w');
    ftruncateSync(fd, SIZE);
    closeSync(fd);
  }

  async start(): Promise<void> {
    const args = [...tabulaLauncher(), 'target', '--file', this.file, '--size', String(SIZE), '--portal', `${LOOPBACK}:${this.port}`, '--iqn', this.iqn];
    const logFd = openSync(this.logFile, 'a');
    let child: ChildProcess;
    try {
      child = spawnBounded(process.execPath, args, 10 * 60_000, ['ignore', 'pipe', logFd], cleanEnv({ TABULA_LOG_LEVEL: 'info' }));
    } finally {
      closeSync(logFd);
    }
    this.child = child;
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('tabula target not ready within 60 s')), 60_000);
      lines.on('line', (l) => {
        if (l.startsWith('iscsi://')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('exit', (code, sig) => {
        clearTimeout(timer);
        reject(new Error(`tabula target exited (${sig ?? code}) before it was ready`));
      });
    });
  }

  signal(sig: NodeJS.Signals): void {
    if (this.child?.pid !== undefined) killGroup(this.child.pid, sig);
  }

  /** SIGTERM (the target drains: it asks its initiators to log out), and wait for the exit. */
  async drainAndExit(): Promise<void> {
    const c = this.child;
    this.child = undefined;
    if (!c) return;
    c.kill('SIGTERM');
    if (!(await waitExit(c, 30_000))) throw new Error('tabula target did not exit within 30 s of SIGTERM');
  }

  log(): string {
    return readFileSync(this.logFile, 'utf8');
  }

  /** SIGKILL, and wait until the process is gone (its port is free again). */
  async kill(): Promise<void> {
    const c = this.child;
    this.child = undefined;
    if (c) await terminate(c, 0);
  }

  async stop(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  options(extra: Partial<ReconnectingOptions> = {}): ReconnectingOptions {
    return { host: LOOPBACK, port: this.port, targetName: this.iqn, initiatorName: INITIATOR, loginTimeoutMs: 5_000, ...extra };
  }
}

describe('iSCSI initiator resilience (tabula target)', function () {
  this.timeout(180_000);
  let target: RestartableTarget;

  beforeEach(async function () {
    this.timeout(90_000);
    target = new RestartableTarget(await freeLoopbackPort());
    await target.start();
  });
  afterEach(async function () {
    this.timeout(30_000);
    target.signal('SIGCONT');
    await target.stop();
  });

  it('aborts a command that times out (ABORT TASK) and keeps the session usable', async () => {
    const s = await connectSession(target.options({ nopIntervalMs: 0, abortTimeoutMs: 30_000 }));
    try {
      await write16(s, 0, 0, randomBytes(4096));
      target.signal('SIGSTOP');
      const pending = s.execute({ lun: 0, cdb: read16Cdb(0, 8), dataInLength: 4096, timeoutMs: 500 });
      const outcome = pending.then(
        () => undefined,
        (e: unknown) => e,
      );
      await sleep(1500);
      target.signal('SIGCONT');
      const err = await outcome;
      expect(err).to.be.instanceOf(TransportError);
      expect((err as TransportError).kind, (err as Error).message).to.equal('timeout');
      expect((err as TransportError).retryable).to.equal(true);
      expect(s.state).to.equal('up');
      const again = randomBytes(4096);
      await write16(s, 0, 8, again);
      expect((await read16(s, 0, 8, 4096)).equals(again)).to.equal(true);
    } finally {
      target.signal('SIGCONT');
      await s.close();
    }
  });

  it('declares the connection dead when NOP-Outs go unanswered, and a held command waits for the session to come back', async () => {
    const states: TransportState[] = [];
    const r = await ReconnectingSession.connect(target.options({ nopIntervalMs: 300, nopTimeoutMs: 700, holdMs: 60_000, commandTimeoutMs: 60_000 }));
    r.onStateChange((st) => states.push(st));
    try {
      target.signal('SIGSTOP');
      await sleep(2500);
      expect(r.state).to.not.equal('up');
      const data = randomBytes(64 * 1024);
      const write = write16(r, 0, 4096, data);
      await sleep(500);
      target.signal('SIGCONT');
      await write;
      expect((await read16(r, 0, 4096, data.length)).equals(data)).to.equal(true);
      expect(states).to.include('down');
      expect(states[states.length - 1]).to.equal('up');
    } finally {
      target.signal('SIGCONT');
      await r.close();
    }
  });

  it('reissues in-flight and queued commands after the target is killed and restarted on the same port', async () => {
    const states: TransportState[] = [];
    const r = await ReconnectingSession.connect(target.options({ queueDepth: 8, holdMs: 90_000, commandTimeoutMs: 60_000 }));
    r.onStateChange((st) => states.push(st));
    try {
      const n = 64;
      const chunk = 128 * 1024;
      const bufs = Array.from({ length: n }, () => randomBytes(chunk));
      await target.kill();
      // Issued while the target is down: they wait (queued) for the session.
      const writes = bufs.map((b, i) => write16(r, 0, (i * chunk) / 512, b));
      await sleep(300);
      expect(r.state).to.equal('down');
      await target.start();
      await Promise.all(writes);
      expect(r.state).to.equal('up');
      expect(r.reconnects).to.be.at.least(1);

      // Killed with commands in flight this time.
      const reads = bufs.map((_, i) => read16(r, 0, (i * chunk) / 512, chunk));
      await target.kill();
      await target.start();
      const back = await Promise.all(reads);
      back.forEach((b, i) => expect(b.equals(bufs[i] as Buffer), `command ${i}`).to.equal(true));
      expect(states.filter((s) => s === 'down').length).to.be.at.least(2);
    } finally {
      await r.close();
    }
    expect(r.state).to.equal('closed');
  });

  it('logs out when the target asks (Async Message on SIGTERM drain) and carries on once it is back', async () => {
    const states: TransportState[] = [];
    const r = await ReconnectingSession.connect(target.options({ holdMs: 90_000, commandTimeoutMs: 60_000 }));
    r.onStateChange((st) => states.push(st));
    try {
      const first = randomBytes(64 * 1024);
      await write16(r, 0, 0, first);
      await target.drainAndExit();
      expect(target.log()).to.match(/"loggedOut":1/);
      expect(states).to.include('down');
      // Issued while the target is gone: held until it is back.
      const later = randomBytes(64 * 1024);
      const write = write16(r, 0, 128, later);
      await sleep(200);
      await target.start();
      await write;
      expect((await read16(r, 0, 0, first.length)).equals(first)).to.equal(true);
      expect((await read16(r, 0, 128, later.length)).equals(later)).to.equal(true);
    } finally {
      await r.close();
    }
  });

  it('start() comes up once a target that was down at first appears, and runs the commands held meanwhile', async () => {
    await target.kill();
    const r = ReconnectingSession.start(target.options({ holdMs: 90_000, backoffMaxMs: 300 }));
    try {
      expect(r.state).to.equal('connecting');
      const data = randomBytes(32 * 1024);
      const write = write16(r, 0, 512, data);
      await sleep(500);
      expect(r.state).to.equal('connecting');
      expect(r.lastFailure?.kind).to.equal('unreachable');
      await target.start();
      await write;
      expect(r.state).to.equal('up');
      expect((await read16(r, 0, 512, data.length)).equals(data)).to.equal(true);
    } finally {
      await r.close();
    }
  });

  it("fails commands as 'unreachable' after holdMs when the target never comes back, and close() is bounded", async () => {
    const r = await ReconnectingSession.connect(target.options({ holdMs: 1500, backoffMaxMs: 400 }));
    try {
      await run(r, { lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512 });
      await target.kill();
      const errs = await Promise.all(
        Array.from({ length: 4 }, (_, i) =>
          r.execute({ lun: 0, cdb: read16Cdb(i, 1), dataInLength: 512 }).then(
            () => undefined,
            (e: unknown) => e,
          ),
        ),
      );
      for (const e of errs) {
        expect(e).to.be.instanceOf(TransportError);
        expect((e as TransportError).kind, (e as Error).message).to.equal('unreachable');
        expect((e as TransportError).retryable).to.equal(true);
      }
      expect(r.state).to.equal('down');
    } finally {
      await r.close();
    }
    const e = await r.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512 }).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect((e as TransportError).kind).to.equal('closed');
  });
});
