// COMPARE AND WRITE as an ATS lock (what VMFS does) through two agents: two
// libiscsi initiators (test/system/caw-lock-client.c, built here with cc),
// each through its own agent exporting the same vdisk, take the lock on one
// block with COMPARE AND WRITE, update a counter block with plain READ and
// WRITE while they hold it, and release it with COMPARE AND WRITE. Never
// both inside (the counter block's owner marker), no lost update (the final
// count is every round of both). The same through one agent for comparison.
//
// TABULA_CAW_ROUNDS sets the rounds per initiator (the issue asks 10,000;
// CI runs a count that takes seconds). The rounds per second of each run go
// to the test's output.
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { runBounded } from '../support/bounded-run.js';
import { repoRoot } from '../support/process.js';
import { requireTools, runOk } from '../support/tools.js';
import { useCluster, type Cluster } from './cluster.js';
import { table, type JsonExtent } from './table.js';

const VDISK = 'lock';
/** 512-byte blocks per 1 MiB segment: lock and counter blocks sit in segments of their own. */
const BPS = 2048;
const ROUNDS = Number(process.env.TABULA_CAW_ROUNDS ?? '1000');

let client = '';

interface LockRun {
  rounds: number;
  violations: number;
  busy: number;
  seconds: number;
}

function parseRun(out: string): LockRun {
  const m = /rounds=(\d+) violations=(\d+) busy=(\d+) seconds=([\d.]+)/.exec(out);
  if (!m) throw new Error(`caw-lock-client printed no summary: ${out}`);
  return { rounds: Number(m[1]), violations: Number(m[2]), busy: Number(m[3]), seconds: Number(m[4]) };
}

/** Runs both initiators at once, initiator i through agents[i], on one lock block and one counter block. */
async function race(c: Cluster, agents: readonly [string, string], lockLba: number, counterLba: number): Promise<{ runs: LockRun[]; count: number; marker: number; seconds: number }> {
  const limitMs = Math.max(120_000, ROUNDS * 40);
  const start = Date.now();
  const results = await Promise.all(
    agents.map((a, i) => runBounded(client, [c.url(a, VDISK), String(i + 1), String(ROUNDS), String(lockLba), String(counterLba)], { timeoutMs: limitMs })),
  );
  const seconds = (Date.now() - start) / 1000;
  results.forEach((r, i) => {
    if (r.exitCode !== 0) throw new Error(`initiator ${i + 1} via agent ${agents[i]}: exit ${r.exitCode}\n${r.stdout}${r.stderr.slice(0, 4000)}`);
  });
  const probe = await runBounded(client, [c.url(agents[0], VDISK), '3', '0', String(lockLba), String(counterLba)], { timeoutMs: 60_000 });
  const m = /count=(\d+) marker=(\d+)/.exec(probe.stdout);
  if (probe.exitCode !== 0 || !m) throw new Error(`reading the counter: exit ${probe.exitCode}\n${probe.stdout}${probe.stderr}`);
  return { runs: results.map((r) => parseRun(r.stdout)), count: Number(m[1]), marker: Number(m[2]), seconds };
}

function report(what: string, r: { runs: LockRun[]; seconds: number }): void {
  const rounds = r.runs.reduce((n, x) => n + x.rounds, 0);
  const busy = r.runs.reduce((n, x) => n + x.busy, 0);
  process.stdout.write(`      ${what}: ${rounds} rounds in ${r.seconds.toFixed(2)} s, ${(rounds / r.seconds).toFixed(0)} rounds/s (${busy} lock attempts found it taken)\n`);
}

describe('system: COMPARE AND WRITE as an ATS lock, one initiator on each of two agents', function () {
  this.timeout(Math.max(300_000, ROUNDS * 100));
  const cluster = useCluster('caw-lock', async (c) => {
    requireTools(['timeout', 'cc']);
    client = join(c.dir, 'caw-lock-client');
    if (!existsSync('/usr/include/iscsi/iscsi.h')) throw new Error('libiscsi headers missing (apt-get install libiscsi-dev)');
    await runOk('cc', ['-O1', '-Wall', '-o', client, join(repoRoot(), 'test', 'system', 'caw-lock-client.c'), '-liscsi'], { timeoutMs: 60_000 });
    await c.serveVdisk({ vdisk: VDISK, size: '16MiB', containerSize: '64MiB', agents: { a: {}, b: {} } });
  });

  it(`two agents: ${ROUNDS} rounds each, never both hold the lock, no lost update`, async function () {
    const c = cluster();
    const r = await race(c, ['a', 'b'], 0, 2 * BPS);
    report('two agents', r);
    expect(r.runs.map((x) => x.violations), 'rounds in which the other initiator was inside too').to.deep.equal([0, 0]);
    expect(r.count, 'counter after both').to.equal(2 * ROUNDS);
    expect(r.marker).to.equal(0);
    // The lock block's segment ended up owned by one of the two agents.
    // (An owned segment is an extent of its own.)
    const first = (await table(c, VDISK)).extents[0] as (JsonExtent & { owner?: number }) | undefined;
    expect(first?.count).to.equal(1);
    expect(first?.owner ?? 0).to.be.above(0);
  });

  it(`one agent, for comparison: ${ROUNDS} rounds each, same checks`, async function () {
    const c = cluster();
    const r = await race(c, ['a', 'a'], 4 * BPS, 6 * BPS);
    report('one agent', r);
    expect(r.runs.map((x) => x.violations)).to.deep.equal([0, 0]);
    expect(r.count).to.equal(2 * ROUNDS);
    expect(r.marker).to.equal(0);
  });
});
