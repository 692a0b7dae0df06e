import { expect } from 'chai';
import { VdiskDevice } from '../../../src/agent/vdisk-device.js';
import { FileContainerDriver } from '../../../src/container/file-driver.js';
import type { ContainerDriver } from '../../../src/container/driver.js';
import { MappingTable } from '../../../src/table/mapping-table.js';
import { SegmentState } from '../../../src/table/segment-state.js';
import { BPS, BS, C1, C2, FakeSink, SEG, fixture, pattern, raw, type Fixture } from './device-fixture.js';

const VDISK = '99999999-0000-4000-8000-0000000000aa';

/** seg 0 normal c1@3 | 1 normal c2@0 | 2 zero | 3 no-write c2@1 | 4 invalid */
function table(): MappingTable {
  const t = new MappingTable({ segmentCount: 5, segmentSize: SEG, blockSize: BS, version: 1, name: 'disk0' });
  t.set(0, { state: SegmentState.Normal, container: C1, offset: 3 });
  t.set(1, { state: SegmentState.Normal, container: C2, offset: 0 });
  t.set(3, { state: SegmentState.NoWrite, container: C2, offset: 1 });
  t.set(4, { state: SegmentState.Invalid });
  return t;
}

// The synchronous fast paths (readNow / writeNow) answer only what the general path would, and decline the rest untouched.
describe('agent/VdiskDevice readNow / writeNow', () => {
  let fx: Fixture;
  let dev: VdiskDevice;
  let sink: FakeSink;
  const files: ContainerDriver[] = [];

  beforeEach(async () => {
    fx = await fixture(8);
    // Real file drivers (the fixture's spies have no inline methods).
    const drivers: Record<string, ContainerDriver> = {};
    for (const id of [C1, C2]) {
      drivers[id] = await FileContainerDriver.open(fx.paths[id]!);
      files.push(drivers[id]!);
    }
    sink = new FakeSink();
    dev = new VdiskDevice({ vdiskId: VDISK, table: table(), containers: { get: (id) => drivers[id] }, faults: sink, holdTimeoutMs: 500 });
  });
  afterEach(async () => {
    await dev.close();
    for (const f of files.splice(0)) await f.close();
    await fx.cleanup();
  });

  it('writes and reads a normal segment in the same turn, at the container offset', () => {
    const data = pattern(8, 5);
    expect(dev.writeNow(10, data)).to.equal(true);
    expect(raw(fx.paths[C1]!, 3, 10 * BS, 8 * BS).equals(data)).to.equal(true);
    const back = dev.readNow(10, 8);
    expect(back?.equals(data)).to.equal(true);
    const other = pattern(4, 6);
    expect(dev.writeNow(BPS + 1, other)).to.equal(true);
    expect(raw(fx.paths[C2]!, 0, BS, 4 * BS).equals(other)).to.equal(true);
  });

  it('reads a zero segment as zeros', () => {
    const b = dev.readNow(2 * BPS + 3, 4);
    expect(b?.equals(Buffer.alloc(4 * BS))).to.equal(true);
  });

  it('declines, with nothing done and no fault, what the general path must decide', async () => {
    // across two segments, a zero segment to write, a no-write segment, an invalid one, FUA
    expect(dev.readNow(BPS - 2, 4)).to.equal(undefined);
    expect(dev.writeNow(2 * BPS, pattern(1, 1))).to.equal(false);
    expect(dev.writeNow(3 * BPS, pattern(1, 1))).to.equal(false);
    expect(dev.readNow(4 * BPS, 1)).to.equal(undefined);
    expect(dev.writeNow(0, pattern(1, 1), { fua: true })).to.equal(false);
    expect(raw(fx.paths[C1]!, 3, 0, BS).equals(Buffer.alloc(BS))).to.equal(true);
    expect(sink.faults).to.deep.equal([]);
    // the general path still faults the zero segment's write
    void dev.write(2 * BPS, pattern(1, 1)).catch(() => undefined);
    await new Promise((r) => setImmediate(r));
    expect(sink.faults.map((f) => f.segment)).to.deep.equal([2]);
  });

  it('throws out-of-range as read() and write() reject', () => {
    expect(() => dev.readNow(5 * BPS, 1)).to.throw(/beyond the last block/);
    expect(() => dev.writeNow(5 * BPS, pattern(1, 1))).to.throw(/beyond the last block/);
  });
});
