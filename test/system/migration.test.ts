// Online migration with a writer at queue depth 32 through two agents (16
// commands in flight on a raw iSCSI session to each), random data at random
// offsets, every write also applied to a reference file on the side:
// - `tabula vdisk migrate` (started, followed by migrate-status, cancelled,
//   then run again with --wait to the end) moves the vdisk from c0 to c1;
//   the writer sees no error, `qemu-img compare` finds the vdisk equal to
//   the reference through both agents, nothing is left on c0 and
//   `tabula container rm` of it succeeds;
// - `tabula container evacuate c1` moves it on to c2, with the controller
//   SIGKILLed in the middle and restarted: the migration resumes by itself
//   and ends with the same result (data equal, c1 empty and removable).
// The vdisk is thick, so the writer never allocates: every segment is one
// the migration has to move while it is written.
//
// Size: 256 MiB by default (about a minute on a 2-core machine);
// TABULA_MIGRATION_MIB=1024 runs the 1 GiB.
import { expect } from 'chai';
import { randomBytes, randomInt } from 'node:crypto';
import { closeSync, openSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { requireTools } from '../support/tools.js';
import { iqnOf, useCluster, type Cluster } from './cluster.js';
import { sleep, waitFor } from '../support/process.js';
import { compare } from './clients.js';
import { GOOD, LunSession, describeIo } from './scsi-client.js';
import { check, segments, table } from './table.js';

const MiB = 1 << 20;
const SIZE_MIB = Number(process.env.TABULA_MIGRATION_MIB ?? 256);
const SIZE = SIZE_MIB * MiB;
const VDISK = 'mover';
const DEPTH_PER_AGENT = 16;
const UNIT = 4096;

/**
 * Random writes of 4-64 KiB at 4 KiB-aligned offsets, DEPTH_PER_AGENT in
 * flight on each session, never two in flight over the same bytes, so the
 * reference (written when a write is issued) ends equal to the LUN.
 */
class Writer {
  readonly errors: string[] = [];
  writes = 0;
  bytes = 0;
  #stop = false;
  readonly #busy = new Uint8Array(SIZE / UNIT);
  readonly #running: Promise<void>[] = [];

  constructor(
    readonly sessions: readonly LunSession[],
    readonly refFd: number,
  ) {
    for (const s of sessions) for (let i = 0; i < DEPTH_PER_AGENT; i++) this.#running.push(this.#slot(s));
  }

  #pick(): { unit: number; units: number } {
    for (;;) {
      const units = randomInt(1, 17);
      const unit = randomInt(0, SIZE / UNIT - units + 1);
      let free = true;
      for (let u = unit; u < unit + units && free; u++) free = this.#busy[u] === 0;
      if (free) return { unit, units };
    }
  }

  async #slot(s: LunSession): Promise<void> {
    while (!this.#stop) {
      const { unit, units } = this.#pick();
      this.#busy.fill(1, unit, unit + units);
      const data = randomBytes(units * UNIT);
      writeSync(this.refFd, data, 0, data.length, unit * UNIT);
      try {
        const r = await s.write((unit * UNIT) / 512, data, 60_000);
        if (r.status !== GOOD) this.errors.push(`WRITE at ${unit * UNIT} (${data.length} bytes): ${describeIo(r)}`);
      } catch (err) {
        this.errors.push(`WRITE at ${unit * UNIT} (${data.length} bytes): ${(err as Error).message}`);
        return;
      } finally {
        this.#busy.fill(0, unit, unit + units);
      }
      this.writes++;
      this.bytes += data.length;
    }
  }

  async stop(): Promise<void> {
    this.#stop = true;
    await Promise.all(this.#running);
  }
}

interface Info {
  state: string;
  segmentsDone: number;
  segmentsTotal: number;
  error: string;
}

describe(`system: online migration of a ${SIZE_MIB} MiB vdisk under writes at queue depth 32 through two agents`, function () {
  this.timeout(300_000 + SIZE_MIB * 500);
  const ids: string[] = [];
  let refPath = '';
  let refFd = -1;
  let sessions: LunSession[] = [];
  let writer: Writer | undefined;

  const cluster = useCluster('migration', async (c) => {
    requireTools(['timeout', 'qemu-img']);
    // A long hold: writes held while the controller is down complete once it is back.
    await c.startController({ holdTimeoutS: 40 });
    // The vdisk is created thick while c0 is the only container; agents start after all three exist.
    ids.push(await c.addContainer('c0.img', `${SIZE_MIB + 16}MiB`));
    await c.cliOk(['vdisk', 'create', VDISK, '--size', `${SIZE_MIB}MiB`, '--thick']);
    ids.push(await c.addContainer('c1.img', `${SIZE_MIB + 16}MiB`));
    ids.push(await c.addContainer('c2.img', `${SIZE_MIB + 16}MiB`));
    await Promise.all([c.startAgent('a', { containers: [c.containerGlob] }), c.startAgent('b', { containers: [c.containerGlob] })]);
    await Promise.all([c.cliOk(['export', 'add', VDISK, '--agent', 'a']), c.cliOk(['export', 'add', VDISK, '--agent', 'b'])]);
    await c.waitServed(VDISK, ['a', 'b']);
    refPath = join(c.dir, 'reference.raw');
    refFd = openSync(refPath, 'w+');
    ftruncateSync(refFd, SIZE);
  });

  afterEach(async function () {
    await writer?.stop();
    writer = undefined;
    for (const s of sessions) s.close();
    sessions = [];
  });

  after(function () {
    if (refFd >= 0) closeSync(refFd);
  });

  async function startWriter(c: Cluster): Promise<Writer> {
    sessions = await Promise.all(['a', 'b'].map((a) => LunSession.open(c.agent(a).portal, iqnOf(VDISK))));
    writer = new Writer(sessions, refFd);
    // Let it get going before the table starts changing.
    await sleep(500);
    return writer;
  }

  async function stopWriter(w: Writer): Promise<void> {
    await w.stop();
    writer = undefined;
    for (const s of sessions) s.close();
    sessions = [];
    expect(w.errors, w.errors.slice(0, 5).join('\n')).to.deep.equal([]);
    expect(w.writes).to.be.greaterThan(100);
  }

  async function expectOnlyOn(c: Cluster, container: string): Promise<void> {
    const segs = segments(await table(c, VDISK));
    const elsewhere = segs.filter((s) => s.container !== container);
    expect(elsewhere.length, `segments not on ${container}: ${JSON.stringify(elsewhere.slice(0, 3))}`).to.equal(0);
  }

  async function expectSameData(c: Cluster): Promise<void> {
    for (const agent of ['a', 'b']) {
      const r = await compare(refPath, c.url(agent, VDISK), 180_000);
      expect(r.same, `through agent ${agent}: ${r.text}`).to.equal(true);
    }
  }

  /** Waits until the container holds nothing (freed segments scrubbed), then removes it through the CLI. */
  async function removeEmpty(c: Cluster, id: string): Promise<void> {
    await waitFor(`container ${id} empty`, 60_000, async () => {
      const x = (await c.admin.call('ListContainers', {})).containers.find((k) => k.id === id);
      return x?.segmentsUsed === 0 && x.allocatedBytes === 0 ? true : undefined;
    });
    const out = await c.cliOk(['container', 'rm', id]);
    expect(out).to.match(new RegExp(`container ${id} removed`));
  }

  it('migrate: started, reported, cancelled, then run to the end with --wait; data intact, c0 removable', async function () {
    const c = cluster();
    const [c0, c1] = ids as [string, string];
    const w = await startWriter(c);

    // Without --wait: prints the started migration.
    const started = await c.cliOk(['vdisk', 'migrate', VDISK, '--to', c1.slice(0, 8)]);
    expect(started).to.match(new RegExp(`migration started: vdisk ${VDISK} to ${c1.slice(0, 8)}: running \\d+\\.\\d% \\(\\d+/${SIZE_MIB} segments`));
    const status = await c.cliOk(['vdisk', 'migrate-status', VDISK]);
    expect(status).to.match(/running \d+\.\d% .* (\d+\.\d|-) MB\/s, ETA/);
    const cancelled = await c.cliJson<Info>(['vdisk', 'migrate-cancel', VDISK]);
    expect(cancelled.state).to.equal('cancelled');
    expect(cancelled.segmentsDone).to.be.below(SIZE_MIB);

    // Again, followed to the end: progress lines, then done.
    const r = await c.cli(['vdisk', 'migrate', VDISK, '--to', c1, '--wait'], { timeoutMs: 240_000 + SIZE_MIB * 400 });
    expect(r.exitCode, r.stderr).to.equal(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).to.match(new RegExp(`^migration of vdisk ${VDISK} started: \\d+ segments to move$`));
    expect(lines.some((l) => /: running \d+\.\d% \(\d+\/\d+ segments, .*\), \d+\.\d MB\/s, ETA \d+/.test(l)), r.stdout).to.equal(true);
    expect(lines.at(-1)).to.match(new RegExp(`^vdisk ${VDISK} to ${c1.slice(0, 8)}: done 100\\.0% \\(\\d+/\\d+ segments`));

    await stopWriter(w);
    await expectOnlyOn(c, c1);
    await expectSameData(c);
    await removeEmpty(c, c0);
    const ck = await check(c);
    expect(ck.ok, ck.text).to.equal(true);
  });

  it('evacuate with the controller SIGKILLed halfway: the migration resumes after the restart and ends the same', async function () {
    const c = cluster();
    const [, c1, c2] = ids as [string, string, string];
    const w = await startWriter(c);

    const out = await c.cliOk(['container', 'evacuate', c1]);
    expect(out).to.match(new RegExp(`container ${c1} draining:\\nvdisk ${VDISK} off ${c1.slice(0, 8)}: running`));
    const mid = await waitFor('evacuation a quarter done', 120_000, async () => {
      const m = (await c.admin.call('GetMigration', { vdisk: VDISK })) as Info;
      if (m.state !== 'running') throw new Error(`migration ${m.state}: ${m.error}`);
      return m.segmentsDone >= SIZE_MIB / 4 ? m : undefined;
    }, 50);
    await c.killController();
    expect(mid.segmentsDone).to.be.below(SIZE_MIB);
    // The writer keeps going against the agents alone for a while.
    await sleep(1000);
    await c.startController();
    const end = await waitFor('evacuation done after the restart', 240_000 + SIZE_MIB * 400, async () => {
      const m = (await c.admin.call('GetMigration', { vdisk: VDISK })) as Info;
      if (m.state === 'failed' || m.state === 'cancelled') throw new Error(`migration ${m.state}: ${m.error}`);
      return m.state === 'done' ? m : undefined;
    }, 300);
    expect(end.segmentsDone).to.be.at.least(mid.segmentsDone);

    await stopWriter(w);
    await expectOnlyOn(c, c2);
    await expectSameData(c);
    await removeEmpty(c, c1);
    const ck = await check(c);
    expect(ck.ok, ck.text).to.equal(true);
    const ls = await c.cliOk(['container', 'ls']);
    expect(ls).to.not.match(new RegExp(c1));
  });
});
