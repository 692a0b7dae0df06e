// Segment write ownership in the vdisk device (COMPARE AND WRITE across
// agents): writes to a segment another agent owns fault, a CAW on an
// unowned segment of a shared vdisk faults, and a CAW is one piece that an
// ownership change waits for.
import { expect } from 'chai';
import { VdiskDevice } from '../../../src/agent/vdisk-device.js';
import { MappingTable } from '../../../src/table/mapping-table.js';
import { IoOp, SegmentState } from '../../../src/table/segment-state.js';
import { BPS, BS, C1, FakeSink, Latch, SEG, fixture, pattern, raw, settle, type Fixture } from './device-fixture.js';

const VDISK = '99999999-0000-4000-8000-00000000caw0';
const ME = 7;
const OTHER = 9;

/** seg 0 normal c1@0, owned by OTHER | seg 1 normal c1@1, unowned | seg 2 normal c1@2, owned by ME */
function table(version = 1): MappingTable {
  const t = new MappingTable({ segmentCount: 4, segmentSize: SEG, blockSize: BS, version, name: 'owned' });
  t.set(0, { state: SegmentState.Normal, container: C1, offset: 0, owner: OTHER });
  t.set(1, { state: SegmentState.Normal, container: C1, offset: 1 });
  t.set(2, { state: SegmentState.Normal, container: C1, offset: 2, owner: ME });
  t.set(3, { state: SegmentState.Normal, container: C1, offset: 3 });
  return t;
}

/** verify half = what is there, write half = `data`. */
function halves(verify: Buffer, data: Buffer): [Buffer, Buffer] {
  return [verify, data];
}

describe('agent/VdiskDevice: segment write ownership', () => {
  let fx: Fixture;
  let sink: FakeSink;
  let dev: VdiskDevice;

  function make(exporters: number): VdiskDevice {
    sink = new FakeSink();
    // The controller's answer to an ownership fault: RETRY once the next version is in.
    sink.onFault = (f) => Promise.resolve({ action: 'retry', minVersion: f.version + 1 });
    dev = new VdiskDevice({ vdiskId: VDISK, table: table(), containers: fx.resolver, faults: sink, holdTimeoutMs: 2000, exporters, ownerId: ME });
    return dev;
  }

  beforeEach(async () => {
    fx = await fixture();
  });
  afterEach(async () => {
    await dev?.close();
    await fx.cleanup();
  });

  it('a write to a segment another agent owns faults as no-write, naming the owner; reads go on', async () => {
    make(2);
    const w = dev.write(5, pattern(1, 1));
    await settle();
    expect(sink.faults).to.have.length(1);
    const f = sink.faults[0]!;
    expect([f.segment, f.op, f.state]).to.deep.equal([0, IoOp.Write, SegmentState.NoWrite]);
    expect(f.detail).to.match(/owner is agent 9/);
    expect(fx.calls.filter((c) => c.op === 'write')).to.deep.equal([]);
    await dev.read(5, 1);
    // Ownership moves here: the held write goes on.
    const moved = table(2);
    moved.setOwner(0, ME);
    await dev.installTable(moved);
    await w;
    expect(raw(fx.paths[C1]!, 0, 5 * BS, BS).equals(pattern(1, 1))).to.equal(true);
  });

  it('unmap and write same of an owned-by-other segment fault too; unowned and own segments are written at once', async () => {
    make(2);
    void dev.writeZeroes(1, 2, false).catch(() => undefined);
    void dev.unmap(3, 1).catch(() => undefined);
    await settle();
    expect(sink.faults.map((f) => [f.segment, f.op])).to.deep.equal([
      [0, IoOp.WriteSame],
      [0, IoOp.Unmap],
    ]);
    await dev.write(BPS + 1, pattern(1, 2));
    await dev.write(2 * BPS + 1, pattern(1, 3));
    expect(sink.faults).to.have.length(2);
  });

  it('COMPARE AND WRITE: on an unowned segment of a shared vdisk it faults; with one exporter, or on its own segment, it runs', async () => {
    make(2);
    const [v, d] = halves(Buffer.alloc(BS), pattern(1, 4));
    const caw = dev.compareAndWrite(BPS + 8, v, d);
    await settle();
    expect(sink.faults.map((f) => [f.segment, f.op, f.state])).to.deep.equal([[1, IoOp.CompareAndWrite, SegmentState.NoWrite]]);
    expect(sink.faults[0]!.detail).to.match(/needs write ownership: 2 agents/);
    // Its own segment: local.
    expect(await dev.compareAndWrite(2 * BPS + 8, Buffer.alloc(BS), pattern(1, 5))).to.equal(-1);
    expect(raw(fx.paths[C1]!, 2, 8 * BS, BS).equals(pattern(1, 5))).to.equal(true);
    // Miscompare: the offset of the first difference, nothing written.
    const wrong = Buffer.alloc(BS);
    wrong[17] = 1;
    expect(await dev.compareAndWrite(2 * BPS + 9, wrong, pattern(1, 6))).to.equal(17);
    expect(raw(fx.paths[C1]!, 2, 9 * BS, BS).equals(Buffer.alloc(BS))).to.equal(true);
    // Down to one exporter: the held CAW still waits for a table; a new one on an unowned segment runs.
    dev.setSharing(1, ME);
    expect(await dev.compareAndWrite(3 * BPS, Buffer.alloc(BS), pattern(1, 7))).to.equal(-1);
    const moved = table(2);
    moved.setOwner(1, ME);
    await dev.installTable(moved);
    expect(await caw).to.equal(-1);
    expect(raw(fx.paths[C1]!, 1, 8 * BS, BS).equals(d)).to.equal(true);
  });

  it('a COMPARE AND WRITE that would miscompare is answered from a read, without a fault, where it may not write', async () => {
    make(2);
    const wrong = Buffer.alloc(BS);
    wrong[3] = 0xff;
    expect(await dev.compareAndWrite(5, wrong, pattern(1, 9))).to.equal(3); // seg 0: owned by the other agent
    expect(await dev.compareAndWrite(BPS + 5, wrong, pattern(1, 9))).to.equal(3); // seg 1: unowned, shared
    expect(sink.faults).to.deep.equal([]);
    expect(fx.calls.filter((c) => c.op === 'write')).to.deep.equal([]);
  });

  it('a COMPARE AND WRITE is one piece: an ownership change waits for its read, compare and write', async () => {
    make(2);
    const c1 = fx.drivers[C1]!;
    const hold = new Latch();
    c1.holdWrites = hold;
    const order: string[] = [];
    const caw = dev.compareAndWrite(2 * BPS, Buffer.alloc(BS), pattern(1, 8)).then((r) => {
      order.push('caw');
      return r;
    });
    await settle();
    // Read and compare done, the write held in the driver.
    expect(fx.calls.map((c) => c.op)).to.deep.equal(['read', 'write']);
    const away = table(2);
    away.setOwner(2, OTHER);
    const installed = dev.installTable(away).then(() => order.push('installed'));
    await settle();
    expect(order, 'the install (and so the ack) waits for the CAW').to.deep.equal([]);
    hold.open();
    expect(await caw).to.equal(-1);
    await installed;
    expect(order).to.deep.equal(['caw', 'installed']);
    // Now owned by the other agent: a CAW here faults.
    void dev.compareAndWrite(2 * BPS, pattern(1, 8), Buffer.alloc(BS)).catch(() => undefined);
    await settle();
    expect(sink.faults.map((f) => [f.segment, f.op])).to.deep.equal([[2, IoOp.CompareAndWrite]]);
  });
});
