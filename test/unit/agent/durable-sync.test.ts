// The agent's half of the durability contract: a SYNCHRONIZE CACHE or FUA
// write on a vdisk whose table holds a lazily committed version (a thin
// allocation not yet durable at the controller) completes only once the
// controller says that version is durable; the controller's answers are
// played by a fake SyncSink (device tests) or a fake link (channel tests).
import { expect } from 'chai';
import type { LinkEventName, LinkEvents } from '../../../src/agent/controller-link.js';
import { LazyVersions, SyncChannel, wireSyncSink, type SyncAnswer, type SyncLink, type SyncSink } from '../../../src/agent/durable-sync.js';
import { VdiskIoError } from '../../../src/agent/fault.js';
import { VdiskDevice } from '../../../src/agent/vdisk-device.js';
import { MappingTable } from '../../../src/table/mapping-table.js';
import { SegmentState } from '../../../src/table/segment-state.js';
import type { AgentMessage, SyncRequestMsg } from '../../../src/wire/proto-types.js';
import { BPS, BS, C1, FakeSink, SEG, fixture, pattern, rejects, settle, type Fixture } from './device-fixture.js';

const VDISK = '99999999-0000-4000-8000-0000000d0ab1';

/** A request the fake controller has not answered yet. */
interface Asked {
  vdiskId: string;
  version: number;
  signal: AbortSignal;
  answer(a: Partial<SyncAnswer>): void;
}

/** The controller's side of SyncRequest: records requests, answers when the test says. */
class FakeSyncSink implements SyncSink {
  readonly asked: Asked[] = [];

  sync(vdiskId: string, version: number, signal: AbortSignal): Promise<SyncAnswer> {
    return new Promise<SyncAnswer>((resolve, reject) => {
      signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
      this.asked.push({ vdiskId, version, signal, answer: (a) => resolve({ ok: true, durableVersion: version, reason: '', ...a }) });
    });
  }
}

/** A controller link that is up or down, records what is sent, and can emit events. */
class FakeLink implements SyncLink {
  up = true;
  readonly sent: AgentMessage[] = [];
  readonly #listeners = new Map<LinkEventName, ((arg: never) => void)[]>();

  on<K extends LinkEventName>(event: K, fn: (arg: LinkEvents[K]) => void): this {
    const list = this.#listeners.get(event) ?? [];
    list.push(fn as (arg: never) => void);
    this.#listeners.set(event, list);
    return this;
  }

  emit<K extends LinkEventName>(event: K, arg: LinkEvents[K]): void {
    for (const fn of this.#listeners.get(event) ?? []) (fn as (a: LinkEvents[K]) => void)(arg);
  }

  send(msg: AgentMessage): boolean {
    if (!this.up) return false;
    this.sent.push(msg);
    return true;
  }

  requests(): SyncRequestMsg[] {
    return this.sent.flatMap((m) => (m.body === 'syncRequest' ? [m.syncRequest] : []));
  }

  welcome(): void {
    this.up = true;
    this.emit('welcome', { controllerId: 'c', agentName: 'a', heartbeatIntervalMs: 1000, ackTimeoutMs: 1000, holdTimeoutMs: 1000, rejectedContainers: [], leaseMs: 0 });
  }
}

/** seg 0, 1 normal on c1 at 0, 1; the rest zero. */
function table(version: number): MappingTable {
  const t = new MappingTable({ segmentCount: 4, segmentSize: SEG, blockSize: BS, version, name: 'thin0' });
  t.set(0, { state: SegmentState.Normal, container: C1, offset: 0 });
  t.set(1, { state: SegmentState.Normal, container: C1, offset: 1 });
  return t;
}

/** The delta that allocates segment `seg` at container offset `seg` (the thin first write). */
function allocate(from: number, seg: number): { fromVersion: number; toVersion: number; segmentCount: number; extents: { first: number; count: number; state: SegmentState; container: string; offset: number }[] } {
  return { fromVersion: from, toVersion: from + 1, segmentCount: 4, extents: [{ first: seg, count: 1, state: SegmentState.Normal, container: C1, offset: seg }] };
}

/** Waits (bounded) until `cond` holds: container flushes are real fsyncs, slow on a busy machine. */
async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function isSense(e: Error, key: number, asc: number, ascq: number): boolean {
  return e instanceof VdiskIoError && e.sense.key === key && e.sense.asc === asc && e.sense.ascq === ascq;
}

describe('agent: lazy table versions (LazyVersions)', () => {
  it('asks nothing while every version came non-lazy', () => {
    const lv = new LazyVersions(VDISK);
    lv.wholeTable(1, false, 0);
    lv.durableDelta(2);
    lv.durableDelta(3);
    expect(lv.due(3)).to.equal(0);
  });

  it('asks for the newest lazy version installed, and no more once a non-lazy delta follows it', () => {
    const lv = new LazyVersions(VDISK);
    lv.wholeTable(1, false, 0);
    lv.lazyDelta(2);
    expect(lv.due(1), 'not installed yet: the table held is durable').to.equal(0);
    expect(lv.due(2)).to.equal(2);
    lv.lazyDelta(3);
    expect(lv.due(3)).to.equal(3);
    lv.durableDelta(4);
    expect(lv.due(4)).to.equal(0);
  });

  it('keeps a lazy version held when a whole table replaces it, until the controller answers for it', async () => {
    const sink = new FakeSyncSink();
    const lv = new LazyVersions(VDISK, { sink, backgroundAskMs: 0 });
    lv.wholeTable(1, false, 0);
    lv.lazyDelta(2);
    // E.g. the controller lost version 2 (power loss) and reconciled with version 3.
    lv.wholeTable(3, false, 2);
    lv.tableInstalled();
    expect(lv.due(3)).to.equal(2);
    const w = lv.wait(2);
    expect(sink.asked.map((a) => a.version)).to.deep.equal([2]);
    sink.asked[0]!.answer({ ok: false, durableVersion: 1, reason: 'version 2 lost' });
    expect(await w.outcome).to.deep.equal({ kind: 'lost', reason: 'version 2 lost' });
    w.leave();
    expect(lv.due(3), 'reported once, then settled').to.equal(0);
  });

  it('an answer for a newer version does not settle the orphan: only one for the orphan itself', async () => {
    const sink = new FakeSyncSink();
    const lv = new LazyVersions(VDISK, { sink, backgroundAskMs: 0 });
    lv.wholeTable(1, false, 0);
    lv.lazyDelta(2);
    lv.wholeTable(3, true, 2);
    lv.tableInstalled();
    lv.lazyDelta(4);
    const newer = lv.wait(4, true);
    sink.asked[0]!.answer({ ok: true });
    expect((await newer.outcome).kind).to.equal('durable');
    newer.leave();
    expect(lv.due(4)).to.equal(2);
    // A lost answer seen by no flush (the background ask) does not settle it either.
    const bg = lv.wait(2, true);
    sink.asked[1]!.answer({ ok: false, reason: 'lost' });
    expect((await bg.outcome).kind).to.equal('lost');
    bg.leave();
    expect(lv.due(4)).to.equal(2);
    const flush = lv.wait(2);
    sink.asked[2]!.answer({ ok: false, reason: 'lost' });
    expect((await flush.outcome).kind).to.equal('lost');
    flush.leave();
    expect(lv.due(4)).to.equal(0);
  });

  it('gives the request up once nobody waits for it', async () => {
    const sink = new FakeSyncSink();
    const lv = new LazyVersions(VDISK, { sink, backgroundAskMs: 0 });
    lv.lazyDelta(5);
    const a = lv.wait(5);
    const b = lv.wait(5);
    expect(sink.asked).to.have.length(1);
    a.leave();
    expect(sink.asked[0]!.signal.aborted).to.equal(false);
    b.leave();
    expect(sink.asked[0]!.signal.aborted).to.equal(true);
    expect(lv.asking).to.equal(0);
    expect((await a.outcome).kind).to.equal('unanswered');
    // A new flush asks again.
    lv.wait(5).leave();
    expect(sink.asked).to.have.length(2);
  });

  it('asks in the background about the newest lazy version, once per interval, and stops when closed', async () => {
    const sink = new FakeSyncSink();
    const lv = new LazyVersions(VDISK, { sink, backgroundAskMs: 20 });
    lv.wholeTable(1, false, 0);
    lv.lazyDelta(2);
    lv.lazyDelta(3);
    await until(() => sink.asked.length === 1, 'the background ask');
    expect(sink.asked[0]!.version).to.equal(3);
    lv.lazyDelta(4);
    sink.asked[0]!.answer({ ok: true });
    await until(() => lv.confirmed === 3, 'the answer');
    await until(() => sink.asked.length === 2, 'the next background ask');
    expect(sink.asked[1]!.version).to.equal(4);
    lv.close();
    expect(sink.asked[1]!.signal.aborted, 'given up at close').to.equal(true);
    expect(lv.due(4)).to.equal(4);
  });

  it('does not take an ok below the version asked for as durability', async () => {
    const sink = new FakeSyncSink();
    const lv = new LazyVersions(VDISK, { sink, backgroundAskMs: 0 });
    lv.lazyDelta(5);
    const w = lv.wait(5);
    sink.asked[0]!.answer({ ok: true, durableVersion: 4 });
    expect((await w.outcome).kind).to.equal('unanswered');
    expect(lv.due(5)).to.equal(5);
  });
});

describe('agent: SyncChannel (SyncRequest over the controller link)', () => {
  it('sends a request and resolves with the reply of the same id', async () => {
    const link = new FakeLink();
    const sink = wireSyncSink(new SyncChannel(link));
    const asked = sink.sync(VDISK, 7, new AbortController().signal);
    const [req] = link.requests();
    expect(req).to.include({ vdiskId: VDISK, version: 7 });
    link.emit('syncReply', { requestId: req!.requestId + 100, ok: false, durableVersion: 0, reason: 'not this one' });
    link.emit('syncReply', { requestId: req!.requestId, ok: true, durableVersion: 8, reason: '' });
    expect(await asked).to.deep.equal({ ok: true, durableVersion: 8, reason: '' });
  });

  it('holds a request while the controller is away and sends it again (same id) on the next stream', async () => {
    const link = new FakeLink();
    const channel = new SyncChannel(link);
    link.up = false;
    const asked = channel.request(VDISK, 3, new AbortController().signal);
    expect(link.requests()).to.have.length(0);
    expect(channel.held).to.equal(1);
    link.welcome();
    const [req] = link.requests();
    expect(req).to.include({ vdiskId: VDISK, version: 3 });
    // Sent, then the stream broke before the answer: sent again on the next one.
    link.emit('disconnected', { reason: 'gone', retryInMs: 10, wasWelcomed: true });
    link.welcome();
    const again = link.requests();
    expect(again).to.have.length(2);
    expect(again[1]!.requestId).to.equal(req!.requestId);
    link.emit('syncReply', { requestId: req!.requestId, ok: true, durableVersion: 3, reason: '' });
    expect((await asked).ok).to.equal(true);
    expect(channel.held).to.equal(0);
  });

  it('forgets a request whose signal aborts, and rejects every one on close', async () => {
    const link = new FakeLink();
    const channel = new SyncChannel(link);
    const ac = new AbortController();
    const a = channel.request(VDISK, 3, ac.signal);
    const b = channel.request(VDISK, 4, new AbortController().signal);
    ac.abort(new Error('hold timeout'));
    expect((await rejects(a)).message).to.match(/hold timeout/);
    expect(channel.held).to.equal(1);
    channel.close();
    expect((await rejects(b)).message).to.match(/shutting down/);
    expect(channel.held).to.equal(0);
  });
});

describe('agent: VdiskDevice flush and FUA writes wait for lazy versions to be durable', () => {
  let fx: Fixture;
  let dev: VdiskDevice;
  let sync: FakeSyncSink;
  let lazy: LazyVersions;

  function make(holdTimeoutMs = 5000): VdiskDevice {
    sync = new FakeSyncSink();
    lazy = new LazyVersions(VDISK, { sink: sync, name: 'thin0', backgroundAskMs: 0 });
    lazy.wholeTable(1, false, 0);
    dev = new VdiskDevice({ vdiskId: VDISK, table: table(1), containers: fx.resolver, faults: new FakeSink(), holdTimeoutMs, lazyVersions: lazy });
    return dev;
  }

  /** Segment 2 allocated by a lazily committed version 2, as the agent applies it. */
  async function lazyAllocation(): Promise<void> {
    lazy.lazyDelta(2);
    await dev.applyDelta(allocate(1, 2));
  }

  beforeEach(async () => {
    fx = await fixture(8);
  });
  afterEach(async () => {
    await dev?.close();
    await fx.cleanup();
  });

  it('a non-lazy table never asks: flush and FUA writes complete at once', async () => {
    make();
    await dev.write(0, pattern(4, 1), { fua: true });
    await dev.flush();
    lazy.durableDelta(2);
    await dev.applyDelta(allocate(1, 2));
    await dev.write(2 * BPS, pattern(1, 2), { fua: true });
    await dev.flush();
    expect(sync.asked).to.have.length(0);
  });

  it('a write without FUA does not ask; SYNCHRONIZE CACHE after it asks for the lazy version and completes on ok', async () => {
    make();
    await lazyAllocation();
    await dev.write(2 * BPS, pattern(1, 3));
    expect(sync.asked).to.have.length(0);
    let done = false;
    const flushed = dev.flush().then(() => {
      done = true;
    });
    await until(() => sync.asked.length > 0, 'the request');
    expect(fx.calls.some((c) => c.op === 'flush'), 'the data is flushed first').to.equal(true);
    expect(sync.asked.map((a) => [a.vdiskId, a.version])).to.deep.equal([[VDISK, 2]]);
    expect(done).to.equal(false);
    expect(dev.heldCount, 'counted as held (heartbeats)').to.equal(1);
    sync.asked[0]!.answer({ ok: true, durableVersion: 2 });
    await flushed;
    // Confirmed: the next flush does not ask.
    await dev.flush();
    expect(sync.asked).to.have.length(1);
  });

  it('a FUA write completes once the version is durable', async () => {
    make();
    await lazyAllocation();
    let done = false;
    const written = dev.write(2 * BPS, pattern(2, 4), { fua: true }).then(() => {
      done = true;
    });
    await until(() => sync.asked.length > 0, 'the request');
    expect(fx.calls.filter((c) => c.op === 'write').map((c) => c.fua)).to.deep.equal([true]);
    expect(sync.asked.map((a) => a.version)).to.deep.equal([2]);
    expect(done).to.equal(false);
    sync.asked[0]!.answer({ ok: true, durableVersion: 3 });
    await written;
  });

  it('a FUA COMPARE AND WRITE that wrote waits too', async () => {
    make();
    await lazyAllocation();
    const cw = dev.compareAndWrite(2 * BPS, Buffer.alloc(BS), pattern(1, 5), { fua: true });
    await until(() => sync.asked.length > 0, 'the request');
    expect(sync.asked.map((a) => a.version)).to.deep.equal([2]);
    sync.asked[0]!.answer({ ok: true });
    expect(await cw).to.equal(-1);
  });

  it('ok=false fails the flush and the FUA write with MEDIUM ERROR 03/0C/00 (WRITE ERROR)', async () => {
    make();
    await lazyAllocation();
    const flushed = rejects(dev.flush());
    const written = rejects(dev.write(2 * BPS, pattern(1, 6), { fua: true }));
    await until(() => dev.heldCount === 2, 'both held');
    expect(sync.asked, 'one request for both').to.have.length(1);
    sync.asked[0]!.answer({ ok: false, durableVersion: 1, reason: 'vdisk thin0 is at version 1: version 2 lost' });
    for (const e of [await flushed, await written]) {
      expect(isSense(e, 0x03, 0x0c, 0x00), e.message).to.equal(true);
      expect(e.message).to.match(/version 2 lost/);
    }
    // Still the table with the lost allocation: the next flush asks again and fails again.
    const next = rejects(dev.flush());
    await until(() => sync.asked.length === 2, 'the request again');
    sync.asked[1]!.answer({ ok: false, durableVersion: 1, reason: 'version 2 lost' });
    expect(isSense(await next, 0x03, 0x0c, 0x00)).to.equal(true);
    // The controller reconciles with a whole durable table: the lost version is asked about once more
    // (writes may have gone through it since), then the flushes complete.
    const t3 = table(3);
    lazy.wholeTable(3, false, dev.version);
    await dev.installTable(t3);
    lazy.tableInstalled();
    const orphan = rejects(dev.flush());
    await until(() => sync.asked.length === 3, 'the orphan request');
    expect(sync.asked[2]!.version).to.equal(2);
    sync.asked[2]!.answer({ ok: false, durableVersion: 3, reason: 'version 2 lost' });
    expect(isSense(await orphan, 0x03, 0x0c, 0x00)).to.equal(true);
    await dev.flush();
    expect(sync.asked).to.have.length(3);
  });

  // The crash tests' contract violation B (test/system/thin-durability.test.ts, test 4): a write
  // that landed in the lost allocation after the held SYNCHRONIZE CACHE was received must make a
  // later one fail; that the held one failed does not vouch for it.
  it('a write through the lost version after a held SYNCHRONIZE CACHE makes the next one fail too', async () => {
    const link = new FakeLink();
    const channel = new SyncChannel(link);
    lazy = new LazyVersions(VDISK, { sink: wireSyncSink(channel), name: 'thin0', backgroundAskMs: 0 });
    lazy.wholeTable(1, false, 0);
    dev = new VdiskDevice({ vdiskId: VDISK, table: table(1), containers: fx.resolver, faults: new FakeSink(), holdTimeoutMs: 10_000, lazyVersions: lazy });
    // (1) A write to a new segment: allocated by lazy version 2, GOOD.
    await lazyAllocation();
    await dev.write(2 * BPS, pattern(1, 20));
    // (2) The controller is killed; a SYNCHRONIZE CACHE is held.
    link.up = false;
    const held = rejects(dev.flush());
    await until(() => dev.heldCount === 1, 'the flush held');
    // (3) Another write to the same segment, through version 2: GOOD.
    await dev.write(2 * BPS + 1, pattern(1, 21));
    // (4) Power loss: the controller restarts without version 2 and reconciles with a whole
    // durable table at version 3 (segment 2 zero), as the agent installs it; then it refuses version 2.
    link.welcome();
    const [req] = link.requests();
    expect(req).to.include({ vdiskId: VDISK, version: 2 });
    lazy.wholeTable(3, false, dev.version);
    await dev.installTable(table(3));
    lazy.tableInstalled();
    link.emit('syncReply', { requestId: req!.requestId, ok: false, durableVersion: 3, reason: 'version 2 lost' });
    const e1 = await held;
    expect(isSense(e1, 0x03, 0x0c, 0x00), e1.message).to.equal(true);
    // (5) The next SYNCHRONIZE CACHE was received after the write of (3): it must not complete GOOD.
    const next = rejects(dev.flush());
    await until(() => link.requests().length === 2, 'the orphan asked about again');
    const req2 = link.requests()[1]!;
    expect(req2).to.include({ vdiskId: VDISK, version: 2 });
    link.emit('syncReply', { requestId: req2.requestId, ok: false, durableVersion: 3, reason: 'version 2 lost' });
    const e2 = await next;
    expect(isSense(e2, 0x03, 0x0c, 0x00), e2.message).to.equal(true);
    // Told to a flush received after the new table drained: settled, the next one completes at once.
    await dev.flush();
    expect(link.requests()).to.have.length(2);
    expect(channel.held).to.equal(0);
  });

  it('the orphan is settled only by a SYNCHRONIZE CACHE received once its table is drained; a FUA write received then does not wait for it', async () => {
    make();
    await lazyAllocation();
    await dev.write(2 * BPS, pattern(1, 22));
    // The reconciling table is announced; a flush and a FUA write received before it is installed.
    lazy.wholeTable(3, false, dev.version);
    const early = rejects(dev.flush());
    const earlyFua = rejects(dev.write(0, pattern(1, 23), { fua: true }));
    await until(() => dev.heldCount === 2, 'both held');
    await dev.installTable(table(3));
    lazy.tableInstalled();
    sync.asked[0]!.answer({ ok: false, durableVersion: 3, reason: 'version 2 lost' });
    for (const e of [await early, await earlyFua]) expect(isSense(e, 0x03, 0x0c, 0x00), e.message).to.equal(true);
    expect(lazy.due(3), 'told only to flushes received before the table drained').to.equal(2);
    // A FUA write received now went through version 3 only.
    await dev.write(0, pattern(1, 24), { fua: true });
    expect(sync.asked).to.have.length(1);
    const late = rejects(dev.flush());
    await until(() => sync.asked.length === 2, 'the orphan asked about again');
    sync.asked[1]!.answer({ ok: false, durableVersion: 3, reason: 'version 2 lost' });
    expect(isSense(await late, 0x03, 0x0c, 0x00)).to.equal(true);
    expect(lazy.due(3)).to.equal(0);
    await dev.flush();
    expect(sync.asked).to.have.length(2);
  });

  it('many concurrent flushes and FUA writes share one request', async () => {
    make();
    await lazyAllocation();
    const all: Promise<void>[] = [];
    for (let i = 0; i < 8; i++) all.push(dev.flush());
    for (let i = 0; i < 8; i++) all.push(dev.write(2 * BPS + i, pattern(1, 10 + i), { fua: true }));
    await until(() => dev.heldCount === 16, 'all sixteen held');
    expect(sync.asked.map((a) => a.version)).to.deep.equal([2]);
    sync.asked[0]!.answer({ ok: true });
    await Promise.all(all);
    expect(sync.asked).to.have.length(1);
  });

  it('asks for the newer version when one was installed since the request went out', async () => {
    make();
    await lazyAllocation();
    const first = dev.flush();
    await until(() => sync.asked.length === 1, 'the first request');
    lazy.lazyDelta(3);
    await dev.applyDelta(allocate(2, 3));
    const second = dev.flush();
    await until(() => sync.asked.length === 2, 'the second request');
    expect(sync.asked.map((a) => a.version)).to.deep.equal([2, 3]);
    sync.asked[1]!.answer({ ok: true });
    await second;
    sync.asked[0]!.answer({ ok: true });
    await first;
  });

  it('unanswered within the hold timeout: NOT READY 02/04/0A, and the request is given up', async () => {
    make(60);
    await lazyAllocation();
    const e = await rejects(dev.flush());
    expect(isSense(e, 0x02, 0x04, 0x0a), e.message).to.equal(true);
    expect(sync.asked).to.have.length(1);
    expect(sync.asked[0]!.signal.aborted).to.equal(true);
    expect(dev.heldCount).to.equal(0);
    // The initiator retries: asked again, and this time answered.
    const again = dev.flush();
    await until(() => sync.asked.length === 2, 'the request again');
    expect(sync.asked).to.have.length(2);
    sync.asked[1]!.answer({ ok: true });
    await again;
  });

  it('a held flush fails NOT READY when the device closes', async () => {
    make();
    await lazyAllocation();
    const flushed = rejects(dev.flush());
    await until(() => sync.asked.length === 1, 'the request');
    await dev.close();
    const e = await flushed;
    expect(isSense(e, 0x02, 0x04, 0x0a), e.message).to.equal(true);
  });

  it('through the wire channel: held while the controller is away, answered on the next stream', async () => {
    const link = new FakeLink();
    const channel = new SyncChannel(link);
    lazy = new LazyVersions(VDISK, { sink: wireSyncSink(channel), name: 'thin0', backgroundAskMs: 0 });
    lazy.wholeTable(1, false, 0);
    dev = new VdiskDevice({ vdiskId: VDISK, table: table(1), containers: fx.resolver, faults: new FakeSink(), holdTimeoutMs: 5000, lazyVersions: lazy });
    await lazyAllocation();
    link.up = false;
    let done = false;
    const flushed = dev.flush().then(() => {
      done = true;
    });
    await until(() => dev.heldCount === 1, 'the flush held');
    expect(link.requests()).to.have.length(0);
    link.welcome();
    const [req] = link.requests();
    expect(req).to.include({ vdiskId: VDISK, version: 2 });
    await settle();
    expect(done).to.equal(false);
    link.emit('syncReply', { requestId: req!.requestId, ok: true, durableVersion: 2, reason: '' });
    await flushed;
    expect(channel.held).to.equal(0);
  });
});
