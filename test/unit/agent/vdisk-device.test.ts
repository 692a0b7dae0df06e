import { expect } from 'chai';
import { BlockDeviceError } from '../../../src/blockdev/block-device.js';
import { ReleaseLostError, VdiskIoError, type FaultDecision } from '../../../src/agent/fault.js';
import { VdiskDevice } from '../../../src/agent/vdisk-device.js';
import { ContainerIoError } from '../../../src/container/driver.js';
import { TransportError } from '../../../src/iscsi/initiator/transport.js';
import { VersionGapError, diff } from '../../../src/table/delta.js';
import { MappingTable } from '../../../src/table/mapping-table.js';
import { IoOp, SegmentState } from '../../../src/table/segment-state.js';
import { BPS, BS, C1, C2, FakeSink, Latch, SEG, fixture, pattern, raw, rejects, settle, type Fixture } from './device-fixture.js';

const VDISK = '99999999-0000-4000-8000-00000000d15c';

/**
 * seg 0 normal c1@3 | 1 normal c2@0 | 2 zero | 3 normal c1@0
 * seg 4 no-write c2@1 | 5 error c1@1 | 6 invalid | 7 zero
 */
function table(version = 1): MappingTable {
  const t = new MappingTable({ segmentCount: 8, segmentSize: SEG, blockSize: BS, version, name: 'disk0' });
  t.set(0, { state: SegmentState.Normal, container: C1, offset: 3 });
  t.set(1, { state: SegmentState.Normal, container: C2, offset: 0 });
  t.set(3, { state: SegmentState.Normal, container: C1, offset: 0 });
  t.set(4, { state: SegmentState.NoWrite, container: C2, offset: 1 });
  t.set(5, { state: SegmentState.Error, container: C1, offset: 1 });
  t.set(6, { state: SegmentState.Invalid });
  return t;
}

/** A newer version of `t` with `edit` applied. */
function next(t: MappingTable, edit: (n: MappingTable) => void): MappingTable {
  const n = t.clone();
  edit(n);
  n.bumpVersion();
  return n;
}

const zeros = (blocks: number): Buffer => Buffer.alloc(blocks * BS);

describe('agent/VdiskDevice', () => {
  let fx: Fixture;
  let sink: FakeSink;
  let dev: VdiskDevice;

  function make(opts: { release?: boolean; holdTimeoutMs?: number; t?: MappingTable } = {}): VdiskDevice {
    sink = new FakeSink(opts.release ?? false);
    dev = new VdiskDevice({
      vdiskId: VDISK,
      table: opts.t ?? table(),
      containers: fx.resolver,
      faults: sink,
      holdTimeoutMs: opts.holdTimeoutMs ?? 2000,
    });
    return dev;
  }

  beforeEach(async () => {
    fx = await fixture();
  });
  afterEach(async () => {
    await dev?.close();
    await fx.cleanup();
  });

  describe('translation', () => {
    it('writes across a segment boundary land at each segment\'s container offset', async () => {
      make();
      const data = pattern(156, 1); // lba 100..255: 28 blocks in seg 0, 128 in seg 1
      await dev.write(100, data);
      expect(raw(fx.paths[C1]!, 3, 100 * BS, 28 * BS).equals(data.subarray(0, 28 * BS))).to.equal(true);
      expect(raw(fx.paths[C2]!, 0, 0, 128 * BS).equals(data.subarray(28 * BS))).to.equal(true);
      expect(fx.calls.map((c) => [c.op, c.container, c.offset, c.length])).to.deep.equal([
        ['write', C1, 3 * SEG + 100 * BS, 28 * BS],
        ['write', C2, 0, 128 * BS],
      ]);
    });

    it('reads across normal, zero and normal segments', async () => {
      make();
      const a = pattern(BPS, 2);
      const b = pattern(BPS, 3);
      await dev.write(BPS, a); // seg 1
      await dev.write(3 * BPS, b); // seg 3
      fx.calls.length = 0;
      const got = await dev.read(BPS + 64, 2 * BPS); // 64 of seg 1, all of seg 2, 64 of seg 3
      const want = Buffer.concat([a.subarray(64 * BS), zeros(BPS), b.subarray(0, 64 * BS)]);
      expect(got.equals(want)).to.equal(true);
      // The zero segment cost no container I/O.
      expect(fx.calls.map((c) => [c.op, c.container, c.offset, c.length])).to.deep.equal([
        ['read', C2, 64 * BS, 64 * BS],
        ['read', C1, 0, 64 * BS],
      ]);
    });

    it('zero segments read as zeros without container I/O, even over old data', async () => {
      make();
      await fx.drivers[C1]!.inner.write(7 * SEG, Buffer.alloc(SEG, 0xee)); // stale bytes nobody maps
      const got = await dev.read(7 * BPS, BPS);
      expect(got.equals(zeros(BPS))).to.equal(true);
      expect(fx.calls).to.deep.equal([]);
      expect(sink.faults).to.deep.equal([]);
    });

    it('reads no-write segments from the container', async () => {
      make();
      const d = pattern(8, 4);
      await fx.drivers[C2]!.inner.write(SEG + 8 * BS, d);
      expect((await dev.read(4 * BPS + 8, 8)).equals(d)).to.equal(true);
      expect(sink.faults).to.deep.equal([]);
    });

    it('passes FUA to the container and flushes every container', async () => {
      make();
      await dev.write(0, pattern(1, 5), { fua: true });
      expect(fx.calls[0]?.fua).to.equal(true);
      fx.calls.length = 0;
      await dev.flush();
      expect(fx.calls.map((c) => [c.op, c.container]).sort()).to.deep.equal([
        ['flush', C1],
        ['flush', C2],
      ]);
    });

    it('refuses I/O beyond the end', async () => {
      make();
      const e = await rejects(dev.read(8 * BPS - 1, 2));
      expect(e).to.be.instanceOf(BlockDeviceError);
      expect((e as BlockDeviceError).kind).to.equal('out-of-range');
      expect(dev.blockCount).to.equal(8 * BPS);
    });
  });

  describe('faults', () => {
    it('a first write to a zero segment faults; the sink installs a table and answers retry', async () => {
      make();
      const t = dev.table;
      sink.onFault = async () => {
        await dev.installTable(next(t, (n) => n.set(2, { state: SegmentState.Normal, container: C2, offset: 5 })));
        return { action: 'retry' };
      };
      const data = pattern(10, 6);
      await dev.write(2 * BPS + 20, data);
      expect(sink.faults).to.deep.equal([
        { vdiskId: VDISK, version: 1, segment: 2, op: IoOp.Write, lba: 2 * BPS + 20, blocks: 10, state: SegmentState.Zero },
      ]);
      expect(dev.version).to.equal(2);
      expect(raw(fx.paths[C2]!, 5, 20 * BS, 10 * BS).equals(data)).to.equal(true);
      expect((await dev.read(2 * BPS + 20, 10)).equals(data)).to.equal(true);
      expect(dev.heldCount).to.equal(0);
    });

    it('an I/O spanning two inhibited segments sends one fault per segment', async () => {
      make();
      const t = dev.table;
      let answered = 0;
      const gate = new Latch();
      sink.onFault = async () => {
        if (++answered === 2) {
          await dev.installTable(
            next(t, (n) => {
              n.set(6, { state: SegmentState.Normal, container: C1, offset: 6 });
              n.set(7, { state: SegmentState.Normal, container: C1, offset: 7 });
            }),
          );
          gate.open();
        }
        await gate.promise;
        return { action: 'retry', minVersion: 2 };
      };
      const data = pattern(2 * BPS, 7);
      await dev.write(6 * BPS, data);
      expect(sink.faults.map((f) => [f.segment, f.state, f.lba, f.blocks])).to.deep.equal([
        [6, SegmentState.Invalid, 6 * BPS, BPS],
        [7, SegmentState.Zero, 7 * BPS, BPS],
      ]);
      expect(raw(fx.paths[C1]!, 6, 0, 2 * SEG).equals(data)).to.equal(true);
    });

    it('a held I/O fails NOT READY after the hold timeout', async () => {
      make({ holdTimeoutMs: 30 });
      const e = await rejects(dev.write(2 * BPS, pattern(1, 8))); // the sink never answers
      expect(e).to.be.instanceOf(VdiskIoError);
      expect((e as VdiskIoError).kind).to.equal('not-ready');
      expect((e as VdiskIoError).segment).to.equal(2);
      expect(e.message).to.match(/WRITE lba=256 len=1 on vdisk disk0 segment 2: held 30 ms \(zero, fault unanswered\)/);
      expect(dev.heldCount).to.equal(0);
      expect(fx.calls).to.deep.equal([]);
    });

    it('reads of an invalid segment are held too', async () => {
      make({ holdTimeoutMs: 30 });
      const e = await rejects(dev.read(6 * BPS, 1));
      expect((e as BlockDeviceError).kind).to.equal('not-ready');
      expect(sink.faults.map((f) => [f.op, f.state])).to.deep.equal([[IoOp.Read, SegmentState.Invalid]]);
    });

    it('"retry" without a new table does not fault again at the same version', async () => {
      make({ holdTimeoutMs: 50 });
      sink.onFault = () => Promise.resolve({ action: 'retry' });
      const e = await rejects(dev.write(4 * BPS, pattern(1, 9)));
      expect((e as BlockDeviceError).kind).to.equal('not-ready');
      expect(sink.faults.length).to.equal(1);
    });

    it('"wait" holds until a new table arrives', async () => {
      make();
      const t = dev.table;
      sink.onFault = () => Promise.resolve({ action: 'wait' });
      const w = dev.write(4 * BPS, pattern(1, 10));
      await settle();
      expect(dev.heldCount).to.equal(1);
      await dev.installTable(next(t, (n) => n.set(4, { state: SegmentState.Normal, container: C2, offset: 9 })));
      await w;
      expect(raw(fx.paths[C2]!, 9, 0, BS).equals(pattern(1, 10))).to.equal(true);
    });

    it('"fail" ends the I/O with the controller\'s sense', async () => {
      make();
      const d: FaultDecision = { action: 'fail', sense: { key: 0x7, asc: 0x27, ascq: 0x07 }, reason: 'pool full' };
      sink.onFault = () => Promise.resolve(d);
      const e = (await rejects(dev.write(2 * BPS, pattern(1, 11)))) as VdiskIoError;
      expect(e).to.be.instanceOf(VdiskIoError);
      expect(e.kind).to.equal('no-space');
      expect(e.sense).to.deep.equal({ key: 0x7, asc: 0x27, ascq: 0x07 });
      expect(e.message).to.contain('pool full');
    });

    it('"done" completes the piece without container I/O', async () => {
      make();
      sink.onFault = () => Promise.resolve({ action: 'done' });
      await dev.unmap(4 * BPS, BPS); // whole no-write segment: the controller drops its reference
      expect(sink.faults.map((f) => [f.segment, f.op, f.state])).to.deep.equal([[4, IoOp.Unmap, SegmentState.NoWrite]]);
      expect(fx.calls).to.deep.equal([]);
    });

    it('an error segment fails at once with MEDIUM ERROR kinds and reports a fault', async () => {
      make();
      const r = (await rejects(dev.read(5 * BPS + 3, 2))) as VdiskIoError;
      expect(r.kind).to.equal('read-error');
      expect(r.lba).to.equal(5 * BPS + 3);
      const w = (await rejects(dev.write(5 * BPS, pattern(1, 12)))) as VdiskIoError;
      expect(w.kind).to.equal('write-error');
      expect(w.message).to.equal('WRITE lba=640 len=1 on vdisk disk0 segment 5: error');
      expect(sink.faults.map((f) => [f.segment, f.op, f.state])).to.deep.equal([
        [5, IoOp.Read, SegmentState.Error],
        [5, IoOp.Write, SegmentState.Error],
      ]);
      expect(fx.calls).to.deep.equal([]);
      // Other segments keep working.
      await dev.write(0, pattern(1, 13));
      expect((await dev.read(0, 1)).equals(pattern(1, 13))).to.equal(true);
    });

    it('a failing container fails the piece and reports state error with the detail', async () => {
      make();
      fx.drivers[C1]!.failWith = Object.assign(new Error('EIO: i/o error'), { code: 'EIO' });
      const e = (await rejects(dev.read(0, 1))) as VdiskIoError;
      expect(e.kind).to.equal('read-error');
      expect(sink.faults[0]).to.include({ segment: 0, op: IoOp.Read, state: SegmentState.Error });
      expect(sink.faults[0]?.detail).to.contain('EIO');
    });

    it('an unreachable container (EUNREACHABLE, or a transport error) fails the piece retryably, 0B/08/00, and reports no error fault', async () => {
      make();
      fx.drivers[C1]!.failWith = new ContainerIoError('read', 'iscsi://st1:3260/iqn.x/0', 3 * SEG, 'EUNREACHABLE', 'target away past the hold timeout');
      const e = (await rejects(dev.read(0, 1))) as VdiskIoError;
      expect([e.kind, e.sense]).to.deep.equal(['unreachable', { key: 0x0b, asc: 0x08, ascq: 0x00 }]);
      fx.drivers[C1]!.failWith = new TransportError('unreachable', 'connection lost');
      const w = (await rejects(dev.write(0, pattern(1, 3)))) as VdiskIoError;
      expect(w.kind).to.equal('unreachable');
      const f = (await rejects(dev.flush())) as VdiskIoError;
      expect(f.kind).to.equal('unreachable');
      expect(sink.faults).to.deep.equal([]);
      // Back: the same segment serves again, nothing was marked.
      fx.drivers[C1]!.failWith = null;
      await dev.write(0, pattern(1, 4));
      expect((await dev.read(0, 1)).equals(pattern(1, 4))).to.equal(true);
    });

    it('fencing makes every segment fault until a whole table is installed', async () => {
      make({ holdTimeoutMs: 30 });
      dev.fence();
      expect((await rejects(dev.read(0, 1))).message).to.match(/not-ready|held/);
      expect(sink.faults[0]).to.include({ segment: 0, state: SegmentState.Invalid });
      await dev.installTable(table(1)); // same version lifts the fence
      expect(dev.fenced).to.equal(false);
      await dev.read(0, 1);
    });
  });

  describe('table installation', () => {
    it('in-flight I/O finishes under the old table, new I/O waits, unchanged segments keep flowing', async () => {
      make();
      const t = dev.table;
      const c1 = fx.drivers[C1]!;
      const hold = new Latch();
      c1.holdWrites = hold;
      const order: string[] = [];
      const old = pattern(4, 14);
      const w1 = dev.write(10, old).then(() => order.push('w1 done')); // seg 0 -> c1@3, held in the driver
      await settle();
      expect(fx.calls.map((c) => c.op)).to.deep.equal(['write']);

      // Segment 0 moves to c2@7 (a migration's remap).
      const installed = dev
        .installTable(next(t, (n) => n.set(0, { state: SegmentState.Normal, container: C2, offset: 7 })))
        .then(() => order.push('installed'));
      await settle();
      expect(order).to.deep.equal([]); // still draining w1

      const fresh = pattern(4, 15);
      const w2 = dev.write(10, fresh).then(() => order.push('w2 done'));
      await settle();
      expect(fx.calls.filter((c) => c.container === C2)).to.deep.equal([]); // w2 waits
      expect(dev.heldCount).to.equal(1);

      // Segment 1 did not change: I/O to it flows during the install.
      c1.holdWrites = null;
      await dev.write(BPS, pattern(1, 16));
      expect((await dev.read(BPS, 1)).equals(pattern(1, 16))).to.equal(true);
      expect(order).to.deep.equal([]);

      hold.open();
      await Promise.all([w1, installed, w2]);
      // The install resolves once w1's container write is done (w1's own
      // completion may be reported a tick later); w2 runs only after it.
      expect(order.slice().sort()).to.deep.equal(['installed', 'w1 done', 'w2 done']);
      expect(order[2]).to.equal('w2 done');
      expect(raw(fx.paths[C1]!, 3, 10 * BS, 4 * BS).equals(old)).to.equal(true);
      expect(raw(fx.paths[C2]!, 7, 10 * BS, 4 * BS).equals(fresh)).to.equal(true);
      expect(dev.version).to.equal(2);
    });

    it('an install that changes nothing in flight resolves at once', async () => {
      make();
      const c1 = fx.drivers[C1]!;
      const hold = new Latch();
      c1.holdWrites = hold;
      const w = dev.write(3 * BPS, pattern(1, 17)); // seg 3, held in the driver
      await settle();
      await dev.installTable(next(dev.table, (n) => n.set(2, { state: SegmentState.Normal, container: C2, offset: 2 })));
      expect(dev.version).to.equal(2);
      hold.open();
      await w;
    });

    it('applies deltas and refuses a version gap before holding anything', async () => {
      make();
      const t = dev.table.clone();
      const n = next(t, (x) => {
        x.set(2, { state: SegmentState.Normal, container: C2, offset: 3 });
        x.resize(10);
      });
      const d = diff(t, n);
      await dev.applyDelta(d);
      expect(dev.version).to.equal(2);
      expect(dev.blockCount).to.equal(10 * BPS);
      expect(dev.table.get(2)).to.deep.equal({ state: SegmentState.Normal, container: C2, offset: 3 });
      await dev.write(2 * BPS, pattern(1, 18));
      expect(raw(fx.paths[C2]!, 3, 0, BS).equals(pattern(1, 18))).to.equal(true);
      const gap = await rejects(dev.applyDelta({ ...d, fromVersion: 5, toVersion: 6 }));
      expect(gap).to.be.instanceOf(VersionGapError);
      await dev.read(0, 1); // nothing left suspended
    });

    it('applies a delta at once when nothing is in flight on its segments, and declines while something is', async () => {
      make();
      const c1 = fx.drivers[C1]!;
      const hold = new Latch();
      c1.holdWrites = hold;
      const w = dev.write(3 * BPS, pattern(1, 21)); // seg 3, held in the driver
      await settle();
      // Segment 2 has nothing in flight (I/O on segment 3 does not count): applied in this turn.
      const t1 = dev.table.clone();
      const d1 = diff(t1, next(t1, (x) => x.set(2, { state: SegmentState.Normal, container: C2, offset: 2 })));
      expect(dev.applyDeltaNow(d1)).to.equal(true);
      expect(dev.version).to.equal(2);
      expect(dev.table.get(2)).to.deep.equal({ state: SegmentState.Normal, container: C2, offset: 2 });
      // Segment 3 has the held write: declined with nothing changed; applyDelta drains it.
      const t2 = dev.table.clone();
      const d2 = diff(t2, next(t2, (x) => x.set(3, { state: SegmentState.Normal, container: C2, offset: 4 })));
      expect(dev.applyDeltaNow(d2)).to.equal(false);
      expect(dev.version).to.equal(2);
      let applied = false;
      const p = dev.applyDelta(d2).then(() => (applied = true));
      await settle();
      expect(applied).to.equal(false);
      // While that install waits, a delta on an idle segment must queue behind it, not overtake it.
      const d3 = { ...diff(t2, next(t2, (x) => x.set(2, { state: SegmentState.Zero }))), fromVersion: 3, toVersion: 4 };
      expect(dev.applyDeltaNow(d3)).to.equal(false);
      hold.open();
      await Promise.all([w, p]);
      expect(dev.version).to.equal(3);
      expect(raw(fx.paths[C1]!, 0, 0, BS).equals(pattern(1, 21))).to.equal(true);
      expect(dev.applyDeltaNow(d3)).to.equal(true);
      expect(dev.version).to.equal(4);
      // Checks as applyDelta's: a gap throws before anything changes.
      expect(() => dev.applyDeltaNow({ ...d3, fromVersion: 7, toVersion: 8 })).to.throw(VersionGapError);
      expect(dev.version).to.equal(4);
    });

    it('a held I/O waiting for a segment applyDeltaNow changes is woken and runs under the new table', async () => {
      make();
      // Segment 6 is invalid: a write there faults and is held until a table arrives.
      sink.onFault = () => Promise.resolve({ action: 'wait' });
      const w = dev.write(6 * BPS, pattern(1, 22));
      await settle();
      expect(sink.faults.length).to.equal(1);
      expect(dev.heldCount).to.equal(1);
      const t = dev.table.clone();
      expect(dev.applyDeltaNow(diff(t, next(t, (x) => x.set(6, { state: SegmentState.Normal, container: C2, offset: 5 }))))).to.equal(true);
      await w;
      expect(raw(fx.paths[C2]!, 5, 0, BS).equals(pattern(1, 22))).to.equal(true);
    });

    it('a shrink waits for I/O beyond the new end and then refuses it', async () => {
      make();
      const c1 = fx.drivers[C1]!;
      const hold = new Latch();
      c1.holdWrites = hold;
      const w = dev.write(3 * BPS, pattern(1, 19)); // seg 3
      await settle();
      let done = false;
      const p = dev.installTable(next(dev.table, (x) => x.resize(3))).then(() => (done = true));
      await settle();
      expect(done).to.equal(false);
      hold.open();
      await Promise.all([w, p]);
      expect(dev.blockCount).to.equal(3 * BPS);
      expect(((await rejects(dev.read(3 * BPS, 1))) as BlockDeviceError).kind).to.equal('out-of-range');
    });

    it('refuses an older table', async () => {
      make();
      const e = await rejects(dev.installTable(table(0)));
      expect(e).to.be.instanceOf(RangeError);
      expect(e.message).to.match(/not newer/);
    });
  });

  describe('unmap and provisioning', () => {
    it('releases whole normal segments and zeroes partial ones in place', async () => {
      make({ release: true });
      const t = dev.table;
      await dev.write(0, pattern(2 * BPS, 20)); // seg 0 and seg 1
      sink.onRelease = async (r) => {
        await dev.installTable(next(t, (n) => n.setRange(r.firstSegment, r.segmentCount, { state: SegmentState.Zero })));
        return { ok: true, version: 2 };
      };
      fx.calls.length = 0;
      await dev.unmap(0, BPS + 16); // all of seg 0, the first 16 blocks of seg 1
      expect(sink.releases).to.deep.equal([{ vdiskId: VDISK, version: 1, firstSegment: 0, segmentCount: 1 }]);
      expect(sink.faults).to.deep.equal([]);
      expect(dev.table.stateOf(0)).to.equal(SegmentState.Zero);
      // Seg 0 (C1 offset 3) is discarded before it is released, so its space comes back as zeros.
      expect(fx.calls.map((c) => [c.op, c.container, c.offset, c.length])).to.have.deep.members([
        ['discard', C1, 3 * SEG, SEG],
        ['discard', C2, 0, 16 * BS],
      ]);
      expect(raw(fx.paths[C1]!, 0, 3 * SEG, SEG).equals(zeros(BPS))).to.equal(true);
      expect(raw(fx.paths[C2]!, 0, 0, 16 * BS).equals(zeros(16))).to.equal(true);
      expect(raw(fx.paths[C2]!, 0, 16 * BS, (BPS - 16) * BS).equals(pattern(2 * BPS, 20).subarray((BPS + 16) * BS))).to.equal(true);
      expect((await dev.read(0, BPS + 16)).equals(zeros(BPS + 16))).to.equal(true);
      expect(await dev.provisioning(0, 100000)).to.deep.equal({ mapped: false, blocks: BPS });
    });

    it('batches consecutive whole segments into one release', async () => {
      const t = table();
      t.set(2, { state: SegmentState.Normal, container: C2, offset: 2 });
      make({ release: true, t });
      sink.onRelease = async (r) => {
        await dev.installTable(next(dev.table, (n) => n.setRange(r.firstSegment, r.segmentCount, { state: SegmentState.Zero })));
        return { ok: true, version: dev.version };
      };
      await dev.unmap(0, 4 * BPS);
      expect(sink.releases.map((r) => [r.firstSegment, r.segmentCount])).to.deep.equal([[0, 4]]);
      expect(dev.table.counts().zero).to.equal(5); // 0-3 and 7
    });

    it('without a release channel whole segments are zeroed in place', async () => {
      make();
      await dev.write(3 * BPS, pattern(BPS, 21));
      fx.calls.length = 0;
      await dev.unmap(3 * BPS, BPS);
      expect(fx.calls.map((c) => [c.op, c.container, c.offset, c.length])).to.deep.equal([['discard', C1, 0, SEG]]);
      expect(raw(fx.paths[C1]!, 0, 0, SEG).equals(zeros(BPS))).to.equal(true);
      expect(dev.table.stateOf(3)).to.equal(SegmentState.Normal);
    });

    it('a released segment is discarded before the release is sent, so reused space reads as zeros', async () => {
      make({ release: true });
      await dev.write(BPS, pattern(BPS, 23)); // seg 1: C2 offset 0
      let atRelease: Buffer | undefined;
      sink.onRelease = async (r) => {
        atRelease = raw(fx.paths[C2]!, 0, 0, SEG);
        await dev.installTable(next(dev.table, (n) => n.setRange(r.firstSegment, r.segmentCount, { state: SegmentState.Zero })));
        return { ok: true, version: dev.version };
      };
      await dev.unmap(BPS, BPS);
      expect(atRelease?.equals(zeros(BPS)), 'container segment zeroed before the controller may reuse it').to.equal(true);
    });

    it('a refused release falls back to zeroing in place', async () => {
      make({ release: true });
      await dev.write(BPS, pattern(BPS, 22));
      sink.onRelease = () => Promise.resolve({ ok: false, version: 0, error: 'not normal here' });
      await dev.unmap(BPS, BPS);
      expect(raw(fx.paths[C2]!, 0, 0, SEG).equals(zeros(BPS))).to.equal(true);
    });

    it('an undelivered release zeroes in place; a lost answer fails NOT READY after the discard that precedes every release', async () => {
      make({ release: true });
      await dev.write(BPS, pattern(BPS, 25));
      sink.onRelease = () => Promise.reject(new Error('controller not reachable'));
      await dev.unmap(BPS, BPS);
      expect(raw(fx.paths[C2]!, 0, 0, SEG).equals(zeros(BPS))).to.equal(true);
      await dev.write(BPS, pattern(BPS, 26));
      fx.calls.length = 0;
      sink.onRelease = () => Promise.reject(new ReleaseLostError('stream broke'));
      const e = await rejects(dev.unmap(BPS, BPS));
      expect((e as BlockDeviceError).kind).to.equal('not-ready');
      // Nothing after the loss: the only container I/O is the discard made before asking.
      expect(fx.calls.map((c) => [c.op, c.container, c.offset, c.length])).to.deep.equal([['discard', C2, 0, SEG]]);
      expect(raw(fx.paths[C2]!, 0, 0, SEG).equals(zeros(BPS))).to.equal(true);
    });

    it('unmapping zero segments needs neither I/O nor a fault', async () => {
      make({ release: true });
      await dev.unmap(2 * BPS, BPS);
      await dev.unmap(7 * BPS + 5, 3);
      await dev.writeZeroes(2 * BPS + 1, 9, false);
      expect(sink.faults).to.deep.equal([]);
      expect(sink.releases).to.deep.equal([]);
      expect(fx.calls).to.deep.equal([]);
    });

    it('write-zeroes without deallocate keeps the space allocated', async () => {
      make({ release: true });
      await dev.write(0, pattern(BPS, 23));
      fx.calls.length = 0;
      await dev.writeZeroes(0, BPS, false);
      expect(fx.calls.map((c) => [c.op, c.container, c.offset, c.length])).to.deep.equal([['zero', C1, 3 * SEG, SEG]]);
      expect(sink.releases).to.deep.equal([]);
      expect((await dev.read(0, BPS)).equals(zeros(BPS))).to.equal(true);
    });

    it('a partial unmap of a no-write segment faults so the controller can make it writable', async () => {
      make({ holdTimeoutMs: 30 });
      const e = await rejects(dev.unmap(4 * BPS + 1, 2));
      expect((e as BlockDeviceError).kind).to.equal('not-ready');
      expect(sink.faults.map((f) => [f.segment, f.op, f.lba, f.blocks, f.state])).to.deep.equal([
        [4, IoOp.Unmap, 4 * BPS + 1, 2, SegmentState.NoWrite],
      ]);
    });

    it('reports zero segments as deallocated and the rest as mapped, in runs', async () => {
      make();
      expect(await dev.provisioning(0, 100000)).to.deep.equal({ mapped: true, blocks: 2 * BPS });
      expect(await dev.provisioning(10, 5)).to.deep.equal({ mapped: true, blocks: 5 });
      expect(await dev.provisioning(2 * BPS + 7, 100000)).to.deep.equal({ mapped: false, blocks: BPS - 7 });
      expect(await dev.provisioning(3 * BPS, 100000)).to.deep.equal({ mapped: true, blocks: 4 * BPS });
      expect(await dev.provisioning(7 * BPS, 100000)).to.deep.equal({ mapped: false, blocks: BPS });
    });
  });

  it('close fails held I/O', async () => {
    make();
    const w = dev.write(2 * BPS, pattern(1, 24));
    await settle();
    await dev.close();
    const e = await rejects(w);
    expect((e as BlockDeviceError).kind).to.equal('not-ready');
    expect(e.message).to.match(/closed/);
  });
});
