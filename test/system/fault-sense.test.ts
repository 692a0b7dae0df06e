// What the controller chooses for a failed fault is what a real initiator
// sees: libiscsi (test/system/sense-client.c, built here) reads the sense of
// each failure a real controller and agent produce. The controller's
// choices (src/controller/faults.ts SENSE) and how each is made to happen:
//
//   WAIT until the hold runs out   segment invalid          02/04/0A (the agent's NOT READY)
//   state error, decided while the I/O was held             03/11/00 read, 03/0C/00 write
//   copy-on-write whose copy fails (source beyond EOF)       04/44/00
//   allocation with the container full                      07/27/07
//   fault from an agent the vdisk is not exported to        05/25/00
//
// The last one happens when an export is removed while the agent has not
// heard yet; here the export's row is deleted behind the controller's back,
// so the agent is never told and keeps serving. Not reachable with real
// processes, and covered by the unit tests (test/unit/agent*/fault-sense):
// 05/21/00 (segment beyond a vdisk that shrank: shrinking needs the exports
// removed) and 07/27/00 (a write to a snapshot: snapshots are exported
// read-only, so the agent answers DATA PROTECT itself).
import Database from 'better-sqlite3';
import { expect } from 'chai';
import { existsSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { runBounded } from '../support/bounded-run.js';
import { repoRoot } from '../support/target-process.js';
import { requireTools, runOk } from '../support/tools.js';
import { sleep, useCluster, waitFor, type Cluster } from './cluster.js';
import { STATE, faults, segments, table } from './table.js';

const MiB = 1 << 20;
const VDISK = 'fs';
const BPS = MiB / 512; // blocks per 1 MiB segment
const HOLD_S = 5;

let client = '';

/** Runs the libiscsi client: one output line per operation ("w LBA N GOOD" / "... CHECK KK/AA/QQ info=N"). */
async function sense(c: Cluster, ops: readonly string[]): Promise<string[]> {
  const r = await runBounded(client, [c.url('a', VDISK), ...ops], { timeoutMs: 60_000 });
  if (r.exitCode !== 0) throw new Error(`sense-client ${ops.join(' ')}: exit ${r.exitCode}\n${r.stdout}${r.stderr}`);
  return r.stdout.trim().split('\n');
}

/** Waits until the controller has answered WAIT to a fault on `segment`. */
async function waiting(c: Cluster, segment: number): Promise<void> {
  const answered = async (): Promise<true | undefined> => ((await faults(c, VDISK)).some((f) => f.segment === segment && f.outcome === 'wait') ? true : undefined);
  await waitFor(`a fault on segment ${segment} answered WAIT`, 20_000, answered, 100);
}

describe('system: the sense the controller chooses is the sense a libiscsi initiator sees', function () {
  this.timeout(120_000);
  const cluster = useCluster('fault-sense', async (c) => {
    requireTools(['timeout', 'cc']);
    client = join(c.dir, 'sense-client');
    if (!existsSync('/usr/include/iscsi/iscsi.h')) throw new Error('libiscsi headers missing (apt-get install libiscsi-dev)');
    await runOk('cc', ['-O1', '-Wall', '-o', client, join(repoRoot(), 'test', 'system', 'sense-client.c'), '-liscsi'], { timeoutMs: 60_000 });
    await c.startController({ holdTimeoutS: HOLD_S });
    await c.addContainer('c0.img', '12MiB'); // 11 segments of 1 MiB
    await Promise.all([c.startAgent('a', { containers: [c.containerGlob] }), c.cliOk(['vdisk', 'create', VDISK, '--size', '32MiB'])]);
    await c.cliOk(['export', 'add', VDISK, '--agent', 'a']);
    await c.waitServed(VDISK, ['a']);
  });

  it('WAIT until the hold runs out: NOT READY 02/04/0A', async function () {
    const c = cluster();
    await c.cliOk(['segment', 'set-state', VDISK, '1', '--state', 'invalid']);
    const lba = 1 * BPS + 9;
    expect(await sense(c, [`r:${lba}:1`])).to.deep.equal([`r ${lba} 1 CHECK 02/04/0a info=${lba}`]);
    await c.cliOk(['segment', 'set-state', VDISK, '1', '--state', 'zero']); // a snapshot needs none invalid
  });

  it('state error decided while the I/O was held: 03/11/00 read, 03/0C/00 write', async function () {
    const c = cluster();
    await c.cliOk(['segment', 'set-state', VDISK, '2-3', '--state', 'invalid']);
    const rl = 2 * BPS + 17;
    const wl = 3 * BPS + 33;
    const rd = sense(c, [`r:${rl}:2`]);
    const wr = sense(c, [`w:${wl}:2`]);
    await Promise.all([waiting(c, 2), waiting(c, 3)]);
    await c.admin.call('SetSegmentState', { vdisk: VDISK, first: 2, count: 2, state: STATE.error });
    expect([...(await rd), ...(await wr)]).to.deep.equal([`r ${rl} 2 CHECK 03/11/00 info=${rl}`, `w ${wl} 2 CHECK 03/0c/00 info=${wl}`]);
    await c.cliOk(['segment', 'set-state', VDISK, '2-3', '--state', 'zero']);
  });

  it('copy-on-write whose copy fails: HARDWARE ERROR 04/44/00', async function () {
    const c = cluster();
    const lba = 4 * BPS + 5;
    expect(await sense(c, [`w:${lba}:1`])).to.deep.equal([`w ${lba} 1 GOOD`]);
    await c.cliOk(['vdisk', 'snapshot', VDISK, `${VDISK}-snap`]);
    const seg = segments(await table(c, VDISK))[4];
    expect(seg?.state).to.equal(STATE.noWrite);
    // The shared location's data is cut off the container: the agent's copy reads past the end.
    const [info] = (await c.admin.call('ListContainers', {})).containers;
    truncateSync(info!.path, info!.dataOffset + seg!.offset * MiB);
    expect(await sense(c, [`w:${lba}:1`])).to.deep.equal([`w ${lba} 1 CHECK 04/44/00 info=${lba}`]);
  });

  it('allocation with the container full: DATA PROTECT 07/27/07', async function () {
    const c = cluster();
    const ops: string[] = [];
    for (let s = 8; s < 32; s++) ops.push(`w:${s * BPS}:1`);
    const out = await sense(c, ops);
    const full = out.findIndex((l) => !l.endsWith('GOOD'));
    expect(full, out.join('\n')).to.be.greaterThan(0);
    const lbaOf = (op: string): number => Number(op.split(':')[1]);
    const want = ops.slice(full).map((op) => `w ${lbaOf(op)} 1 CHECK 07/27/07 info=${lbaOf(op)}`);
    expect(out.slice(full), out.join('\n')).to.deep.equal(want);
  });

  it('a fault for a vdisk not exported to the agent: ILLEGAL REQUEST 05/25/00', async function () {
    const c = cluster();
    await c.cliOk(['segment', 'set-state', VDISK, '1', '--state', 'invalid']);
    const db = new Database(c.dbPath);
    try {
      db.pragma('busy_timeout = 5000');
      const gone = db.prepare("DELETE FROM exports WHERE agent = 'a' AND vdisk_id = (SELECT id FROM vdisks WHERE name = ?)").run(VDISK);
      expect(gone.changes).to.equal(1);
    } finally {
      db.close();
    }
    await sleep(100);
    const wl = 6 * BPS + 1; // zero segment: the write faults
    const rl = 1 * BPS + 2; // invalid segment: the read faults
    expect(await sense(c, [`w:${wl}:1`, `r:${rl}:1`])).to.deep.equal([`w ${wl} 1 CHECK 05/25/00 info=${wl}`, `r ${rl} 1 CHECK 05/25/00 info=${rl}`]);
  });
});
