// What the controller chooses for a failed fault is what a real initiator
// sees: libiscsi (test/system/sense-client.c, built here with cc; headers from
// Debian libiscsi-dev) reads the sense of each failure a real controller and
// agent produce. The controller's choices (SENSE in src/controller/faults.ts)
// and how each is made to happen:
//
//   WAIT until the hold runs out (segment invalid)          02/04/0A, the agent's NOT READY
//   state error, decided while the I/O was held             03/11/00 read, 03/0C/00 write
//   copy-on-write whose copy fails (source beyond EOF)       04/44/00
//   allocation with the container full                      07/27/07
//   fault on a segment beyond the vdisk's end                05/21/00
//   write to a snapshot                                      07/27/00
//   fault from an agent the vdisk is not exported to        05/25/00
//
// The last three only happen in a window real processes do not hold open (a
// shrink, or an export removed, that the agent has not heard of yet; a
// snapshot exported writable, which `export add` never does): the test writes
// the controller's database behind its back, which the controller reads
// afresh and tells no agent about.
import Database from 'better-sqlite3';
import { expect } from 'chai';
import { existsSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { runBounded } from '../support/bounded-run.js';
import { repoRoot, waitFor } from '../support/process.js';
import { requireTools, runOk } from '../support/tools.js';
import { iqnOf, useCluster, type Cluster } from './cluster.js';
import { STATE, faults, segments, table } from './table.js';

const MiB = 1 << 20;
const VDISK = 'fs';
const BPS = MiB / 512; // blocks per 1 MiB segment
const HOLD_S = 5;

let client = '';

/** Runs the libiscsi client: one output line per operation ("w LBA N GOOD" / "... CHECK KK/AA/QQ info=N"). */
async function sense(c: Cluster, ops: readonly string[], vdisk = VDISK): Promise<string[]> {
  const r = await runBounded(client, [c.url('a', vdisk), ...ops], { timeoutMs: 60_000 });
  if (r.exitCode !== 0) throw new Error(`sense-client ${ops.join(' ')}: exit ${r.exitCode}\n${r.stdout}${r.stderr}`);
  return r.stdout.trim().split('\n');
}

/** Changes the controller's database behind its back (it reads rows afresh, and tells no agent). */
function tamper(c: Cluster, sql: string, ...params: string[]): void {
  const db = new Database(c.dbPath);
  try {
    db.pragma('busy_timeout = 5000');
    expect(db.prepare(sql).run(...params).changes, sql).to.equal(1);
  } finally {
    db.close();
  }
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

  it('a fault on a segment beyond the vdisk\'s end: ILLEGAL REQUEST 05/21/00', async function () {
    const c = cluster();
    // As if the vdisk had shrunk and the agent had not heard yet (a real shrink needs the exports removed).
    tamper(c, 'UPDATE vdisks SET segment_count = 16 WHERE name = ?', VDISK);
    try {
      const lba = 31 * BPS + 7; // zero segment: the write faults
      expect(await sense(c, [`w:${lba}:1`])).to.deep.equal([`w ${lba} 1 CHECK 05/21/00 info=${lba}`]);
    } finally {
      tamper(c, 'UPDATE vdisks SET segment_count = 32 WHERE name = ?', VDISK);
    }
  });

  it('a write that reaches the controller for a snapshot: DATA PROTECT 07/27/00', async function () {
    const c = cluster();
    const snap = `${VDISK}-snap`;
    // `export add` makes a snapshot's export read-only and the agent refuses writes
    // itself; exported writable (a row written behind the controller's back, pushed
    // with the next export change), the write faults and the controller refuses it.
    tamper(
      c,
      "INSERT INTO exports (vdisk_id, agent, target_iqn, lun, read_only, acked_version, fenced, allowed_initiators) SELECT id, 'a', ?, 0, 0, version, 0, '[]' FROM vdisks WHERE name = ?",
      iqnOf(snap),
      snap,
    );
    await c.cliOk(['vdisk', 'create', 'push', '--size', '1MiB']);
    await c.cliOk(['export', 'add', 'push', '--agent', 'a']);
    await c.waitServed(snap, ['a']);
    const lba = 5 * BPS + 3; // zero segment
    expect(await sense(c, [`w:${lba}:1`], snap)).to.deep.equal([`w ${lba} 1 CHECK 07/27/00 info=${lba}`]);
    const mine = (await faults(c, snap)).filter((f) => f.segment === 5 && f.op === 'write');
    expect(mine.map((f) => f.outcome), 'the controller answered').to.deep.equal(['fail']);
  });

  it('a fault for a vdisk not exported to the agent: ILLEGAL REQUEST 05/25/00', async function () {
    const c = cluster();
    await c.cliOk(['segment', 'set-state', VDISK, '1', '--state', 'invalid']);
    tamper(c, "DELETE FROM exports WHERE agent = 'a' AND vdisk_id = (SELECT id FROM vdisks WHERE name = ?)", VDISK);
    const wl = 6 * BPS + 1; // zero segment: the write faults
    const rl = 1 * BPS + 2; // invalid segment: the read faults
    expect(await sense(c, [`w:${wl}:1`, `r:${rl}:1`])).to.deep.equal([`w ${wl} 1 CHECK 05/25/00 info=${wl}`, `r ${rl} 1 CHECK 05/25/00 info=${rl}`]);
  });
});
