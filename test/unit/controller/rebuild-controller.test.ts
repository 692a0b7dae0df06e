// Rebuild through a real controller (SQLite, table changes, acks) and a fake
// agent that really copies between container files: set-copies up and down,
// repair of a leg removed, stale legs past the rebuild delay, and a rebuild
// cut short by a controller restart going on from the tables.
import { expect } from 'chai';
import { closeSync, openSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { IoOp, SegmentState } from '../../../src/table/index.js';
import { FaultAction } from '../../../src/wire/proto-types.js';
import { checkInvariants } from '../../../src/controller/check.js';
import { startController, type ControllerHandle } from '../../../src/controller/daemon.js';
import { CA, CB, CC, FakeAgent, MiB, containerRef, tempDir, until } from './helpers.js';
import { valueOf } from '../metrics/exposition.js';
import { metrics } from '../metrics/scrape.js';

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

describe('controller mirror rebuild', () => {
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

  const start = async (opts: { rebuildDelayMs?: number; rebuildScanMs?: number } = {}): Promise<ControllerHandle> => {
    ctl = await startController({ dbPath, listen: '127.0.0.1:0', ackTimeoutMs: 2000, metricsListen: '127.0.0.1:0', ...opts });
    return ctl;
  };
  const agent = async (name: string, copy: 'files' | 'manual' = 'files'): Promise<FakeAgent> => {
    const a = new FakeAgent(ctl!.address, name, { containers: [CA, CB, CC].map((id) => containerRef(id, SEGS)), copy, files });
    agents.push(a);
    await a.register();
    return a;
  };
  const legs = (name: string, seg: number): string[] => {
    const id = ctl!.db.findVdisk(name)!.id;
    return ctl!.db.locationsOfSegment(id, seg).map((l) => `${l.containerId.slice(0, 2)}@${l.offset}`);
  };
  const clean = (): void => {
    expect(checkInvariants(ctl!.db).filter((v) => !/degraded/i.test(v))).to.deep.equal([]);
  };
  const health = (name: string) => ctl!.admin.ShowVdisk({ name }).health!;
  const rebuilt = (name: string) => until(() => health(name).rebuilding === null, 10_000, `rebuild of ${name} finished`);

  /** CA (domain d1) holds thick 1-copy vdisk d (4 segments, patterns 1..4); CB in d2, CC in d3; exported on a1. */
  async function setup(opts: { rebuildDelayMs?: number; rebuildScanMs?: number } = {}, copy: 'files' | 'manual' = 'files'): Promise<{ id: string; a: FakeAgent }> {
    const h = await start(opts);
    h.admin.AddContainer({ id: CA, path: files.get(CA)!, size: (SEGS + 1) * MiB, dataOffset: MiB });
    const v = h.admin.CreateVdisk({ name: 'd', size: 4 * MiB, thick: true });
    for (let s = 0; s < 4; s++) writeSeg(files.get(CA)!, s, pattern(s + 1));
    h.admin.AddContainer({ id: CB, path: files.get(CB)!, size: (SEGS + 1) * MiB, dataOffset: MiB });
    h.admin.AddContainer({ id: CC, path: files.get(CC)!, size: (SEGS + 1) * MiB, dataOffset: MiB });
    h.db.setContainerDomain(CA, 'd1');
    h.db.setContainerDomain(CB, 'd2');
    h.db.setContainerDomain(CC, 'd3');
    const a = await agent('a1', copy);
    h.admin.AddExport({ vdisk: 'd', agent: 'a1' });
    await a.next((m) => m.body === 'tableFull');
    return { id: v.id, a };
  }

  it('set-copies 2 copies every segment to another domain; set-copies 1 removes and frees those legs', async () => {
    const { a } = await setup();
    expect(health('d')).to.deep.include({ copies: 1, segments: 4, degraded: 0 });
    const r = await ctl!.admin.SetVdiskCopies({ name: 'd', copies: 2 });
    expect(r.health!.copies).to.equal(2);
    await rebuilt('d');
    expect(health('d')).to.deep.include({ copies: 2, segments: 4, degraded: 0, blocked: '' });
    const id = ctl!.db.findVdisk('d')!.id;
    for (let s = 0; s < 4; s++) {
      const [l0, l1] = ctl!.db.locationsOfSegment(id, s);
      expect(l0!.containerId).to.equal(CA);
      expect(l1!.containerId).to.not.equal(CA);
      expect(readSeg(files.get(l1!.containerId)!, l1!.offset).equals(pattern(s + 1)), `segment ${s} copy`).to.equal(true);
      expect(ctl!.db.segment(id, s).state).to.equal(SegmentState.Normal);
    }
    expect(a.copies).to.have.length(4);
    clean();
    const e = await metrics(ctl!.metricsAddress as string);
    expect(valueOf(e, 'tabula_rebuild_bytes_total')).to.equal(4 * MiB);
    expect(valueOf(e, 'tabula_vdisk_degraded_segments', { vdisk: 'd' })).to.equal(0);

    await ctl!.admin.SetVdiskCopies({ name: 'd', copies: 1 });
    for (let s = 0; s < 4; s++) expect(legs('d', s)).to.deep.equal([`aa@${s}`]);
    await until(() => ctl!.db.containerSegmentsUsed(CB) + ctl!.db.containerSegmentsUsed(CC) === 0, 5000, 'removed legs scrubbed and freed');
    clean();
  });

  it('refuses more copies than failure domains', async () => {
    await setup();
    ctl!.db.setContainerDomain(CB, 'd1');
    ctl!.db.setContainerDomain(CC, 'd1');
    const err = await ctl!.admin.SetVdiskCopies({ name: 'd', copies: 2 }).then(
      () => null,
      (e: Error) => e,
    );
    expect(err?.message).to.match(/2 copies need containers in 2 failure domains/);
    expect(health('d').copies).to.equal(1);
  });

  it('repair rebuilds a segment that lost a leg, in a domain it does not use', async () => {
    // No scan in between: the repair is what rebuilds it.
    const { id } = await setup({ rebuildScanMs: 600_000 });
    await ctl!.admin.SetVdiskCopies({ name: 'd', copies: 2 });
    await rebuilt('d');
    const before = ctl!.db.locationsOfSegment(id, 2);
    // The second leg goes (as when its container failed and its stale leg was dropped).
    await ctl!.controller.tables.changeTable(id, (c) => c.setLegs(2, []));
    expect(health('d')).to.deep.include({ degraded: 1, rebuilding: null });
    await ctl!.admin.RepairVdisk({ name: 'd' });
    await rebuilt('d');
    const after = ctl!.db.locationsOfSegment(id, 2);
    expect(after).to.have.length(2);
    expect(after[0]).to.deep.equal(before[0]);
    expect(after[1]!.containerId).to.not.equal(CA);
    expect(readSeg(files.get(after[1]!.containerId)!, after[1]!.offset).equals(pattern(3))).to.equal(true);
    clean();
  });

  it('drops stale legs past the rebuild delay and rebuilds their segments; repair does not wait', async () => {
    const { id } = await setup({ rebuildDelayMs: 60_000, rebuildScanMs: 50 });
    await ctl!.admin.SetVdiskCopies({ name: 'd', copies: 2 });
    await rebuilt('d');
    // Segments 0 and 1 lose their second leg to a failure: stale legs, one long ago, one now.
    const old = new Date(Date.now() - 120_000).toISOString();
    const lost = [0, 1].map((s) => ctl!.db.locationsOfSegment(id, s)[1]!);
    await ctl!.controller.tables.changeTable(id, (c) => {
      for (const s of [0, 1]) {
        const l = lost[s]!;
        ctl!.db.addStaleLeg({ vdiskId: id, seg: s, containerId: l.containerId, offset: l.offset, since: s === 0 ? old : new Date().toISOString() });
        c.setLegs(s, []);
      }
    });
    await until(() => legs('d', 0).length === 2, 10_000, 'segment 0 rebuilt after its stale leg expired');
    expect(ctl!.db.staleLegs({ vdiskId: id }).map((s) => s.seg)).to.deep.equal([1]);
    expect(legs('d', 1)).to.have.length(1);
    expect(health('d')).to.deep.include({ stale: 1, degraded: 1 });
    await ctl!.admin.RepairVdisk({ name: 'd' });
    await until(() => legs('d', 1).length === 2, 10_000, 'segment 1 rebuilt by the repair');
    await rebuilt('d');
    expect(health('d')).to.deep.include({ stale: 0, degraded: 0 });
    clean();
  });

  it('a leg fault fails a container: its legs wait as stale legs; container evacuate of it rebuilds them in the third domain at once', async () => {
    const { id, a } = await setup();
    await ctl!.admin.SetVdiskCopies({ name: 'd', copies: 2 });
    await rebuilt('d');
    // Fail the container holding segment 0's second leg.
    const failed = ctl!.db.locationsOfSegment(id, 0)[1]!.containerId;
    const onFailed = [0, 1, 2, 3].filter((s) => ctl!.db.locationsOfSegment(id, s).some((l) => l.containerId === failed));
    const r = await a.sendFault({ vdiskId: id, segment: 0, op: IoOp.Write, state: SegmentState.Normal, detail: 'EIO', failedContainer: failed }).reply();
    expect(r.action).to.equal(FaultAction.Retry);
    expect(ctl!.db.container(failed)!.state).to.equal('failed');
    expect(health('d')).to.deep.include({ degraded: onFailed.length, stale: onFailed.length, rebuilding: null });
    expect(valueOf(await metrics(ctl!.metricsAddress as string), 'tabula_vdisk_degraded_segments', { vdisk: 'd' })).to.equal(onFailed.length);
    // The rebuild delay (10 min by default) would wait for the container to come back; evacuate does not.
    expect(ctl!.admin.EvacuateContainer({ id: failed }).migrations).to.deep.equal([]);
    await until(() => ctl!.db.staleLegs({ vdiskId: id }).length === 0 && health('d').degraded === 0 && health('d').rebuilding === null, 10_000, 'rebuilt off the failed container');
    const third = [CB, CC].find((c) => c !== failed)!;
    for (let s = 0; s < 4; s++) {
      const l = ctl!.db.locationsOfSegment(id, s);
      expect(l.map((x) => x.containerId), `segment ${s}`).to.deep.equal([CA, third]);
      expect(readSeg(files.get(third)!, l[1]!.offset).equals(pattern(s + 1)), `segment ${s} copy`).to.equal(true);
    }
    clean();
  });

  it('vdisk rm waits for a running rebuild to stop, then frees every leg', async () => {
    const { id, a } = await setup({}, 'manual');
    await ctl!.admin.SetVdiskCopies({ name: 'd', copies: 2 });
    await until(() => a.copies.length === 4, 5000, 'four copies in flight');
    ctl!.admin.RemoveExport({ vdisk: 'd', agent: 'a1' });
    const rm = ctl!.admin.RemoveVdisk({ name: 'd' });
    for (const c of a.copies) a.copyDone(c.commandId);
    await rm;
    expect(ctl!.db.findVdisk('d')).to.equal(undefined);
    expect(ctl!.controller.rebuild.running(id)).to.equal(false);
    await until(() => [CA, CB, CC].every((c) => ctl!.db.containerSegmentsUsed(c) === 0), 5000, 'every leg scrubbed and freed');
    clean();
  });

  it('a rebuild cut short by a controller restart goes on from the tables', async () => {
    const { a } = await setup({}, 'manual');
    await ctl!.admin.SetVdiskCopies({ name: 'd', copies: 2 });
    await until(() => a.copies.length > 0, 5000, 'a copy started');
    a.close();
    await ctl!.close();
    ctl = undefined;
    await start();
    await agent('a2');
    ctl!.admin.RemoveExport({ vdisk: 'd', agent: 'a1' });
    await until(() => [0, 1, 2, 3].every((s) => legs('d', s).length === 2), 10_000, 'every segment rebuilt after the restart');
    await rebuilt('d');
    expect(health('d')).to.deep.include({ copies: 2, degraded: 0 });
    clean();
  });
});
