// Leg faults and resync through a running controller and fake agents over
// loopback gRPC: FaultManager.handle routes a fault naming a failed copy
// to the MirrorManager, the agents get the table without that leg, and a
// ContainerUpdate saying the container is reachable again starts the
// resync, whose copies the fake agent really does between container files.
import { expect } from 'chai';
import { closeSync, openSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { startController, type ControllerHandle } from '../../../src/controller/daemon.js';
import { IoOp, SegmentState } from '../../../src/table/index.js';
import { FaultAction } from '../../../src/wire/proto-types.js';
import { CA, CB, FakeAgent, MiB, containerRef, tempDir, until } from './helpers.js';

const SEGS = 8;

function fillSeg(path: string, offset: number, byte: number): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, Buffer.alloc(MiB, byte), 0, MiB, MiB + offset * MiB);
  } finally {
    closeSync(fd);
  }
}

function segByte(path: string, offset: number): number {
  const b = Buffer.alloc(MiB);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, b, 0, MiB, MiB + offset * MiB);
  } finally {
    closeSync(fd);
  }
  return b.every((x) => x === b[0]) ? (b[0] as number) : -1;
}

describe('controller mirrors: leg faults and resync through the controller (fake agents)', () => {
  let t: ReturnType<typeof tempDir>;
  let ctl: ControllerHandle;
  const agents: FakeAgent[] = [];
  const files = new Map<string, string>();

  beforeEach(async () => {
    t = tempDir();
    for (const id of [CA, CB]) {
      const p = join(t.dir, `${id.slice(0, 8)}.img`);
      writeFileSync(p, Buffer.alloc(0));
      const fd = openSync(p, 'r+');
      writeSync(fd, Buffer.alloc(1), 0, 1, (SEGS + 1) * MiB - 1);
      closeSync(fd);
      files.set(id, p);
    }
    ctl = await startController({ dbPath: join(t.dir, 'c.db'), listen: '127.0.0.1:0', ackTimeoutMs: 2000 });
    ctl.admin.AddContainer({ id: CA, path: files.get(CA)!, size: (SEGS + 1) * MiB, dataOffset: MiB });
    ctl.admin.AddContainer({ id: CB, path: files.get(CB)!, size: (SEGS + 1) * MiB, dataOffset: MiB });
    ctl.db.setContainerDomain(CA, 'd1');
    ctl.db.setContainerDomain(CB, 'd2');
  });

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await ctl.close();
    t.cleanup();
  });

  async function agent(name: string): Promise<FakeAgent> {
    const a = new FakeAgent(ctl.address, name, { containers: [CA, CB].map((id) => containerRef(id, SEGS)), copy: 'files', files });
    agents.push(a);
    await a.register();
    return a;
  }

  it('a leg fault is answered RETRY once the agents hold the table without the leg; the container is failed; resync when it is reachable again', async () => {
    // A 2-copy vdisk, every segment on CA@s and CB@s.
    const v = ctl.admin.CreateVdisk({ name: 'm', size: 4 * MiB });
    ctl.db.setVdiskCopies(v.id, 2);
    await ctl.controller.tables.changeTable(v.id, (ctx) => {
      for (let s = 0; s < 4; s++) ctx.set(s, SegmentState.Normal, { containerId: CA, offset: s }, [{ containerId: CB, offset: s }]);
    });
    const a = await agent('a1');
    const b = await agent('a2');
    ctl.admin.AddExport({ vdisk: 'm', agent: 'a1' });
    ctl.admin.AddExport({ vdisk: 'm', agent: 'a2' });
    await a.next((m) => m.body === 'tableFull');
    await b.next((m) => m.body === 'tableFull');
    const db = ctl.db;
    const locs = (seg: number) => db.locationsOfSegment(v.id, seg);
    expect(locs(0)).to.have.length(2);
    // Which container holds which leg is the allocator's choice: fail the one holding leg 1 of segment 2.
    const failed = locs(2)[1]!.containerId;
    const healthy = failed === CA ? CB : CA;
    for (let s = 0; s < 4; s++) fillSeg(files.get(healthy)!, locs(s).find((l) => l.containerId === healthy)!.offset, 0x10 + s);

    const f1 = a.sendFault({ vdiskId: v.id, segment: 2, op: IoOp.Write, state: SegmentState.Normal, detail: 'EIO', failedContainer: failed });
    const f2 = b.sendFault({ vdiskId: v.id, segment: 3, op: IoOp.Write, state: SegmentState.Normal, detail: 'EIO', failedContainer: failed });
    const [r1, r2] = await Promise.all([f1.reply(), f2.reply()]);
    expect([r1.action, r2.action]).to.deep.equal([FaultAction.Retry, FaultAction.Retry]);
    expect(db.container(failed)!.state).to.equal('failed');
    const version = db.vdisk(v.id)!.version;
    expect(r1.tableVersion).to.equal(version);
    // Both agents installed the table without the failed leg before the answers.
    for (const x of [a, b]) {
      const table = x.tables.get(v.id)!;
      expect(table.version).to.equal(version);
      for (let s = 0; s < 4; s++) expect(table.locationsOf(s).map((l) => l.container), `${x.name} segment ${s}`).to.deep.equal([healthy]);
    }
    expect(db.staleLegs({ containerId: failed }).map((s) => [s.seg, s.dirty])).to.deep.equal([
      [0, false],
      [1, false],
      [2, true],
      [3, true],
    ]);
    // A fault arriving late for the same container: RETRY, no new version.
    const r3 = await a.sendFault({ vdiskId: v.id, segment: 0, op: IoOp.Write, state: SegmentState.Normal, detail: 'EIO', failedContainer: failed }).reply();
    expect(r3.action).to.equal(FaultAction.Retry);
    expect(db.vdisk(v.id)!.version).to.equal(version);
    expect(db.staleLegs({ containerId: failed }).filter((s) => s.dirty).map((s) => s.seg)).to.deep.equal([0, 2, 3]);

    // The container unreachable, then back: the agent's ContainerUpdate starts the resync.
    a.containerUpdate([containerRef(healthy, SEGS), { ...containerRef(failed, SEGS), reachable: false, error: 'down' }]);
    await until(() => db.agentClaims('a1').some((c) => c.id === failed && !c.reachable), 5000, 'unreachable recorded');
    a.containerUpdate([containerRef(CA, SEGS), containerRef(CB, SEGS)]);
    await until(() => db.container(failed)!.state === 'online', 10_000, 'container online again');
    // Three dirty segments copied from the healthy leg; the clean one (1) re-added without a copy.
    const copies = [...a.copies, ...b.copies];
    expect(copies.map((c) => c.dstContainer)).to.deep.equal([failed, failed, failed]);
    expect(ctl.controller.mirrors.resyncBytesTotal).to.equal(3 * MiB);
    for (const s of [0, 2, 3]) expect(segByte(files.get(failed)!, locs(s).find((l) => l.containerId === failed)!.offset), `segment ${s}`).to.equal(0x10 + s);
    expect(segByte(files.get(failed)!, locs(1).find((l) => l.containerId === failed)!.offset)).to.equal(0);
    for (let s = 0; s < 4; s++) {
      expect(locs(s), `segment ${s}`).to.have.length(2);
      expect(db.segment(v.id, s).state).to.equal(SegmentState.Normal);
    }
    await until(() => a.tables.get(v.id)!.version === db.vdisk(v.id)!.version, 5000, 'agent has the last table');
    expect(ctl.controller.tables.table(v.id).legCountOf(1)).to.equal(2);
    expect(db.staleLegs({})).to.deep.equal([]);
  });

  it('the ContainerSet marks near the containers in the agent\'s own failure domain (its host), for mirrored reads', async () => {
    const a = new FakeAgent(ctl.address, 'a1', { containers: [containerRef(CA, SEGS)], hostId: 'h1' });
    agents.push(a);
    await a.register();
    const b = new FakeAgent(ctl.address, 'a2', { containers: [containerRef(CA, SEGS), containerRef(CB, SEGS)], hostId: 'h2' });
    agents.push(b);
    await b.register();
    // Named domains (d1, d2) are no host's: nothing is near.
    const set = (x: FakeAgent) => {
      const m = x.received.filter((y) => y.body === 'containerSet').pop();
      return m?.body === 'containerSet' ? m.containerSet.containers.map((c) => [c.id, c.shared, c.near === true]) : [];
    };
    expect(set(b).some((c) => c[2] === true)).to.equal(false);
    // Derived domains: CA lives on a1's host (its first claimer), CB on a2's.
    ctl.db.setContainerDomain(CA, '');
    ctl.db.setContainerDomain(CB, '');
    b.containerUpdate([containerRef(CA, SEGS), containerRef(CB, SEGS)]);
    await until(() => set(b).some((c) => c[2] === true), 5000, 'a2 told of its near container');
    expect(set(b)).to.deep.equal([
      [CA, true, false],
      [CB, false, true],
    ]);
    await until(() => set(a).some((c) => c[2] === true), 5000, 'a1 told of its near container');
    expect(set(a)).to.deep.equal([[CA, true, true]]);
  });

  it('an agent registering with the failed container reachable starts the resync; one reporting it unreachable does not', async () => {
    const v = ctl.admin.CreateVdisk({ name: 'm', size: 2 * MiB });
    ctl.db.setVdiskCopies(v.id, 2);
    await ctl.controller.tables.changeTable(v.id, (ctx) => {
      for (let s = 0; s < 2; s++) ctx.set(s, SegmentState.Normal, { containerId: CA, offset: s }, [{ containerId: CB, offset: s }]);
    });
    const a = await agent('a1');
    ctl.admin.AddExport({ vdisk: 'm', agent: 'a1' });
    await a.next((m) => m.body === 'tableFull');
    const r = await a.sendFault({ vdiskId: v.id, segment: 1, op: IoOp.Write, state: SegmentState.Normal, detail: 'EIO', failedContainer: CB }).reply();
    expect(r.action).to.equal(FaultAction.Retry);
    expect(ctl.db.container(CB)!.state).to.equal('failed');
    // Reaches CA only, CB unreachable: nothing to resync through it.
    const b = new FakeAgent(ctl.address, 'a2', { containers: [containerRef(CA, SEGS), { ...containerRef(CB, SEGS), reachable: false, error: 'down' }], copy: 'files', files });
    agents.push(b);
    await b.register();
    expect(ctl.controller.mirrors.resyncing(CB)).to.equal(false);
    b.close();
    // a1 restarts (a new stream) and reaches both.
    a.close();
    await until(() => ctl.controller.agents.link('a1') === undefined, 5000, 'a1 gone');
    const a2 = await agent('a1');
    await until(() => ctl.db.container(CB)!.state === 'online', 10_000, 'container online again');
    expect(a2.copies.map((c) => [c.srcContainer, c.srcOffset, c.dstContainer, c.dstOffset])).to.deep.equal([[CA, MiB, CB, MiB]]);
    expect(ctl.db.locationsOfSegment(v.id, 0)).to.have.length(2);
    expect(ctl.db.locationsOfSegment(v.id, 1)).to.have.length(2);
  });
});
