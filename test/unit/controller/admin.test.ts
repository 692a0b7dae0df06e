import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { join } from 'node:path';
import { SegmentState } from '../../../src/table/index.js';
import { AdminError } from '../../../src/controller/admin.js';
import { ContainerFullError } from '../../../src/controller/allocator.js';
import { startController } from '../../../src/controller/daemon.js';
import { FaultAction } from '../../../src/wire/proto-types.js';
import { CA, CB, FakeAgent, MiB, containerRef, startTestController, tempDir, until } from './helpers.js';

type Ctl = Awaited<ReturnType<typeof startTestController>>;

const codeOf = (fn: () => unknown): number | undefined => {
  try {
    fn();
  } catch (e) {
    return e instanceof AdminError ? e.code : -1;
  }
  return undefined;
};

describe('controller admin', () => {
  let ctl: Ctl;
  const agents: FakeAgent[] = [];
  beforeEach(async () => {
    ctl = await startTestController();
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    ctl.admin.AddContainer({ id: CB, path: '/c/b', size: 9 * MiB, dataOffset: MiB });
  });
  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await ctl.cleanup();
  });

  it('validates containers and refuses to remove one in use', () => {
    expect(codeOf(() => ctl.admin.AddContainer({ id: CA, size: 9 * MiB, dataOffset: MiB }))).to.equal(grpc.status.ALREADY_EXISTS);
    expect(codeOf(() => ctl.admin.AddContainer({ id: 'x y', size: 9 * MiB }))).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(codeOf(() => ctl.admin.AddContainer({ id: 'small', size: MiB + 4096, dataOffset: 4096 }))).to.equal(undefined);
    expect(codeOf(() => ctl.admin.AddContainer({ id: 'tiny', size: 1000, dataOffset: 0 }))).to.equal(grpc.status.INVALID_ARGUMENT);
    const list = ctl.admin.ListContainers({}).containers;
    expect(list.find((c) => c.id === CA)).to.deep.include({ segmentsTotal: 8, segmentsUsed: 0, state: 'online' });
    ctl.admin.CreateVdisk({ name: 'thick', size: 3 * MiB, thick: true });
    const inUse = ctl.admin.ListContainers({}).containers.filter((c) => c.segmentsUsed > 0);
    expect(codeOf(() => ctl.admin.RemoveContainer({ id: inUse[0]!.id }))).to.equal(grpc.status.FAILED_PRECONDITION);
    ctl.admin.RemoveContainer({ id: 'small' });
    expect(ctl.admin.ListContainers({}).containers.map((c) => c.id)).to.not.include('small');
  });

  it('refuses to remove a container whose freed space is not zeroed yet, and says so', () => {
    ctl.admin.CreateVdisk({ name: 'gone', size: 3 * MiB, thick: true });
    const used = ctl.admin.ListContainers({}).containers.filter((c) => c.segmentsUsed > 0);
    ctl.admin.RemoveVdisk({ name: 'gone' });
    // No agent is connected: the freed segments wait for a scrub.
    for (const c of used) {
      let message = '';
      try {
        ctl.admin.RemoveContainer({ id: c.id });
      } catch (err) {
        message = (err as Error).message;
      }
      expect(message).to.match(/freed segments are still waiting to be zeroed/);
      expect(message).to.match(/no agent reaching it is registered/);
    }
  });

  it('creates thin and thick vdisks; thick spreads and fails whole when space is short', () => {
    const thin = ctl.admin.CreateVdisk({ name: 'thin', size: 3 * MiB + 1 });
    expect(thin).to.deep.include({ thin: true, segmentCount: 4, size: 4 * MiB, segmentsAllocated: 0, blockSize: 512, segmentSize: MiB });
    const thick = ctl.admin.CreateVdisk({ name: 'thick', size: 6 * MiB, thick: true, blockSize: 4096 });
    expect(thick).to.deep.include({ thin: false, segmentsAllocated: 6, allocatedBytes: 6 * MiB, blockSize: 4096 });
    expect(thick.states.normal).to.equal(6);
    const per = ctl.admin.ListContainers({}).containers.map((c) => c.segmentsUsed);
    expect(per).to.deep.equal([3, 3]);
    expect(() => ctl.admin.CreateVdisk({ name: 'huge', size: 20 * MiB, thick: true })).to.throw(ContainerFullError, /vdisk huge needs 20/);
    expect(ctl.db.vdiskByName('huge')).to.equal(undefined);
    expect(ctl.admin.ListContainers({}).containers.map((c) => c.segmentsUsed)).to.deep.equal([3, 3]);
    expect(codeOf(() => ctl.admin.CreateVdisk({ name: 'thin', size: MiB }))).to.equal(grpc.status.ALREADY_EXISTS);
    expect(codeOf(() => ctl.admin.CreateVdisk({ name: 'bad/name', size: MiB }))).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(codeOf(() => ctl.admin.CreateVdisk({ name: 'b', size: MiB, blockSize: 1024 }))).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(codeOf(() => ctl.admin.CreateVdisk({ name: 'b', size: MiB, segmentSize: 3 * MiB }))).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(ctl.admin.Check({})).to.deep.equal({ ok: true, violations: [] });
  });

  it('exports: agent must exist and reach the containers in use; default IQN; LUN clash', async () => {
    ctl.admin.CreateVdisk({ name: 'Disk0', size: 2 * MiB, thick: true });
    expect(codeOf(() => ctl.admin.AddExport({ vdisk: 'Disk0', agent: 'ghost' }))).to.equal(grpc.status.NOT_FOUND);
    const a = new FakeAgent(ctl.address, 'a1', { containers: [containerRef(CA, 8)] });
    agents.push(a);
    await a.register();
    // Thick allocation spread over both containers; a1 reaches only CA.
    expect(codeOf(() => ctl.admin.AddExport({ vdisk: 'Disk0', agent: 'a1' }))).to.equal(grpc.status.FAILED_PRECONDITION);
    ctl.admin.CreateVdisk({ name: 'thin', size: 2 * MiB });
    const e = ctl.admin.AddExport({ vdisk: 'thin', agent: 'a1' });
    expect(e).to.deep.include({ targetIqn: 'iqn.2026-11.org.tabula:thin', lun: 0, agent: 'a1', fenced: false });
    expect(codeOf(() => ctl.admin.AddExport({ vdisk: 'thin', agent: 'a1' }))).to.equal(grpc.status.ALREADY_EXISTS);
    ctl.admin.CreateVdisk({ name: 'other', size: 2 * MiB });
    expect(codeOf(() => ctl.admin.AddExport({ vdisk: 'other', agent: 'a1', targetIqn: 'iqn.2026-11.org.tabula:thin' }))).to.equal(
      grpc.status.ALREADY_EXISTS,
    );
    ctl.admin.AddExport({ vdisk: 'other', agent: 'a1', targetIqn: 'iqn.2026-11.org.tabula:thin', lun: 1 });
    expect(codeOf(() => ctl.admin.AddExport({ vdisk: 'other', agent: 'a1', targetIqn: 'not an iqn' }))).to.equal(grpc.status.INVALID_ARGUMENT);
    await a.next((m) => m.body === 'exportSet' && m.exportSet.exports.length === 2);
    expect(codeOf(() => ctl.admin.RemoveVdisk({ name: 'thin' }))).to.equal(grpc.status.FAILED_PRECONDITION);
    ctl.admin.RemoveExport({ vdisk: 'thin', agent: 'a1' });
    await a.next((m) => m.body === 'exportSet' && m.exportSet.exports.length === 1);
    ctl.admin.RemoveVdisk({ name: 'thin' });
    expect(ctl.admin.ListVdisks({}).vdisks.map((v) => v.name)).to.deep.equal(['Disk0', 'other']);
  });

  it('resizes (growing only) and pushes the new segment count; thick growth allocates', async () => {
    const a = new FakeAgent(ctl.address, 'a1', { containers: [containerRef(CA, 8), containerRef(CB, 8)] });
    agents.push(a);
    await a.register();
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 2 * MiB, thick: true });
    ctl.admin.AddExport({ vdisk: 'd', agent: 'a1' });
    await a.next((m) => m.body === 'tableFull');
    const info = await ctl.admin.ResizeVdisk({ name: 'd', size: 5 * MiB });
    expect(info).to.deep.include({ segmentCount: 5, size: 5 * MiB, segmentsAllocated: 5 });
    const t = a.tables.get(v.id)!;
    expect(t.segmentCount).to.equal(5);
    expect(t.counts().normal).to.equal(5);
    await a.next((m) => m.body === 'exportSet' && m.exportSet.exports[0]?.size === 5 * MiB);
    await ctl.admin.ResizeVdisk({ name: 'd', size: 5 * MiB }).then(
      () => undefined,
      () => expect.fail('same size is not an error'),
    );
    const err = await ctl.admin.ResizeVdisk({ name: 'd', size: MiB }).catch((e: AdminError) => e);
    expect((err as AdminError).code).to.equal(grpc.status.INVALID_ARGUMENT);
  });

  it('set-state: error keeps the location, zero frees it, normal on a zero segment allocates', async () => {
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 4 * MiB });
    let r = await ctl.admin.SetSegmentState({ vdisk: 'd', first: 0, count: 2, state: SegmentState.Normal });
    expect(r.text).to.match(/^# vdisk d version 2: 4 segments/);
    expect(ctl.admin.ShowVdisk({ name: 'd' }).segmentsAllocated).to.equal(2);
    r = await ctl.admin.SetSegmentState({ vdisk: 'd', first: 1, count: 1, state: SegmentState.Error });
    expect(r.text.split('\n')[2]).to.match(/^1-1 error c=/);
    expect(ctl.admin.ShowVdisk({ name: 'd' }).segmentsAllocated).to.equal(2);
    await ctl.admin.SetSegmentState({ vdisk: 'd', first: 0, count: 2, state: SegmentState.Zero });
    expect(ctl.admin.ShowVdisk({ name: 'd' })).to.deep.include({ segmentsAllocated: 0, version: 4 });
    const used = (): number => ctl.db.containerSegmentsUsed(CA) + ctl.db.containerSegmentsUsed(CB);
    expect(ctl.db.scrubPendingCount(CA) + ctl.db.scrubPendingCount(CB), 'no exporter: released at once, no agent to scrub yet').to.equal(2);
    expect(used()).to.equal(2);
    const a = new FakeAgent(ctl.address, 'a1', { containers: [containerRef(CA, 8), containerRef(CB, 8)] });
    agents.push(a);
    await a.register();
    await until(() => used() === 0, 2000, 'scrubbed by a1 and free');
    expect(a.zeros.length).to.be.greaterThan(0);
    const err = await ctl.admin.SetSegmentState({ vdisk: 'd', first: 3, count: 2, state: SegmentState.Invalid }).catch((e: AdminError) => e);
    expect((err as AdminError).code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(ctl.admin.GetTable({ name: v.id }).extents).to.deep.equal([{ first: 0, count: 4, state: SegmentState.Zero, container: '', offset: 0 }]);
  });

  it('holds a released location while an exporting agent has not acked, even offline', async () => {
    const a = new FakeAgent(ctl.address, 'a1', { containers: [containerRef(CA, 8), containerRef(CB, 8)] });
    agents.push(a);
    await a.register();
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 4 * MiB });
    ctl.admin.AddExport({ vdisk: 'd', agent: 'a1' });
    await a.next((m) => m.body === 'tableFull');
    expect((await a.sendFault({ vdiskId: v.id, segment: 0 }).reply()).action).to.equal(FaultAction.Retry);
    a.close();
    for (let i = 0; i < 50 && ctl.controller.agents.link('a1'); i++) await new Promise((r) => setTimeout(r, 20));
    await ctl.admin.SetSegmentState({ vdisk: 'd', first: 0, count: 1, state: SegmentState.Zero });
    expect(ctl.db.containerSegmentsUsed(CA) + ctl.db.containerSegmentsUsed(CB), 'a1 may still write there').to.equal(1);
    expect(ctl.admin.Check({}).ok).to.equal(true);
    const back = new FakeAgent(ctl.address, 'a1', { containers: [containerRef(CA, 8), containerRef(CB, 8)] });
    agents.push(back);
    await back.register();
    await back.next((m) => m.body === 'tableFull');
    for (let i = 0; i < 50 && ctl.db.containerSegmentsUsed(CA) + ctl.db.containerSegmentsUsed(CB) > 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(ctl.db.containerSegmentsUsed(CA) + ctl.db.containerSegmentsUsed(CB)).to.equal(0);
  });
});

describe('controller restart', () => {
  it('keeps tables, versions and allocations in the database across a restart', async () => {
    const t = tempDir();
    const dbPath = join(t.dir, 'c.db');
    try {
      let h = await startController({ dbPath, listen: '127.0.0.1:0' });
      h.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
      h.admin.CreateVdisk({ name: 'd', size: 4 * MiB });
      await h.admin.SetSegmentState({ vdisk: 'd', first: 1, count: 2, state: SegmentState.Normal });
      const before = h.admin.GetTable({ name: 'd' });
      await h.close();
      h = await startController({ dbPath, listen: '127.0.0.1:0' });
      const after = h.admin.GetTable({ name: 'd' });
      expect(after).to.deep.equal(before);
      expect(h.controller.allocator.freeSegments(CA)).to.equal(6);
      expect(h.admin.Check({}).ok).to.equal(true);
      await h.close();
    } finally {
      t.cleanup();
    }
  });
});
