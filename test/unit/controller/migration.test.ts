import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { closeSync, openSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { SegmentState } from '../../../src/table/index.js';
import { FaultAction } from '../../../src/wire/proto-types.js';
import { AdminError } from '../../../src/controller/admin.js';
import { checkInvariants } from '../../../src/controller/check.js';
import { startController, type ControllerHandle } from '../../../src/controller/daemon.js';
import { MIGRATION_CONCURRENCY } from '../../../src/controller/migration.js';
import { CA, CB, CC, FakeAgent, MiB, containerRef, sleep, tempDir, until } from './helpers.js';

const NORMAL = SegmentState.Normal;
const NO_WRITE = SegmentState.NoWrite;
const SEGS = 8;

/** A recognisable 1 MiB segment: every 4-byte word is (tag << 16 | word index), big-endian. */
function pattern(tag: number): Buffer {
  const b = Buffer.alloc(MiB);
  for (let i = 0; i < MiB / 4; i++) b.writeUInt32BE(((tag & 0xffff) << 16) | (i & 0xffff), i * 4);
  return b;
}

function readSeg(path: string, offset: number): Buffer {
  const b = Buffer.alloc(MiB);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, b, 0, MiB, MiB + offset * MiB);
  } finally {
    closeSync(fd);
  }
  return b;
}

function writeSeg(path: string, offset: number, data: Buffer): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, data, 0, MiB, MiB + offset * MiB);
  } finally {
    closeSync(fd);
  }
}

describe('controller online migration', () => {
  let t: ReturnType<typeof tempDir>;
  let dbPath: string;
  let ctl: ControllerHandle | undefined;
  const agents: FakeAgent[] = [];
  const files = new Map<string, string>();

  beforeEach(() => {
    t = tempDir();
    dbPath = join(t.dir, 'c.db');
    for (const id of [CA, CB, CC]) {
      const p = join(t.dir, `${id.slice(0, 8)}.img`);
      writeFileSync(p, Buffer.alloc(0));
      // Sparse container file: 1 MiB label area + SEGS segments.
      const fd = openSync(p, 'r+');
      writeSync(fd, Buffer.alloc(1), 0, 1, (SEGS + 1) * MiB - 1);
      closeSync(fd);
      files.set(id, p);
    }
  });
  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await ctl?.close();
    ctl = undefined;
    t.cleanup();
    concurrency = 1;
  });

  /** Segments moved at once; most tests follow one segment through its steps. */
  let concurrency = 1;
  const start = async (): Promise<ControllerHandle> => {
    ctl = await startController({ dbPath, listen: '127.0.0.1:0', ackTimeoutMs: 2000, migrationConcurrency: concurrency });
    return ctl;
  };
  const agent = async (name: string, copy: 'files' | 'manual' = 'files', ids = [CA, CB, CC]): Promise<FakeAgent> => {
    const a = new FakeAgent(ctl!.address, name, { containers: ids.map((id) => containerRef(id, SEGS)), copy, files });
    agents.push(a);
    await a.register();
    return a;
  };
  const rows = (name: string): [number, number, string | null, number | null][] =>
    ctl!.db.segmentRows(ctl!.db.findVdisk(name)!.id).map((r) => [r.seg, r.state, r.containerId, r.offset]);
  const clean = (): void => {
    expect(checkInvariants(ctl!.db)).to.deep.equal([]);
  };
  const migrationDone = (name: string) => until(() => ctl!.admin.GetMigration({ vdisk: name }).state !== 'running', 5000, `migration of ${name} finished`);

  /** Container CA only; thick vdisk d (4 segments, CA@0..3) with patterns 1..4 written into CA; then CB added; exported on a1. */
  async function setup(copy: 'files' | 'manual' = 'files'): Promise<{ id: string; a: FakeAgent }> {
    const h = await start();
    h.admin.AddContainer({ id: CA, path: files.get(CA)!, size: (SEGS + 1) * MiB, dataOffset: MiB });
    const v = h.admin.CreateVdisk({ name: 'd', size: 4 * MiB, thick: true });
    for (let s = 0; s < 4; s++) writeSeg(files.get(CA)!, s, pattern(s + 1));
    h.admin.AddContainer({ id: CB, path: files.get(CB)!, size: (SEGS + 1) * MiB, dataOffset: MiB });
    const a = await agent('a1', copy);
    h.admin.AddExport({ vdisk: 'd', agent: 'a1' });
    await a.next((m) => m.body === 'tableFull');
    return { id: v.id, a };
  }

  it('moves every segment with real copies, frees the old container, reports progress (default concurrency)', async () => {
    concurrency = MIGRATION_CONCURRENCY;
    const { id, a } = await setup();
    const m0 = ctl!.admin.MigrateVdisk({ vdisk: 'd', toContainer: CB.slice(0, 8) });
    expect(m0).to.deep.include({ vdiskName: 'd', toContainer: CB, fromContainer: '', segmentsTotal: 4 });
    await migrationDone('d');
    const m = ctl!.admin.GetMigration({ vdisk: 'd' });
    expect(m).to.deep.include({ state: 'done', segmentsDone: 4, segmentsTotal: 4, bytesDone: 4 * MiB, percent: 100, etaSeconds: 0, error: '' });
    expect(m.finished).to.not.equal('');
    const r = rows('d');
    expect(r.map((x) => [x[0], x[1], x[2]])).to.deep.equal([0, 1, 2, 3].map((s) => [s, NORMAL, CB]));
    for (const [seg, , , off] of r) expect(readSeg(files.get(CB)!, off!).equals(pattern(seg + 1)), `segment ${seg} data`).to.equal(true);
    expect(a.copies).to.have.length(4);
    expect(a.tables.get(id)!.counts().normal).to.equal(4);
    expect([0, 1, 2, 3].every((s) => a.tables.get(id)!.get(s).container === CB)).to.equal(true);
    await until(() => ctl!.db.containerSegmentsUsed(CA) === 0, 2000, 'CA scrubbed and free');
    expect(ctl!.admin.ShowVdisk({ name: 'd' }).migration).to.deep.include({ state: 'done' });
    expect(ctl!.admin.ListMigrations({}).migrations.map((x) => x.vdiskName)).to.deep.equal(['d']);
    clean();
    ctl!.admin.RemoveContainer({ id: CA });
    clean();
  });

  it('reads go on and a write to the segment being copied waits, then RETRY once the remap is acked', async () => {
    const { id, a } = await setup('manual');
    ctl!.admin.MigrateVdisk({ vdisk: 'd', toContainer: CB });
    await until(() => a.copies.length === 1, 2000, 'first copy');
    // Segment 0 is no-write on the agent while it is copied: reads go on, writes fault.
    expect(a.tables.get(id)!.get(0)).to.deep.include({ state: NO_WRITE, container: CA, offset: 0 });
    const f = a.sendFault({ vdiskId: id, segment: 0, op: 1, state: NO_WRITE });
    const wait = await f.reply(true);
    expect(wait.action).to.equal(FaultAction.Wait);
    expect(wait.reason).to.match(/being migrated/);
    // A write to a segment not being copied is not held.
    expect((await a.sendFault({ vdiskId: id, segment: 2, op: 1, state: NO_WRITE }).reply()).action).to.equal(FaultAction.Retry);
    a.autoAck = false;
    a.copyDone(a.copies[0]!.commandId);
    const remap = await a.next((m) => m.body === 'tableDelta' && m.tableDelta.extents.some((e) => e.first === 0 && e.container === CB));
    await sleep(100);
    expect(a.events.some((e) => e === `reply ${f.faultId} 0`), 'no RETRY before the remap is acked').to.equal(false);
    a.autoAck = true;
    if (remap.body === 'tableDelta') a.ack(id, remap.tableDelta.toVersion);
    const r = await f.reply();
    expect(r.action).to.equal(FaultAction.Retry);
    expect(a.tables.get(id)!.get(0)).to.deep.include({ state: NORMAL, container: CB });
    // Progress while running: one of four segments moved.
    await until(() => a.copies.length === 2, 2000, 'second copy');
    const p = ctl!.admin.GetMigration({ vdisk: 'd' });
    expect(p).to.deep.include({ state: 'running', segmentsDone: 1, segmentsTotal: 4, bytesDone: MiB, percent: 25 });
    expect(p.bytesPerSecond).to.be.greaterThan(0);
    expect(p.etaSeconds).to.be.greaterThan(0);
    // Finish the rest by hand.
    for (let n = 2; n <= 4; n++) {
      await until(() => a.copies.length === n, 2000, `copy ${n}`);
      a.copyDone(a.copies[n - 1]!.commandId);
    }
    await migrationDone('d');
    expect(ctl!.admin.GetMigration({ vdisk: 'd' }).state).to.equal('done');
    clean();
  });

  it('moves several segments at once, each through its own steps: a write waits for its own segment only', async () => {
    concurrency = 3;
    const { id, a } = await setup('manual');
    ctl!.admin.MigrateVdisk({ vdisk: 'd', toContainer: CB });
    await until(() => a.copies.length === 3, 2000, 'three copies in flight');
    await sleep(50);
    expect(a.copies, 'no more than the concurrency').to.have.length(3);
    // Segments 0-2 are frozen (no-write) and being copied; 3 waits its turn.
    for (const s of [0, 1, 2]) expect(a.tables.get(id)!.get(s)).to.deep.include({ state: NO_WRITE, container: CA });
    expect(a.tables.get(id)!.get(3)).to.deep.include({ state: NORMAL, container: CA });
    const w1 = a.sendFault({ vdiskId: id, segment: 1, op: 1, state: NO_WRITE });
    expect((await w1.reply(true)).action).to.equal(FaultAction.Wait);
    // Segment 1's copy ends first: its write goes on while 0 and 2 are still being copied.
    const c1 = a.copies.find((c) => c.srcOffset === 1 * MiB)!;
    a.copyDone(c1.commandId);
    expect((await w1.reply()).action).to.equal(FaultAction.Retry);
    expect(a.tables.get(id)!.get(1)).to.deep.include({ state: NORMAL, container: CB });
    expect(a.tables.get(id)!.get(0).state).to.equal(NO_WRITE);
    // The freed slot takes segment 3.
    await until(() => a.copies.length === 4, 2000, 'fourth copy');
    for (const c of a.copies) if (c !== c1) a.copyDone(c.commandId);
    await migrationDone('d');
    expect(ctl!.admin.GetMigration({ vdisk: 'd' })).to.deep.include({ state: 'done', segmentsDone: 4, segmentsTotal: 4 });
    expect(rows('d').map((x) => [x[0], x[1], x[2]])).to.deep.equal([0, 1, 2, 3].map((s) => [s, NORMAL, CB]));
    clean();
  });

  it('cancel stops after the segment in progress; a new migrate finishes the rest', async () => {
    const { a } = await setup('manual');
    ctl!.admin.MigrateVdisk({ vdisk: 'd', toContainer: CB });
    await until(() => a.copies.length === 1, 2000, 'first copy');
    const cancelled = ctl!.admin.CancelMigration({ vdisk: 'd' });
    await sleep(50);
    a.copyDone(a.copies[0]!.commandId);
    const m = await cancelled;
    expect(m).to.deep.include({ state: 'cancelled', segmentsDone: 1 });
    expect(a.copies).to.have.length(1);
    expect(rows('d').filter((x) => x[2] === CB)).to.have.length(1);
    expect(rows('d').every((x) => x[1] === NORMAL)).to.equal(true);
    clean();
    const again = await ctl!.admin.CancelMigration({ vdisk: 'd' }).catch((e: AdminError) => e);
    expect((again as AdminError).code).to.equal(grpc.status.FAILED_PRECONDITION);
    ctl!.admin.MigrateVdisk({ vdisk: 'd', toContainer: CB });
    for (let n = 2; n <= 4; n++) {
      await until(() => a.copies.length === n, 2000, `copy ${n}`);
      a.copyDone(a.copies[n - 1]!.commandId);
    }
    await migrationDone('d');
    expect(ctl!.admin.GetMigration({ vdisk: 'd' })).to.deep.include({ state: 'done', segmentsDone: 3 });
    await until(() => ctl!.db.containerSegmentsUsed(CA) === 0, 2000, 'CA scrubbed and free');
    clean();
  });

  it('resumes after a controller restart and finishes with the same data', async () => {
    const { a } = await setup('manual');
    ctl!.admin.MigrateVdisk({ vdisk: 'd', toContainer: CB });
    await until(() => a.copies.length === 1, 2000, 'first copy');
    // Really copy the first segment, then stop the controller mid-way through the second.
    const c0 = a.copies[0]!;
    writeSeg(files.get(CB)!, c0.dstOffset / MiB, readSeg(files.get(CA)!, c0.srcOffset / MiB));
    a.copyDone(c0.commandId);
    await until(() => a.copies.length === 2, 2000, 'second copy');
    a.close();
    agents.splice(0);
    await ctl!.close();
    const h = await start();
    expect(h.db.migration(h.db.findVdisk('d')!.id)).to.deep.include({ state: 'running', segmentsDone: 1 });
    const b = await agent('a1', 'files');
    await migrationDone('d');
    const m = h.admin.GetMigration({ vdisk: 'd' });
    expect(m).to.deep.include({ state: 'done', segmentsDone: 4 });
    const r = rows('d');
    expect(r.map((x) => [x[1], x[2]])).to.deep.equal([0, 1, 2, 3].map(() => [NORMAL, CB]));
    for (const [seg, , , off] of r) expect(readSeg(files.get(CB)!, off!).equals(pattern(seg + 1)), `segment ${seg} data`).to.equal(true);
    expect(b.copies.length).to.equal(3);
    await until(() => h.db.containerSegmentsUsed(CA) === 0, 2000, 'CA scrubbed and free');
    clean();
  });

  it('evacuate moves every vdisk and snapshot off a container (sharing broken, data kept), which can then be removed', async () => {
    const { id, a } = await setup();
    await ctl!.admin.SnapshotVdisk({ vdisk: 'd', name: 's1' });
    ctl!.admin.AddContainer({ id: CC, path: files.get(CC)!, size: (SEGS + 1) * MiB, dataOffset: MiB });
    const ev = ctl!.admin.EvacuateContainer({ id: CA });
    expect(ev.migrations.map((m) => [m.vdiskName, m.fromContainer, m.toContainer]).sort()).to.deep.equal([
      ['d', CA, ''],
      ['s1', CA, ''],
    ]);
    expect(ctl!.admin.ListContainers({}).containers.find((c) => c.id === CA)!.state).to.equal('draining');
    await migrationDone('d');
    await migrationDone('s1');
    expect(ctl!.admin.GetMigration({ vdisk: 'd' }).state).to.equal('done');
    expect(ctl!.admin.GetMigration({ vdisk: 's1' }).state).to.equal('done');
    await until(() => ctl!.db.containerSegmentsUsed(CA) === 0, 2000, 'CA empty');
    for (const name of ['d', 's1']) {
      for (const [seg, state, c, off] of rows(name)) {
        expect(c).to.not.equal(CA);
        expect(state).to.equal(name === 's1' ? NO_WRITE : NORMAL);
        expect(readSeg(files.get(c!)!, off!).equals(pattern(seg + 1)), `${name} segment ${seg}`).to.equal(true);
      }
    }
    expect(a.tables.get(id)!.counts().normal).to.equal(4);
    clean();
    ctl!.admin.RemoveContainer({ id: CA });
    clean();
  });

  it('refuses a target the exporting agents do not reach, an unknown or offline one, and a second migration', async () => {
    const h = await start();
    h.admin.AddContainer({ id: CA, path: '/a', size: (SEGS + 1) * MiB, dataOffset: MiB });
    h.admin.CreateVdisk({ name: 'd', size: 2 * MiB });
    await h.admin.SetSegmentState({ vdisk: 'd', first: 0, count: 2, state: NORMAL });
    h.admin.AddContainer({ id: CB, path: '/b', size: (SEGS + 1) * MiB, dataOffset: MiB });
    h.admin.AddContainer({ id: CC, path: '/c', size: (SEGS + 1) * MiB, dataOffset: MiB });
    const a = await agent('a1', 'manual', [CA, CC]);
    h.admin.AddExport({ vdisk: 'd', agent: 'a1' });
    await a.next((m) => m.body === 'tableFull');
    const code = (fn: () => unknown): number | undefined => {
      try {
        fn();
      } catch (e) {
        return (e as AdminError).code;
      }
      return undefined;
    };
    expect(code(() => h.admin.MigrateVdisk({ vdisk: 'd', toContainer: CB })), 'a1 does not reach CB').to.equal(grpc.status.FAILED_PRECONDITION);
    expect(code(() => h.admin.MigrateVdisk({ vdisk: 'd', toContainer: 'nope' }))).to.equal(grpc.status.NOT_FOUND);
    expect(code(() => h.admin.GetMigration({ vdisk: 'd' }))).to.equal(grpc.status.NOT_FOUND);
    h.db.setContainerState(CC, 'failed');
    expect(code(() => h.admin.MigrateVdisk({ vdisk: 'd', toContainer: CC }))).to.equal(grpc.status.FAILED_PRECONDITION);
    h.db.setContainerState(CC, 'online');
    h.admin.MigrateVdisk({ vdisk: 'd', toContainer: CC });
    expect(code(() => h.admin.MigrateVdisk({ vdisk: 'd', toContainer: CC })), 'one at a time').to.equal(grpc.status.FAILED_PRECONDITION);
    await until(() => a.copies.length === 1, 2000, 'first copy');
    a.copyDone(a.copies[0]!.commandId);
    await until(() => a.copies.length === 2, 2000, 'second copy');
    a.copyDone(a.copies[1]!.commandId);
    await migrationDone('d');
    expect(rows('d').map((r) => r[2])).to.deep.equal([CC, CC]);
    clean();
  });
});
