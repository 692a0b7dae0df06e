// A connected but silent agent (SIGSTOP: its TCP stream stays open, it
// answers nothing) during each thing the controller sends it and waits
// for (issue 19; docs/deploy.md, "Retention and deadlines"). Real
// controller and agent processes; each operation ends, or fails with a
// one-line reason, within its documented bound (asserted with generous
// slack: the bound is what the docs promise, the slack is for a loaded
// machine), and after SIGCONT the system converges: `tabula check` clean,
// the agent serves again, I/O works through it.
//
// (a) a snapshot of a vdisk the stopped agent exports: fails at the ack
//     deadline, naming the agent; a new snapshot works after SIGCONT;
// (b) a thin first write through the other agent, whose allocation the
//     stopped agent must ack: completes once the stopped agent is fenced
//     and past its lease;
// (c) scrubbing freed segments, the zero command sent to the stopped
//     agent: fails at the command deadline; the segments wait for that
//     agent (never zeroed twice, never reused before) and are freed once
//     it answers after SIGCONT;
// (d) a migration copy sent to the stopped agent: misses its deadline and
//     is done by the other agent; the migration completes.
import { expect } from 'chai';
import { requireTools } from '../support/tools.js';
import { sleep, waitFor } from '../support/process.js';
import { iqnOf, useCluster, type Cluster } from './cluster.js';
import { GOOD, LunSession, describeIo, pattern } from './scsi-client.js';
import { STATE, check, containerSegmentsUsed, segments, table } from './table.js';
import { DEFAULT_LEASE_MARGIN_MS, DEFAULT_LEASE_MS } from '../../src/controller/agent-registry.js';
import { commandDeadlineMs } from '../../src/controller/agent-commands.js';

const MiB = 1 << 20;
const SEG_BLOCKS = MiB / 512;
const ACK_S = 2;
const COMMAND_S = 2;
/** Slack on every bound, for a machine shared by many test runs. */
const SLACK_MS = 20_000;

/** Runs `fn` with agent `name` stopped (SIGSTOP), and always resumes it (SIGCONT). */
async function stopped<T>(c: Cluster, name: string, fn: () => Promise<T>): Promise<T> {
  const d = c.agent(name).daemon;
  d.signal('SIGSTOP');
  try {
    return await fn();
  } finally {
    d.signal('SIGCONT');
  }
}

async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  const value = await fn();
  return { value, ms: performance.now() - t0 };
}

/** Converged: both agents serve the vdisk at its current version, I/O works through each, and the check is clean. */
async function converged(c: Cluster, vdisk: string, lba: number, tag: number): Promise<void> {
  await c.waitServed(vdisk, ['a', 'b'], 120_000);
  for (const name of ['a', 'b']) {
    const s = await LunSession.open(c.agent(name).portal, iqnOf(vdisk));
    try {
      const data = pattern(tag, lba, 8);
      const w = await s.write(lba, data, 30_000);
      expect(describeIo(w), `write through ${name}`).to.equal('GOOD');
      const r = await s.read(lba, 8, 30_000);
      expect(r.status).to.equal(GOOD);
      expect(r.data.equals(data), `read back through ${name}`).to.equal(true);
    } finally {
      s.close();
    }
  }
  const r = await check(c);
  expect(r.ok, r.text).to.equal(true);
}

describe('system: a connected but silent agent (SIGSTOP) during commands and waits', function () {
  this.timeout(600_000);
  const VDISK = 'quiet';
  let containers: string[] = [];
  const cluster = useCluster('silent-agent', async (c) => {
    requireTools(['timeout']);
    // A long hold: the I/O of (b) waits for the controller's decision instead of failing NOT READY meanwhile.
    await c.startController({ ackTimeoutS: ACK_S, commandTimeoutS: COMMAND_S, holdTimeoutS: 60 });
    containers = [await c.addContainer('c0.img', '256MiB'), await c.addContainer('c1.img', '256MiB')];
    await Promise.all(['a', 'b'].map((n) => c.startAgent(n, { containers: [c.containerGlob] })));
    await c.cliOk(['vdisk', 'create', VDISK, '--size', '64MiB']);
    await Promise.all(['a', 'b'].map((n) => c.cliOk(['export', 'add', VDISK, '--agent', n])));
    await c.waitServed(VDISK, ['a', 'b']);
    // Data in the first segments, so the snapshot has normal segments to freeze.
    const s = await LunSession.open(c.agent('a').portal, iqnOf(VDISK));
    try {
      for (let seg = 0; seg < 4; seg++) expect(describeIo(await s.write(seg * SEG_BLOCKS, pattern(0x51, seg * SEG_BLOCKS, 16), 30_000))).to.equal('GOOD');
    } finally {
      s.close();
    }
  });

  it('(a) a snapshot fails at the ack deadline naming the stopped exporter; after SIGCONT a snapshot works and all converges', async () => {
    const c = cluster();
    const bound = ACK_S * 1000;
    const { value: r, ms } = await stopped(c, 'b', () => timed(() => c.cli(['vdisk', 'snapshot', VDISK, 'snap-a'])));
    console.log(`      (a) snapshot with b stopped: failed after ${(ms / 1000).toFixed(2)} s (bound ${bound / 1000} s, the ack timeout): ${r.stderr.trim()}`);
    expect(r.exitCode).to.not.equal(0);
    expect(r.stderr.trim().split('\n')).to.have.length(1);
    expect(r.stderr).to.match(/snapshot of vdisk quiet abandoned: agent b fenced: no ack of table version \d+ within 2000 ms/);
    expect(ms).to.be.below(bound + SLACK_MS);
    await converged(c, VDISK, 10, 0x61);
    await c.cliOk(['vdisk', 'snapshot', VDISK, 'snap-a']);
    const ls = await c.cliOk(['vdisk', 'ls']);
    expect(ls).to.match(/snap-a/);
    const after = await check(c);
    expect(after.ok, after.text).to.equal(true);
  });

  it('(b) a thin first write through a, needing b\'s ack, completes once b is fenced and past its lease', async () => {
    const c = cluster();
    // b's lease runs from its last answered heartbeat, before the stop.
    const bound = ACK_S * 1000 + DEFAULT_LEASE_MS + DEFAULT_LEASE_MARGIN_MS;
    const lba = 20 * SEG_BLOCKS + 8;
    const s = await LunSession.open(c.agent('a').portal, iqnOf(VDISK));
    let ms = 0;
    try {
      const before = segments(await table(c, VDISK))[20]?.state;
      expect(before).to.equal(STATE.zero);
      const { value: w, ms: took } = await stopped(c, 'b', async () => {
        const t = await timed(() => s.write(lba, pattern(0x62, lba, 8), 120_000));
        // Still stopped here: the write did not wait for b to come back.
        return t;
      });
      ms = took;
      expect(describeIo(w)).to.equal('GOOD');
    } finally {
      s.close();
    }
    console.log(`      (b) thin first write with b stopped: GOOD after ${(ms / 1000).toFixed(2)} s (bound ${bound / 1000} s: ack timeout + lease + margin)`);
    expect(ms).to.be.below(bound + SLACK_MS);
    await converged(c, VDISK, 20 * SEG_BLOCKS + 8, 0x63);
  });

  it('(c) a zero command to the stopped agent fails at its deadline; the freed segments wait for it and are free after SIGCONT', async () => {
    const c = cluster();
    // 'a' is the first agent by name: the scrubber's choice for the zero command.
    await c.cliOk(['vdisk', 'create', 'scrap', '--size', '8MiB', '--thick']);
    const usedBefore = await containerSegmentsUsed(c);
    const ctl = c.controller!;
    const mark = ctl.log().length;
    // A zero command of at most 8 segments (one per container at most).
    const bound = commandDeadlineMs(COMMAND_S * 1000, 8 * MiB);
    let ms = 0;
    await stopped(c, 'a', async () => {
      const t0 = performance.now();
      await c.cliOk(['vdisk', 'rm', 'scrap']);
      await waitFor('the zero command past its deadline', bound + SLACK_MS, async () => (/no answer: agent a did not finish command \d+ \(zeroing/.test(ctl.log().slice(mark)) ? true : undefined), 100);
      ms = performance.now() - t0;
      // Not freed, and not given to b: b's zeroing could come before a's late one.
      await sleep(1000);
      expect(await containerSegmentsUsed(c)).to.equal(usedBefore);
      expect(ctl.log().slice(mark)).to.not.match(/scrubbed \d+ segments/);
    });
    const line = /no answer: agent a did not finish command[^"]*/.exec(ctl.log().slice(mark))?.[0];
    console.log(`      (c) zeroing with a stopped: failed after ${(ms / 1000).toFixed(2)} s (bound ${(bound / 1000).toFixed(2)} s: command timeout + 64 ms/MiB): ${line}`);
    // a resumes, answers its zero command: the space is free.
    await waitFor('the scrap space free', 60_000, async () => ((await containerSegmentsUsed(c)) === usedBefore - 8 ? true : undefined), 200);
    await converged(c, VDISK, 30 * SEG_BLOCKS, 0x64);
  });

  it('(d) a migration copy sent to the stopped agent misses its deadline and is done by the other agent; the migration completes', async () => {
    const c = cluster();
    // Exported on b only: a change to it waits for no one stopped, so what is bounded is the copy.
    await c.cliOk(['vdisk', 'create', 'mover', '--size', '4MiB', '--thick']);
    await c.cliOk(['export', 'add', 'mover', '--agent', 'b']);
    await c.waitServed('mover', ['b']);
    const from = segments(await table(c, 'mover'))[0]!.container;
    const to = containers.find((x) => x !== from)!;
    const bound = commandDeadlineMs(COMMAND_S * 1000, MiB);
    const { value: r, ms } = await stopped(c, 'a', () => timed(() => c.cli(['vdisk', 'migrate', 'mover', '--to', to, '--wait'], { timeoutMs: 300_000 })));
    console.log(`      (d) migration of 4 segments with a stopped: exit ${r.exitCode} after ${(ms / 1000).toFixed(2)} s (bound for a copy ${(bound / 1000).toFixed(2)} s, then done by b)`);
    expect(r.exitCode, `${r.stdout}${r.stderr}`).to.equal(0);
    expect(ms).to.be.below(bound + SLACK_MS + 30_000);
    expect(segments(await table(c, 'mover')).every((e) => e.container === to && e.state === STATE.normal)).to.equal(true);
    // After SIGCONT: a's late copies end, their destinations are scrubbed, and all is clean.
    await waitFor('check clean', 60_000, async () => ((await check(c)).ok ? true : undefined), 500);
    await converged(c, VDISK, 40 * SEG_BLOCKS, 0x65);
  });
});
