// Online backup and restore of the controller database with real processes:
// `tabula backup` while a vdisk is being written through an agent (its table
// growing under the backup), `tabula restore` into a new path, a second
// controller on the restored database: `vdisk ls`/`vdisk table` match,
// `tabula check` is clean, and restore refuses a database a controller has
// open.
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { LOOPBACK, freeLoopbackPort } from '../support/process.js';
import type { Daemon } from '../support/tabula-process.js';
import { requireTools } from '../support/tools.js';
import type { VdiskInfo } from '../../src/wire/proto-types.js';
import { Cluster, iqnOf, useCluster } from './cluster.js';
import { GOOD, LunSession, describeIo, pattern } from './scsi-client.js';

const VDISK = 'bk';
const SEGMENTS = 64;
const SEG_BLOCKS = (1 << 20) / 512;

/** What must survive a backup: everything but agent liveness. */
function essentials(v: VdiskInfo): object {
  return {
    name: v.name,
    id: v.id,
    size: v.size,
    version: v.version,
    thin: v.thin,
    segmentsAllocated: v.segmentsAllocated,
    states: v.states,
    exports: v.exports.map((e) => ({ agent: e.agent, targetIqn: e.targetIqn, lun: e.lun, allowedInitiators: e.allowedInitiators })),
  };
}

interface JsonTable {
  version: number;
  extents: { first: number; count: number; state: string; container: string | null; offset: number }[];
}

/** One "seg state container offset" string per segment (runs step one container segment per segment). */
function perSegment(t: JsonTable): string[] {
  const out: string[] = [];
  for (const e of t.extents) {
    for (let i = 0; i < e.count; i++) out.push(`${e.first + i} ${e.state} ${e.container ?? '-'} ${e.container === null ? '-' : e.offset + i}`);
  }
  return out;
}

async function startControllerOn(c: Cluster, db: string, label: string): Promise<{ daemon: Daemon; address: string }> {
  const address = `${LOOPBACK}:${await freeLoopbackPort()}`;
  const daemon = await c.startDaemon(label, ['controller', '--db', db, '--listen', address], /controller listening on \S+/, 5 * 60_000);
  return { daemon, address };
}

describe('system: online backup and restore of the controller database', function () {
  this.timeout(300_000);
  const cluster = useCluster('backup', async (c) => {
    requireTools(['timeout']);
    await c.startController();
    await c.addContainer('c0.img', '128MiB');
    await c.startAgent('a', { containers: [c.containerGlob] });
    await c.cliOk(['vdisk', 'create', VDISK, '--size', `${SEGMENTS}MiB`]);
    await c.cliOk(['vdisk', 'create', 'thick1', '--size', '4MiB', '--thick']);
    await c.cliOk(['export', 'add', VDISK, '--agent', 'a', '--initiator', 'iqn.2026-11.org.tabula.test:raw']);
    await c.waitServed(VDISK, ['a']);
  });

  it('backs up while the vdisk is written, and a controller on the restored copy serves the same tables', async () => {
    const c = cluster();
    const file1 = join(c.dir, 'backup1.db');
    const file2 = join(c.dir, 'backup2.db');
    const restored = join(c.dir, 'restored', 'controller.db');

    // Writes to one zero segment after another: the table changes under the backup.
    const s = await LunSession.open(c.agent('a').portal, iqnOf(VDISK));
    let stop = false;
    let written = 0;
    const writer = (async () => {
      for (let seg = 0; !stop && seg < SEGMENTS; seg++) {
        const r = await s.write(seg * SEG_BLOCKS, pattern(0xb000 + seg, seg * SEG_BLOCKS, 64), 30_000);
        if (r.status !== GOOD) throw new Error(`write to segment ${seg}: ${describeIo(r)}`);
        written++;
      }
    })();
    const out1 = await c.cliOk(['backup', file1]);
    const duringBackup = written;
    stop = true;
    await writer;
    s.close();
    expect(out1).to.match(/backup of \S+ written to .*backup1\.db: \d+(\.\d+)?\s?[KM]i?B, schema version \d+, \d+ tables; 2 vdisks, 0 snapshots, 1 container, 1 export, 1 agent/);
    expect(duringBackup, 'writes went on while the backup ran').to.be.greaterThan(0);

    // Refuses to overwrite without --force; the file left is the first backup.
    const again = await c.cli(['backup', file1]);
    expect(again.exitCode).to.not.equal(0);
    expect(again.stderr).to.match(/exists; give --force/);

    // The first backup restores; its tables are the live ones as they were: every segment it maps, live maps the same.
    const r1 = JSON.parse(await c.cliOk(['restore', file1, '--db', restored, '--json'], { admin: false })) as { vdisks: number; path: string };
    expect(r1).to.include({ vdisks: 2, path: restored });
    const ctl2 = await startControllerOn(c, restored, 'controller-restored');
    try {
      const live = perSegment(await c.cliJson<JsonTable>(['vdisk', 'table', VDISK]));
      const back = perSegment(JSON.parse(await c.cliOk(['vdisk', 'table', VDISK, '--json', '--controller', ctl2.address], { admin: false })) as JsonTable);
      const mapped = back.filter((l) => / normal /.test(l));
      expect(mapped.length, 'segments allocated before the backup').to.be.greaterThan(0);
      for (const line of mapped) expect(live, `restored entry "${line}" is in the live table`).to.include(line);
      const chk = await c.cli(['check', '--controller', ctl2.address], { admin: false });
      expect(chk.exitCode, `${chk.stdout}${chk.stderr}`).to.equal(0);

      // A controller holds the restored database: restore refuses to replace it.
      const busy = await c.cli(['restore', file1, '--db', restored, '--force'], { admin: false });
      expect(busy.exitCode).to.not.equal(0);
      expect(busy.stderr).to.match(/in use \(a controller has it open\)/);
    } finally {
      expect(await ctl2.daemon.stop(15_000)).to.equal(0);
    }

    // Quiet now: a second backup, restored over the first (kept aside), matches the live controller exactly.
    await c.cliOk(['backup', file2]);
    const r2 = JSON.parse(await c.cliOk(['restore', file2, '--db', restored, '--force', '--json'], { admin: false })) as { previous: string | null };
    expect(r2.previous).to.be.a('string');
    expect(existsSync(r2.previous as string)).to.equal(true);
    const ctl3 = await startControllerOn(c, restored, 'controller-restored-2');
    try {
      const liveLs = (await c.cliJson<VdiskInfo[]>(['vdisk', 'ls'])).map(essentials);
      const backLs = JSON.parse(await c.cliOk(['vdisk', 'ls', '--json', '--controller', ctl3.address], { admin: false })) as VdiskInfo[];
      expect(backLs.map(essentials)).to.deep.equal(liveLs);
      const liveTable = await c.cliOk(['vdisk', 'table', VDISK, '--full-ids']);
      const backTable = await c.cliOk(['vdisk', 'table', VDISK, '--full-ids', '--controller', ctl3.address], { admin: false });
      expect(backTable).to.equal(liveTable);
      expect(backTable).to.match(/normal/);
      const chk = await c.cli(['check', '--controller', ctl3.address], { admin: false });
      expect(chk.exitCode, `${chk.stdout}${chk.stderr}`).to.equal(0);
    } finally {
      expect(await ctl3.daemon.stop(15_000)).to.equal(0);
    }
  });
});
