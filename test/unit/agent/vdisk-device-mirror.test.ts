// Mirrored segments on the agent's device: writes reach every leg, a failed
// leg is a leg fault held like any other, reads fail over from leg to leg.
import { expect } from 'chai';
import { VdiskIoError, type FaultDecision } from '../../../src/agent/fault.js';
import { MAX_UNFLUSHED, VdiskDevice, type LegHints } from '../../../src/agent/vdisk-device.js';
import { ContainerIoError, type ContainerResolver } from '../../../src/container/driver.js';
import { MappingTable } from '../../../src/table/mapping-table.js';
import { IoOp, SegmentState } from '../../../src/table/segment-state.js';
import { BPS, BS, C1, C2, C3, FakeSink, Latch, SEG, fixture, pattern, raw, rejects, settle, type Fixture } from './device-fixture.js';

const VDISK = '99999999-0000-4000-8000-00000000d15d';
const EIO = (): Error => Object.assign(new Error('EIO: i/o error'), { code: 'EIO' });
const AWAY = (): Error => new ContainerIoError('write', 'iscsi://st2:3260/iqn.x/0', 0, 'EUNREACHABLE', 'target away past the hold timeout');

/**
 * seg 0 normal c1@0 + c2@2 | seg 1 normal c2@0 + c1@2 | seg 2 zero
 * seg 3 normal c1@3 (one copy) | seg 4 normal c1@4 + c2@4 + c3@4
 */
function table(version = 1): MappingTable {
  const t = new MappingTable({ segmentCount: 5, segmentSize: SEG, blockSize: BS, version, name: 'mirror0' });
  t.set(0, { state: SegmentState.Normal, container: C1, offset: 0, legs: [{ container: C2, offset: 2 }] });
  t.set(1, { state: SegmentState.Normal, container: C2, offset: 0, legs: [{ container: C1, offset: 2 }] });
  t.set(3, { state: SegmentState.Normal, container: C1, offset: 3 });
  t.set(4, { state: SegmentState.Normal, container: C1, offset: 4, legs: [{ container: C2, offset: 4 }, { container: C3, offset: 4 }] });
  return t;
}

/** A newer version of `t` with `edit` applied. */
function next(t: MappingTable, edit: (n: MappingTable) => void): MappingTable {
  const n = t.clone();
  edit(n);
  n.bumpVersion();
  return n;
}

describe('agent/VdiskDevice: mirrored segments', () => {
  let fx: Fixture;
  let sink: FakeSink;
  let dev: VdiskDevice;
  /** Containers the resolver calls near, and those it calls unreachable. */
  let near: Set<string>;
  let away: Set<string>;

  function make(opts: { t?: MappingTable; ownerId?: number; hints?: boolean } = {}): VdiskDevice {
    sink = new FakeSink();
    const resolver: ContainerResolver & LegHints =
      opts.hints === false
        ? fx.resolver
        : { get: (id) => fx.resolver.get(id), near: (id) => near.has(id), reachable: (id) => !away.has(id) };
    dev = new VdiskDevice({
      vdiskId: VDISK,
      table: opts.t ?? table(),
      containers: resolver,
      faults: sink,
      holdTimeoutMs: 3000,
      ownerId: opts.ownerId ?? 0,
    });
    return dev;
  }

  /** The controller's answer to a leg fault: the leg dropped in a new table, installed, then RETRY at that version. */
  function dropLegOnFault(): void {
    // One at a time, as the controller's table changes are: each starts from the table installed last.
    let queue: Promise<unknown> = Promise.resolve();
    sink.onFault = (f): Promise<FaultDecision> => {
      const answer = queue.then(async (): Promise<FaultDecision> => {
        const failed = f.failedContainer as string;
        const n = next(dev.table, (t) => {
          const e = t.get(f.segment);
          const legs = [{ container: e.container as string, offset: e.offset }, ...(e.legs ?? [])].filter((l) => l.container !== failed);
          const [first, ...rest] = legs;
          t.set(f.segment, { state: e.state, container: first!.container, offset: first!.offset, legs: rest });
        });
        await dev.installTable(n);
        return { action: 'retry', minVersion: n.version };
      });
      queue = answer.catch(() => undefined);
      return answer;
    };
  }

  /** As the controller's MirrorManager does: a leg fault drops every leg on the failed container (one table change). */
  function dropContainerOnFault(): void {
    let queue: Promise<unknown> = Promise.resolve();
    sink.onFault = (f): Promise<FaultDecision> => {
      const answer = queue.then(async (): Promise<FaultDecision> => {
        const failed = f.failedContainer as string;
        const t = dev.table;
        let legs = false;
        for (let s = 0; s < t.segmentCount; s++) if (t.legCountOf(s) > 1 && t.locationsOf(s).some((l) => l.container === failed)) legs = true;
        // Already dropped (a later leg fault for the container): RETRY at the installed version.
        if (!legs) return { action: 'retry', minVersion: t.version };
        const n = next(t, (x) => {
          for (let s = 0; s < x.segmentCount; s++) {
            const e = x.get(s);
            if (e.container === null || e.legs === undefined) continue;
            const kept = [{ container: e.container, offset: e.offset }, ...e.legs].filter((l) => l.container !== failed);
            const [first, ...rest] = kept;
            x.set(s, { state: e.state, container: first!.container, offset: first!.offset, legs: rest });
          }
        });
        await dev.installTable(n);
        return { action: 'retry', minVersion: n.version };
      });
      queue = answer.catch(() => undefined);
      return answer;
    };
  }

  beforeEach(async () => {
    fx = await fixture(8, 3);
    near = new Set();
    away = new Set();
  });
  afterEach(async () => {
    await dev?.close();
    await fx.cleanup();
  });

  describe('writes', () => {
    it('reach every leg in parallel and complete once all have them', async () => {
      make();
      const latch = new Latch();
      fx.drivers[C1]!.holdWrites = latch;
      fx.drivers[C2]!.holdWrites = latch;
      const data = pattern(8, 1);
      let done = false;
      const w = dev.write(16, data).then(() => (done = true));
      await settle();
      // Both legs started before either finished.
      expect(fx.calls.map((c) => [c.op, c.container, c.offset, c.length])).to.deep.equal([
        ['write', C1, 16 * BS, 8 * BS],
        ['write', C2, 2 * SEG + 16 * BS, 8 * BS],
      ]);
      expect(done).to.equal(false);
      latch.open();
      await w;
      expect(raw(fx.paths[C1]!, 0, 16 * BS, 8 * BS).equals(data)).to.equal(true);
      expect(raw(fx.paths[C2]!, 2, 16 * BS, 8 * BS).equals(data)).to.equal(true);
      expect(sink.faults).to.deep.equal([]);
    });

    it('three legs, FUA passed to each; write zeroes and discard reach every leg', async () => {
      make();
      const data = pattern(4, 2);
      await dev.write(4 * BPS + 8, data, { fua: true });
      for (const c of [C1, C2, C3]) expect(raw(fx.paths[c]!, 4, 8 * BS, 4 * BS).equals(data), c).to.equal(true);
      expect(fx.calls.map((c) => [c.container, c.fua])).to.deep.equal([
        [C1, true],
        [C2, true],
        [C3, true],
      ]);
      fx.calls.length = 0;
      await dev.writeZeroes(4 * BPS + 8, 4, false);
      await dev.writeZeroes(4 * BPS + 8, 4, true); // partial: discarded in place
      expect(fx.calls.map((c) => [c.op, c.container, c.offset])).to.deep.equal([
        ['zero', C1, 4 * SEG + 8 * BS],
        ['zero', C2, 4 * SEG + 8 * BS],
        ['zero', C3, 4 * SEG + 8 * BS],
        ['discard', C1, 4 * SEG + 8 * BS],
        ['discard', C2, 4 * SEG + 8 * BS],
        ['discard', C3, 4 * SEG + 8 * BS],
      ]);
      for (const c of [C1, C2, C3]) expect(raw(fx.paths[c]!, 4, 8 * BS, 4 * BS).equals(Buffer.alloc(4 * BS)), c).to.equal(true);
    });

    it('one leg failing is a leg fault: held, then written on the legs of the new table, GOOD', async () => {
      make();
      fx.drivers[C2]!.failWith = EIO();
      let answer!: (d: FaultDecision) => void;
      sink.onFault = () => new Promise<FaultDecision>((r) => (answer = r));
      const data = pattern(8, 3);
      let done = false;
      const w = dev.write(0, data).then(() => (done = true));
      await settle(10);
      expect(sink.faults).to.have.length(1);
      expect(sink.faults[0]).to.deep.include({ vdiskId: VDISK, version: 1, segment: 0, op: IoOp.Write, lba: 0, blocks: 8, state: SegmentState.Normal, failedContainer: C2 });
      expect(sink.faults[0]?.detail).to.match(/EIO/);
      expect(done).to.equal(false);
      expect(dev.heldCount).to.equal(1);
      // The controller drops the leg on c2 and answers RETRY at that version.
      const n = next(dev.table, (t) => t.set(0, { state: SegmentState.Normal, container: C1, offset: 0 }));
      await dev.installTable(n);
      fx.calls.length = 0;
      answer({ action: 'retry', minVersion: n.version });
      await w;
      expect(fx.calls.map((c) => [c.op, c.container])).to.deep.equal([['write', C1]]);
      expect(raw(fx.paths[C1]!, 0, 0, 8 * BS).equals(data)).to.equal(true);
      expect(sink.faults).to.have.length(1);
    });

    it('leg 0 failing promotes the survivor; an unreachable leg counts as failed too', async () => {
      make();
      dropLegOnFault();
      fx.drivers[C2]!.failWith = AWAY(); // seg 1's leg 0 is on c2
      const data = pattern(BPS, 4);
      await dev.write(BPS, data);
      expect(sink.faults.map((f) => [f.segment, f.failedContainer, f.state])).to.deep.equal([[1, C2, SegmentState.Normal]]);
      expect(dev.table.locationsOf(1)).to.deep.equal([{ container: C1, offset: 2 }]);
      expect(raw(fx.paths[C1]!, 2, 0, SEG).equals(data)).to.equal(true);
    });

    it('two of three legs failing: both reported, the write completes on the third', async () => {
      make();
      dropLegOnFault();
      fx.drivers[C1]!.failWith = EIO();
      fx.drivers[C3]!.failWith = AWAY();
      const data = pattern(2, 5);
      await dev.write(4 * BPS, data);
      expect(sink.faults.map((f) => f.failedContainer).sort()).to.deep.equal([C1, C3].sort());
      expect(raw(fx.paths[C2]!, 4, 0, 2 * BS).equals(data)).to.equal(true);
      expect(dev.table.legCountOf(4)).to.equal(1);
    });

    it('FAIL from the controller ends the held write with its sense', async () => {
      make();
      fx.drivers[C1]!.failWith = EIO();
      sink.onFault = async () => ({ action: 'fail', sense: { key: 0x4, asc: 0x44, ascq: 0 }, reason: 'no copy left to keep' });
      const e = await rejects(dev.write(0, pattern(1, 6)));
      expect(e).to.be.instanceOf(VdiskIoError);
      expect((e as VdiskIoError).message).to.match(/no copy left to keep/);
      expect(sink.faults.map((f) => f.failedContainer)).to.deep.equal([C1]);
    });

    it('every leg failing is what one copy failing is: an error fault and MEDIUM ERROR; unreachable everywhere: retryable, no fault', async () => {
      make();
      fx.drivers[C1]!.failWith = EIO();
      fx.drivers[C2]!.failWith = EIO();
      const e = await rejects(dev.write(0, pattern(1, 7)));
      expect((e as VdiskIoError).kind).to.equal('write-error');
      expect(sink.faults.map((f) => [f.state, f.failedContainer])).to.deep.equal([[SegmentState.Error, undefined]]);
      sink.faults.length = 0;
      fx.drivers[C1]!.failWith = AWAY();
      fx.drivers[C2]!.failWith = AWAY();
      const u = await rejects(dev.write(0, pattern(1, 7)));
      expect((u as VdiskIoError).kind).to.equal('unreachable');
      expect(sink.faults).to.deep.equal([]);
    });

    it('a table install waits for every leg of a piece in flight', async () => {
      make();
      const latch = new Latch();
      fx.drivers[C2]!.holdWrites = latch;
      const w = dev.write(0, pattern(8, 8));
      await settle();
      let installed = false;
      const n = next(dev.table, (t) => t.set(0, { state: SegmentState.NoWrite, container: C1, offset: 0, legs: [{ container: C2, offset: 2 }] }));
      const inst = dev.installTable(n).then(() => (installed = true));
      await settle(10);
      expect(installed).to.equal(false);
      latch.open();
      await Promise.all([w, inst]);
      expect(installed).to.equal(true);
    });
  });

  describe('reads', () => {
    it('go to one leg: a near one first, else spread by segment and agent number', async () => {
      make();
      await dev.write(0, pattern(BPS, 9)); // seg 0: c1@0 + c2@2
      fx.calls.length = 0;
      await dev.read(0, 8); // (0 + 0) % 2: leg 0
      near.add(C2);
      await dev.read(0, 8); // near: c2
      near.clear();
      await dev.close();
      make({ ownerId: 1 });
      await dev.read(0, 8); // (0 + 1) % 2: leg 1
      expect(fx.calls.map((c) => [c.op, c.container, c.offset])).to.deep.equal([
        ['read', C1, 0],
        ['read', C2, 2 * SEG],
        ['read', C2, 2 * SEG],
      ]);
    });

    it('skip a leg whose container is unreachable now, near or not', async () => {
      make();
      near.add(C1);
      away.add(C1);
      await dev.read(0, 8);
      await dev.read(BPS, 8); // seg 1 spreads to its leg 1, on c1: away, so leg 0
      expect(fx.calls.map((c) => [c.container, c.offset])).to.deep.equal([
        [C2, 2 * SEG],
        [C2, 0],
      ]);
      expect(sink.faults).to.deep.equal([]);
    });

    it('a failed leg read is retried on the next leg; the failed leg is reported without holding the read', async () => {
      make(); // the sink never answers: the read must not wait for it
      const data = pattern(16, 10);
      await dev.write(BPS + 8, data); // seg 1: c2@0 + c1@2
      fx.calls.length = 0;
      fx.drivers[C1]!.failWith = EIO(); // seg 1 spreads to its leg 1, on c1
      const got = await dev.read(BPS + 8, 16);
      expect(got.equals(data)).to.equal(true);
      expect(fx.calls.map((c) => [c.op, c.container])).to.deep.equal([
        ['read', C1],
        ['read', C2],
      ]);
      // The read's leg fault, then the write before it (not flushed yet) as one the failed copy may have lost.
      expect(sink.faults.map((f) => [f.segment, f.op, f.state, f.failedContainer])).to.deep.equal([
        [1, IoOp.Read, SegmentState.Normal, C1],
        [1, IoOp.Write, SegmentState.Normal, C1],
      ]);
      expect(dev.heldCount).to.equal(0);
    });

    it('every leg failing is today\'s read error; unreachable everywhere is retryable', async () => {
      make();
      fx.drivers[C1]!.failWith = EIO();
      fx.drivers[C2]!.failWith = AWAY();
      const e = await rejects(dev.read(0, 8));
      expect((e as VdiskIoError).kind).to.equal('read-error');
      expect(sink.faults.map((f) => [f.state, f.failedContainer])).to.deep.equal([[SegmentState.Error, undefined]]);
      fx.drivers[C1]!.failWith = AWAY();
      sink.faults.length = 0;
      const u = await rejects(dev.read(0, 8));
      expect((u as VdiskIoError).kind).to.equal('unreachable');
      expect(sink.faults).to.deep.equal([]);
    });

    it('without hints (a plain resolver) reads spread and still fail over', async () => {
      make({ hints: false });
      await dev.write(0, pattern(8, 11));
      fx.calls.length = 0;
      fx.drivers[C1]!.failWith = EIO();
      expect((await dev.read(0, 8)).equals(pattern(8, 11))).to.equal(true);
      expect(fx.calls.map((c) => c.container)).to.deep.equal([C1, C2]);
    });
  });

  describe('compare and write', () => {
    it('compares against one leg and writes every leg; a miscompare writes nothing', async () => {
      make();
      const old = pattern(1, 12);
      await dev.write(0, old);
      fx.calls.length = 0;
      const data = pattern(1, 13);
      expect(await dev.compareAndWrite(0, old, data)).to.equal(-1);
      expect(fx.calls.map((c) => [c.op, c.container])).to.deep.equal([
        ['read', C1],
        ['write', C1],
        ['write', C2],
      ]);
      expect(raw(fx.paths[C2]!, 2, 0, BS).equals(data)).to.equal(true);
      fx.calls.length = 0;
      const at = await dev.compareAndWrite(0, old, pattern(1, 14));
      expect(at).to.be.at.least(0);
      expect(fx.calls.map((c) => c.op)).to.deep.equal(['read']);
    });

    it('a failed compare read fails over; a failed leg write is held as a leg fault', async () => {
      make();
      dropLegOnFault();
      const old = pattern(1, 15);
      await dev.write(0, old);
      fx.drivers[C1]!.failWith = EIO();
      const data = pattern(1, 16);
      expect(await dev.compareAndWrite(0, old, data)).to.equal(-1);
      // The read's failure reported (not held), then the write's failure held and answered.
      expect(sink.faults.map((f) => [f.op, f.failedContainer])).to.deep.equal([
        [IoOp.CompareAndWrite, C1],
        [IoOp.CompareAndWrite, C1],
      ]);
      expect(dev.table.locationsOf(0)).to.deep.equal([{ container: C2, offset: 2 }]);
      expect(raw(fx.paths[C2]!, 2, 0, BS).equals(data)).to.equal(true);
    });
  });

  describe('flush', () => {
    it('a leg container failing its flush is a leg fault, held; once the controller dropped its legs the flush is GOOD', async () => {
      make();
      dropContainerOnFault();
      await dev.write(0, pattern(8, 18));
      fx.drivers[C2]!.failWith = AWAY();
      await dev.flush();
      // The write this flush was for, at risk on c2; then the flush's own leg fault (a verify: it changes no data).
      expect(sink.faults.map((f) => [f.segment, f.op, f.lba, f.blocks, f.state, f.failedContainer])).to.deep.equal([
        [0, IoOp.Write, 0, BPS, SegmentState.Normal, C2],
        [0, IoOp.Verify, 0, BPS, SegmentState.Normal, C2],
      ]);
      expect(sink.faults[1]?.detail).to.match(/^SYNCHRONIZE CACHE: .*target away/);
      expect([0, 1, 4].map((s) => dev.table.legCountOf(s))).to.deep.equal([1, 1, 2]);
      // Still failing, but no segment uses it: forgotten, no new fault.
      await dev.flush();
      expect(sink.faults).to.have.length(2);
    });

    it('a container that is away and that no segment uses is not asked (its driver would hold every flush)', async () => {
      make();
      await dev.write(0, pattern(8, 19)); // c1 and c2 dirty
      away.add(C2);
      fx.calls.length = 0;
      await dev.flush();
      // Still a leg of segments 0, 1 and 4: flushed (it may only be reconnecting).
      expect(fx.calls.map((c) => c.container).sort()).to.deep.equal([C1, C2, C3]);
      const n = next(dev.table, (t) => {
        t.set(0, { state: SegmentState.Normal, container: C1, offset: 0 });
        t.set(1, { state: SegmentState.Normal, container: C1, offset: 2 });
        t.set(4, { state: SegmentState.Normal, container: C1, offset: 4, legs: [{ container: C3, offset: 4 }] });
      });
      await dev.installTable(n);
      fx.calls.length = 0;
      await dev.flush();
      expect(fx.calls.map((c) => c.container).sort()).to.deep.equal([C1, C3]);
      expect(sink.faults).to.deep.equal([]);
    });

    it('a container that is some segment\'s only copy fails the flush as with one copy', async () => {
      make();
      fx.drivers[C1]!.failWith = EIO(); // seg 3's only copy
      dropContainerOnFault();
      const e = await rejects(dev.flush());
      expect((e as VdiskIoError).kind).to.equal('write-error');
      // Its mirrored legs were dropped first (leg fault), but seg 3 still needs it.
      expect(sink.faults.map((f) => f.failedContainer)).to.deep.equal([C1]);
      expect(dev.table.get(3)).to.deep.include({ container: C1, offset: 3 });
    });
  });

  describe('writes not yet flushed', () => {
    it('a failed leg reports the segments with a leg there written since the last flush (not FUA ones, not flushed ones)', async () => {
      make();
      dropContainerOnFault();
      await dev.write(BPS, pattern(1, 20)); // seg 1
      await dev.flush(); // durable everywhere
      await dev.write(4 * BPS, pattern(1, 21)); // seg 4: c1, c2, c3
      await dev.write(BPS + 1, pattern(1, 22), { fua: true }); // seg 1 again, but FUA
      await dev.write(3 * BPS, pattern(1, 23)); // seg 3: one copy, never reported
      fx.drivers[C2]!.failWith = EIO();
      await dev.write(0, pattern(1, 24)); // seg 0's leg on c2 fails: held
      expect(sink.faults.map((f) => [f.segment, f.failedContainer, f.op, f.lba, f.blocks])).to.deep.equal([
        [4, C2, IoOp.Write, 4 * BPS, BPS],
        [0, C2, IoOp.Write, 0, 1],
      ]);
      expect(sink.faults[0]?.detail).to.match(/since the last flush/);
    });

    it('records at most MAX_UNFLUSHED segments between flushes (an initiator that never flushes)', async () => {
      const segs = MAX_UNFLUSHED + 4;
      const t = new MappingTable({ segmentCount: segs, segmentSize: SEG, blockSize: BS, version: 1, name: 'wide' });
      // Every segment on the same two locations: only the bookkeeping matters here.
      t.setRange(0, segs, { state: SegmentState.Normal, container: C1, offset: 0, legs: [{ container: C2, offset: 0 }] }, 0);
      make({ t });
      dropContainerOnFault();
      const one = pattern(1, 27);
      for (let s = 0; s < segs; s++) await dev.write(s * BPS, one);
      fx.drivers[C2]!.failWith = EIO();
      await dev.write(0, one);
      // Segment 0's own leg fault, and the other recorded segments: 1 .. MAX_UNFLUSHED - 1.
      expect(sink.faults).to.have.length(MAX_UNFLUSHED);
      expect(sink.faults.filter((f) => f.segment >= MAX_UNFLUSHED)).to.deep.equal([]);
    });

    it('a flush that fails keeps its segments for the report', async () => {
      const t = new MappingTable({ segmentCount: 4, segmentSize: SEG, blockSize: BS, version: 1, name: 'mirror1' });
      t.set(0, { state: SegmentState.Normal, container: C2, offset: 0, legs: [{ container: C3, offset: 0 }] });
      t.set(1, { state: SegmentState.Normal, container: C2, offset: 1, legs: [{ container: C3, offset: 1 }] });
      t.set(3, { state: SegmentState.Normal, container: C1, offset: 0 });
      make({ t });
      dropContainerOnFault();
      await dev.write(0, pattern(1, 25)); // seg 0
      fx.drivers[C1]!.failWith = EIO(); // seg 3's only copy: the flush fails as with one copy
      await rejects(dev.flush());
      fx.drivers[C1]!.failWith = null;
      fx.drivers[C3]!.failWith = EIO();
      await dev.write(BPS, pattern(1, 26)); // seg 1's leg on c3 fails
      expect(sink.faults.map((f) => [f.segment, f.failedContainer])).to.deep.equal([
        [0, C3],
        [1, C3],
      ]);
    });
  });

  it('one-copy segments next to mirrored ones do what they always did', async () => {
    make();
    const data = pattern(8, 17);
    await dev.write(3 * BPS, data);
    expect(fx.calls.map((c) => [c.op, c.container, c.offset])).to.deep.equal([['write', C1, 3 * SEG]]);
    fx.drivers[C1]!.failWith = EIO();
    const e = await rejects(dev.read(3 * BPS, 8));
    expect((e as VdiskIoError).kind).to.equal('read-error');
    expect(sink.faults.map((f) => [f.state, f.failedContainer])).to.deep.equal([[SegmentState.Error, undefined]]);
  });
});
