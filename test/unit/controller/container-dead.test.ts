// `container rm --dead` and `container evacuate` of a failed container
// through a real controller (SQLite, table changes, acks) and a fake agent
// that really copies between container files (as rebuild-controller.test.ts):
// the dead container's legs leave every mirrored segment (leg 1 promoted),
// nothing on it is scrubbed, it is unregistered and the vdisks are rebuilt
// in the third domain at once; refused while it holds a segment's only copy.
import { expect } from 'chai';
import { closeSync, openSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { IoOp, SegmentState } from '../../../src/table/index.js';
import { FaultAction } from '../../../src/wire/proto-types.js';
import { checkInvariants } from '../../../src/controller/check.js';
import { AdminError } from '../../../src/controller/admin.js';
import { startController, type ControllerHandle } from '../../../src/controller/daemon.js';
import { CA, CB, CC, FakeAgent, MiB, containerRef, tempDir, until } from './helpers.js';

const SEGS = 8;

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

describe('container rm --dead', () => {
  let t: ReturnType<typeof tempDir>;
  let ctl: ControllerHandle | undefined;
  const agents: FakeAgent[] = [];
  const files = new Map<string, string>();

  beforeEach(() => {
    t = tempDir();
    for (const id of [CA, CB, CC]) {
      const p = join(t.dir, `${id.slice(0, 8)}.img`);
      writeFileSync(p, Buffer.alloc(0));
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
  });

  const health = (name: string) => ctl!.admin.ShowVdisk({ name }).health!;
  const rebuilt = (name: string) => until(() => health(name).rebuilding === null && health(name).degraded === 0, 10_000, `rebuild of ${name} finished`);
  const clean = (): void => {
    expect(checkInvariants(ctl!.db).filter((v) => !/degraded/i.test(v))).to.deep.equal([]);
  };
  const refusal = async (fn: () => unknown): Promise<AdminError> => {
    const err = await Promise.resolve()
      .then(fn)
      .then(
        () => null,
        (e: unknown) => e,
      );
    expect(err).to.be.instanceOf(AdminError);
    return err as AdminError;
  };

  /**
   * CA (domain d1) holds thick vdisk d (4 segments, patterns 1..4), CB in
   * d2, CC in d3; exported on a1. With copies 2, d is mirrored onto CB or CC.
   */
  async function setup(copies: number, copy: 'files' | 'manual' = 'files'): Promise<{ id: string; a: FakeAgent }> {
    ctl = await startController({ dbPath: join(t.dir, 'c.db'), listen: '127.0.0.1:0', ackTimeoutMs: 2000, rebuildScanMs: 600_000 });
    const h = ctl;
    h.admin.AddContainer({ id: CA, path: files.get(CA)!, size: (SEGS + 1) * MiB, dataOffset: MiB, domain: 'd1' });
    const v = h.admin.CreateVdisk({ name: 'd', size: 4 * MiB, thick: true });
    for (let s = 0; s < 4; s++) writeSeg(files.get(CA)!, s, pattern(s + 1));
    h.admin.AddContainer({ id: CB, path: files.get(CB)!, size: (SEGS + 1) * MiB, dataOffset: MiB, domain: 'd2' });
    h.admin.AddContainer({ id: CC, path: files.get(CC)!, size: (SEGS + 1) * MiB, dataOffset: MiB, domain: 'd3' });
    const a = new FakeAgent(h.address, 'a1', { containers: [CA, CB, CC].map((id) => containerRef(id, SEGS)), copy, files });
    agents.push(a);
    await a.register();
    h.admin.AddExport({ vdisk: 'd', agent: 'a1' });
    await a.next((m) => m.body === 'tableFull');
    if (copies > 1) {
      await h.admin.SetVdiskCopies({ name: 'd', copies });
      await rebuilt('d');
    }
    return { id: v.id, a };
  }

  const expectData = (id: string): void => {
    for (let s = 0; s < 4; s++) {
      for (const l of ctl!.db.locationsOfSegment(id, s)) {
        expect(readSeg(files.get(l.containerId)!, l.offset).equals(pattern(s + 1)), `segment ${s} on ${l.containerId.slice(0, 2)}`).to.equal(true);
      }
    }
  };

  it('drops the legs of a dead container (leg 1 promoted), unregisters it and rebuilds in the third domain at once', async () => {
    const { id, a } = await setup(2);
    // A snapshot shares every leg: both tables lose the leg, and nothing on CA is released to be scrubbed.
    await ctl!.admin.SnapshotVdisk({ vdisk: 'd', name: 's' });
    const second = [0, 1, 2, 3].map((s) => ctl!.db.locationsOfSegment(id, s)[1]!.containerId);
    const zerosBefore = a.zeros.length;
    const r = await ctl!.admin.RemoveContainer({ id: CA, dead: true });
    expect(r).to.deep.equal({ vdisks: ['d', 's'], legs: 8, staleLegs: 0 });
    expect(ctl!.db.container(CA)).to.equal(undefined);
    expect(ctl!.admin.ListContainers({}).containers.map((c) => c.id)).to.not.include(CA);
    // The rebuild needs no scan (600 s here) nor repair: started by the removal.
    await rebuilt('d');
    await rebuilt('s');
    for (let s = 0; s < 4; s++) {
      const l = ctl!.db.locationsOfSegment(id, s);
      // The second leg is promoted; the new one goes to the domain the segment does not use.
      expect(l.map((x) => x.containerId), `segment ${s}`).to.deep.equal([second[s], second[s] === CB ? CC : CB]);
      expect(ctl!.db.segment(id, s).state).to.equal(SegmentState.NoWrite); // shared with the snapshot
    }
    expectData(id);
    expectData(ctl!.db.findVdisk('s')!.id);
    expect(ctl!.db.scrubPending().filter((l) => l.containerId === CA)).to.deep.equal([]);
    expect(a.zeros.slice(zerosBefore).filter((z) => z.container === CA)).to.deep.equal([]);
    clean();
  });

  it('refuses while a one-copy vdisk has data only there, naming it and changing nothing', async () => {
    const { id } = await setup(1);
    const err = await refusal(() => ctl!.admin.RemoveContainer({ id: CA, dead: true }));
    expect(err.message).to.match(/only location of 4 segments of vdisk d \(4\).*would lose their data/);
    expect(ctl!.db.container(CA)!.state).to.equal('online');
    expect(ctl!.db.locationsOfSegment(id, 0).map((l) => l.containerId)).to.deep.equal([CA]);
    // Without --dead: as before.
    await refusal(() => ctl!.admin.RemoveContainer({ id: CA }));
    clean();
  });

  /** Fails the container of segment 0's second leg through a leg fault; returns it and the segments with a leg there. */
  async function failSecondLeg(id: string, a: FakeAgent): Promise<{ failed: string; onFailed: number[] }> {
    const failed = ctl!.db.locationsOfSegment(id, 0)[1]!.containerId;
    const onFailed = [0, 1, 2, 3].filter((s) => ctl!.db.locationsOfSegment(id, s).some((l) => l.containerId === failed));
    const f = await a.sendFault({ vdiskId: id, segment: 0, op: IoOp.Write, state: SegmentState.Normal, detail: 'EIO', failedContainer: failed }).reply();
    expect(f.action).to.equal(FaultAction.Retry);
    expect(ctl!.db.staleLegs({ containerId: failed })).to.have.length(onFailed.length);
    return { failed, onFailed };
  }

  it('drops the stale legs a failed container left, without the rebuild delay, and rebuilds their segments', async () => {
    const { id, a } = await setup(2);
    const { failed, onFailed } = await failSecondLeg(id, a);
    const zerosBefore = a.zeros.length;
    const r = await ctl!.admin.RemoveContainer({ id: failed, dead: true });
    expect(r).to.deep.equal({ vdisks: ['d'], legs: 0, staleLegs: onFailed.length });
    expect(ctl!.db.container(failed)).to.equal(undefined);
    await rebuilt('d');
    const third = [CB, CC].find((c) => c !== failed)!;
    for (let s = 0; s < 4; s++) expect(ctl!.db.locationsOfSegment(id, s).map((l) => l.containerId)).to.deep.equal([CA, third]);
    expect(ctl!.db.staleLegs({})).to.deep.equal([]);
    expect(a.zeros.slice(zerosBefore).filter((z) => z.container === failed)).to.deep.equal([]);
    expectData(id);
    clean();
  });

  it('evacuate of a failed container answers how many segments of which vdisks are rebuilt', async () => {
    const { id, a } = await setup(2);
    const { failed, onFailed } = await failSecondLeg(id, a);
    expect(ctl!.admin.EvacuateContainer({ id: failed })).to.deep.equal({ migrations: [], rebuildingSegments: onFailed.length, rebuildingVdisks: ['d'], failed: true });
    await rebuilt('d');
    expect(ctl!.db.staleLegs({})).to.deep.equal([]);
    // A second evacuate finds nothing left to rebuild; the container stays registered, failed.
    expect(ctl!.admin.EvacuateContainer({ id: failed })).to.deep.include({ rebuildingSegments: 0, failed: true });
    expect(ctl!.db.container(failed)!.state).to.equal('failed');
    // Then given up: nothing references it any more.
    expect(await ctl!.admin.RemoveContainer({ id: failed, dead: true })).to.deep.equal({ vdisks: [], legs: 0, staleLegs: 0 });
    clean();
  });

  it('keeps the stale legs of another failed container (they may still be resynced)', async () => {
    const { id, a } = await setup(3);
    for (let s = 0; s < 4; s++) expect(ctl!.db.locationsOfSegment(id, s).map((l) => l.containerId).sort()).to.deep.equal([CA, CB, CC]);
    const f = await a.sendFault({ vdiskId: id, segment: 0, op: IoOp.Write, state: SegmentState.Normal, detail: 'EIO', failedContainer: CC }).reply();
    expect(f.action).to.equal(FaultAction.Retry);
    expect(ctl!.db.staleLegs({ containerId: CC })).to.have.length(4);
    const r = await ctl!.admin.RemoveContainer({ id: CB, dead: true });
    expect(r).to.deep.equal({ vdisks: ['d'], legs: 4, staleLegs: 0 });
    for (let s = 0; s < 4; s++) expect(ctl!.db.locationsOfSegment(id, s).map((l) => l.containerId)).to.deep.equal([CA]);
    // Unlike vdisk repair, the removal leaves CC's stale legs to a resync or the rebuild delay.
    expect(ctl!.db.staleLegs({ containerId: CC })).to.have.length(4);
    expect(health('d')).to.deep.include({ degraded: 4, stale: 4 });
    expectData(id);
    clean();
  });

  it('refuses while a migration runs to it, and goes once it is cancelled', async () => {
    const { id, a } = await setup(1, 'manual');
    await ctl!.admin.MigrateVdisk({ vdisk: 'd', toContainer: CB });
    await until(() => a.copies.length > 0, 5000, 'a migration copy in flight');
    const err = await refusal(() => ctl!.admin.RemoveContainer({ id: CB, dead: true }));
    expect(err.message).to.match(/migrations of vdisks d run to or from it; cancel them first/);
    expect(ctl!.db.container(CB)!.state).to.equal('online');
    const cancelled = ctl!.admin.CancelMigration({ vdisk: 'd' });
    for (const c of a.copies) a.copyDone(c.commandId);
    await cancelled;
    // Whatever the migration moved before it stopped is the only copy there: still refused, naming it.
    const moved = ctl!.db.locationsOfSegment(id, 0)[0]!.containerId === CB || [1, 2, 3].some((s) => ctl!.db.locationsOfSegment(id, s)[0]!.containerId === CB);
    if (moved) expect((await refusal(() => ctl!.admin.RemoveContainer({ id: CB, dead: true }))).message).to.match(/only location of \d+ segments? of vdisk d/);
    else expect(await ctl!.admin.RemoveContainer({ id: CB, dead: true })).to.deep.equal({ vdisks: [], legs: 0, staleLegs: 0 });
    clean();
  });

  it('a dead container without legs on it is just unregistered', async () => {
    await setup(1);
    expect(await ctl!.admin.RemoveContainer({ id: CC, dead: true })).to.deep.equal({ vdisks: [], legs: 0, staleLegs: 0 });
    expect(ctl!.db.container(CC)).to.equal(undefined);
    clean();
  });
});
