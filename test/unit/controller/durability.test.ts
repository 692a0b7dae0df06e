import { expect } from 'chai';
import Database from 'better-sqlite3';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { SegmentState } from '../../../src/table/index.js';
import { FaultAction, type ControllerMessage, type SyncReplyMsg } from '../../../src/wire/proto-types.js';
import { ControllerDb } from '../../../src/controller/db.js';
import { Durability, checkDurableIntervalMs, type SyncReplySink } from '../../../src/controller/durability.js';
import { UnreservedSpaceError } from '../../../src/controller/allocator.js';
import { startController } from '../../../src/controller/daemon.js';
import { CA, FakeAgent, MiB, containerRef, startTestController, tempDir, until } from './helpers.js';

// Lazy commits (thin allocations) and when they become durable: the group
// commit, its timer, FULL commits as durable points, SyncRequest answers, the
// power-loss snapshot, and an agent's newer versions reconciled at Register.

function replies(): SyncReplySink & { got: SyncReplyMsg[] } {
  const got: SyncReplyMsg[] = [];
  return { got, send: (m) => got.push(m.syncReply) };
}

describe('durability: lazy commits and the group commit', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  const opened: Durability[] = [];

  function durability(opts: ConstructorParameters<typeof Durability>[1] = {}): Durability {
    const d = new Durability(db, opts);
    opened.push(d);
    return d;
  }

  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 'c.db'));
    db.sql.exec('CREATE TABLE t (x)');
  });

  afterEach(() => {
    for (const d of opened.splice(0)) d.close();
    db.close();
    t.cleanup();
  });

  it('a lazy commit runs with synchronous = NORMAL, inside inLazyCommit, and leaves FULL after it', () => {
    const seen: unknown[] = [];
    const r = db.lazy(() => {
      seen.push(db.sql.pragma('synchronous', { simple: true }), db.inLazyCommit, db.sql.inTransaction);
      db.sql.prepare('INSERT INTO t VALUES (1)').run();
      return 7;
    });
    expect(r).to.equal(7);
    expect(seen).to.deep.equal([1, true, true]);
    expect(db.sql.pragma('synchronous', { simple: true })).to.equal(2);
    expect(db.inLazyCommit).to.equal(false);
    expect(() => db.tx(() => db.lazy(() => 1))).to.throw(/cannot join/);
  });

  it('relaxed() switches the safety level every time (its pragmas are prepared once and run again)', () => {
    const level = (): unknown => db.sql.pragma('synchronous', { simple: true });
    for (let i = 0; i < 3; i++) {
      expect(db.relaxed(() => level())).to.equal(1);
      expect(level()).to.equal(2);
      expect(db.lazy(() => level())).to.equal(1);
      expect(level()).to.equal(2);
    }
  });

  it('a FULL transaction that wrote is a durable point; one that only read, a relaxed or a lazy one is not', () => {
    let points = 0;
    db.onDurable(() => points++);
    db.tx(() => db.sql.prepare('SELECT COUNT(*) FROM t').get());
    db.relaxed(() => db.tx(() => db.sql.prepare('INSERT INTO t VALUES (1)').run()));
    db.lazy(() => db.sql.prepare('INSERT INTO t VALUES (2)').run());
    expect(points).to.equal(0);
    db.tx(() => db.tx(() => db.sql.prepare('INSERT INTO t VALUES (3)').run()));
    expect(points, 'once, for the outer transaction').to.equal(1);
  });

  it('tracks lazy versions per vdisk; a FULL commit makes every one durable', () => {
    const d = durability({ intervalMs: 60_000 });
    d.committedLazily('v1', 5);
    d.committedLazily('v1', 6);
    d.committedLazily('v2', 3);
    expect([d.isPending('v1', 4), d.isPending('v1', 5), d.isPending('v1', 6), d.isPending('v2', 3)]).to.deep.equal([false, true, true, true]);
    expect(d.durableVersion('v1', 6)).to.equal(4);
    expect(d.durableVersion('v3', 9)).to.equal(9);
    db.tx(() => db.sql.prepare('INSERT INTO t VALUES (1)').run());
    expect(d.pendingVdisks).to.equal(0);
    expect(d.durableVersion('v1', 6)).to.equal(6);
  });

  it('the timer makes a lazy commit durable within the interval, with one group commit for all of them', async () => {
    const d = durability({ intervalMs: 30 });
    d.committedLazily('v1', 2);
    d.committedLazily('v2', 9);
    d.committedLazily('v1', 3);
    expect(d.pendingVdisks).to.equal(2);
    await until(() => d.pendingVdisks === 0, 5000, 'lazy commits durable');
    expect(d.groupCommits).to.equal(1);
  });

  it('an agent waiting starts a group commit at once, without waiting for the timer', async () => {
    const d = durability({ intervalMs: 60_000 });
    d.committedLazily('v1', 2);
    await d.whenDurable('v1', 2);
    expect(d.groupCommits).to.equal(1);
    expect(d.isPending('v1', 2)).to.equal(false);
    // Already durable: no other group commit.
    await d.whenDurable('v1', 2);
    expect(d.groupCommits).to.equal(1);
  });

  it('a group commit covers only the commits made before its fsync started; one more runs for a waiter on a later one', async () => {
    const calls: ((ok: boolean) => void)[] = [];
    const fake = db as unknown as { fsyncWal: () => Promise<boolean> };
    fake.fsyncWal = () => new Promise<boolean>((resolve) => calls.push(resolve));
    const d = durability({ intervalMs: 60_000 });
    d.committedLazily('v1', 5);
    const first = d.whenDurable('v1', 5);
    await until(() => calls.length === 1, 1000, 'first fsync');
    d.committedLazily('v1', 6);
    const second = d.whenDurable('v1', 6);
    calls[0]!(true);
    await first;
    expect(d.isPending('v1', 5)).to.equal(false);
    expect(d.isPending('v1', 6), 'committed during the fsync').to.equal(true);
    expect(d.durableVersion('v1', 6)).to.equal(5);
    await until(() => calls.length === 2, 1000, 'second fsync');
    calls[1]!(true);
    await second;
    expect(d.pendingVdisks).to.equal(0);
    expect(d.groupCommits).to.equal(2);
  });

  it('falls back to a FULL commit when there is no -wal file', async () => {
    const fake = db as unknown as { fsyncWal: () => Promise<boolean> };
    fake.fsyncWal = () => Promise.resolve(false);
    const d = durability({ intervalMs: 60_000 });
    let points = 0;
    db.onDurable(() => points++);
    const before = db.sql.pragma('application_id', { simple: true });
    d.committedLazily('v1', 1);
    await d.whenDurable('v1', 1);
    expect(points).to.equal(1);
    expect(db.sql.pragma('application_id', { simple: true })).to.equal(before);
  });

  it('syncNow with the -wal file gone commits FULL instead (a write that changes nothing), a durable point', () => {
    db.tx(() => db.sql.prepare('INSERT INTO t VALUES (1)').run());
    rmSync(`${db.path}-wal`);
    let points = 0;
    db.onDurable(() => points++);
    const id = db.sql.pragma('application_id', { simple: true });
    db.syncNow();
    expect(points).to.equal(1);
    expect(db.sql.pragma('application_id', { simple: true })).to.equal(id);
    expect(db.sql.prepare('SELECT x FROM t').pluck().all()).to.deep.equal([1]);
  });

  it('makes everything durable when it starts (lazy commits of a run that crashed may be in the WAL only)', () => {
    let points = 0;
    db.onDurable(() => points++);
    durability({ intervalMs: 60_000 });
    expect(points).to.equal(1);
  });

  it('close() makes what is pending durable', () => {
    const d = durability({ intervalMs: 60_000 });
    let points = 0;
    db.onDurable(() => points++);
    d.committedLazily('v1', 1);
    d.close();
    expect(points).to.equal(1);
    expect(d.pendingVdisks).to.equal(0);
  });

  it('validates the interval', () => {
    expect(checkDurableIntervalMs(1000)).to.equal(null);
    expect(checkDurableIntervalMs(0)).to.match(/1 ms to 60 s/);
    expect(checkDurableIntervalMs(1.5)).to.match(/1 ms to 60 s/);
    expect(checkDurableIntervalMs(60_001)).to.match(/1 ms to 60 s/);
    expect(() => new Durability(db, { intervalMs: -1 })).to.throw(/durable interval/);
  });
});

describe('durability: SyncRequest answers', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  let d: Durability;
  let vdiskId: string;

  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 'c.db'));
    d = new Durability(db, { intervalMs: 60_000 });
    vdiskId = db.insertVdisk({ id: 'vd1', name: 'v', size: 4 * MiB, blockSize: 512, segmentSize: MiB, segmentCount: 4, thin: true, version: 1 }).id;
    for (let i = 0; i < 3; i++) db.tx(() => db.bumpVersion(vdiskId));
  });

  afterEach(() => {
    d.close();
    db.close();
    t.cleanup();
  });

  it('answers ok at once for a durable version, with the durable version', async () => {
    const r = replies();
    const version = db.vdisk(vdiskId)!.version;
    d.onSyncRequest(r, { requestId: 7, vdiskId, version });
    await until(() => r.got.length === 1, 1000, 'reply');
    expect(r.got[0]).to.deep.equal({ requestId: 7, ok: true, durableVersion: version, reason: '' });
    expect(d.groupCommits).to.equal(0);
  });

  it('answers ok for a lazy version once a group commit made it durable', async () => {
    const version = db.lazy(() => db.bumpVersion(vdiskId));
    d.committedLazily(vdiskId, version);
    const r = replies();
    d.onSyncRequest(r, { requestId: 8, vdiskId, version });
    expect(r.got).to.have.length(0);
    await until(() => r.got.length === 1, 5000, 'reply');
    expect(r.got[0]).to.deep.equal({ requestId: 8, ok: true, durableVersion: version, reason: '' });
    expect(d.groupCommits).to.equal(1);
  });

  it('answers not ok when the database is below the version (lost in a power loss) or the vdisk is gone', async () => {
    const r = replies();
    const version = db.vdisk(vdiskId)!.version;
    d.onSyncRequest(r, { requestId: 1, vdiskId, version: version + 2 });
    d.onSyncRequest(r, { requestId: 2, vdiskId: 'no-such-vdisk', version: 1 });
    expect(r.got[0]).to.include({ requestId: 1, ok: false, durableVersion: version });
    expect(r.got[0]!.reason).to.match(/was lost/);
    expect(r.got[1]).to.include({ requestId: 2, ok: false, durableVersion: 0 });
    expect(r.got[1]!.reason).to.match(/does not exist/);
  });
});

describe('durability: the power-loss snapshot (TABULA_TEST_POWER_SNAPSHOT)', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  let d: Durability;
  let snap: string;

  beforeEach(() => {
    t = tempDir();
    snap = join(t.dir, 'snap');
    mkdirSync(snap);
    db = new ControllerDb(join(t.dir, 'c.db'));
    db.sql.exec('CREATE TABLE t (x)');
    d = new Durability(db, { intervalMs: 60_000, powerSnapshotDir: snap });
  });

  afterEach(() => {
    d.close();
    db.close();
    t.cleanup();
  });

  /** The rows of t as a database restored from the snapshot has them (the plug pulled now). */
  function restored(): number[] {
    const dir = mkdtempSync(join(t.dir, 'restore-'));
    for (const f of ['c.db', 'c.db-wal']) if (existsSync(join(snap, f))) copyFileSync(join(snap, f), join(dir, f));
    const r = new Database(join(dir, 'c.db'));
    try {
      return r.prepare('SELECT x FROM t ORDER BY x').pluck().all() as number[];
    } finally {
      r.close();
    }
  }

  it('holds the last durable state: FULL commits and group commits are in it, a lazy commit not yet durable is not', async () => {
    db.tx(() => db.sql.prepare('INSERT INTO t VALUES (1)').run());
    expect(restored()).to.deep.equal([1]);
    db.lazy(() => db.sql.prepare('INSERT INTO t VALUES (2)').run());
    d.committedLazily('v', 2);
    expect(restored(), 'the lazy commit is lost by a power cut now').to.deep.equal([1]);
    await d.whenDurable('v', 2);
    expect(restored()).to.deep.equal([1, 2]);
    // A FULL write outside any transaction: picked up by the poll while nothing lazy is pending.
    db.sql.prepare('INSERT INTO t VALUES (3)').run();
    await until(() => restored().includes(3), 5000, 'autocommit write in the snapshot');
  });
});

describe('durability through the controller: lazy deltas, SyncRequest, reconciliation at Register', () => {
  let ctl: Awaited<ReturnType<typeof startTestController>>;
  const agents: FakeAgent[] = [];

  async function setup(names: string[]): Promise<{ vdiskId: string; as: FakeAgent[] }> {
    ctl = await startTestController({ durableIntervalMs: 60_000 });
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const as: FakeAgent[] = [];
    for (const n of names) {
      const a = new FakeAgent(ctl.address, n, { containers: [containerRef(CA, 8)] });
      agents.push(a);
      await a.register();
      as.push(a);
    }
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 4 * MiB });
    for (const a of as) {
      ctl.admin.AddExport({ vdisk: 'd', agent: a.name });
      await a.next((m) => m.body === 'tableFull');
    }
    return { vdiskId: v.id, as };
  }

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await ctl?.cleanup();
  });

  const deltas = (a: FakeAgent) => a.received.filter((m): m is Extract<ControllerMessage, { body: 'tableDelta' }> => m.body === 'tableDelta').map((m) => m.tableDelta);
  const fulls = (a: FakeAgent) => a.received.filter((m): m is Extract<ControllerMessage, { body: 'tableFull' }> => m.body === 'tableFull').map((m) => m.tableFull);

  it('a thin first write commits lazily: its delta and a full table of its version say lazy until a SyncRequest made it durable', async () => {
    const { vdiskId, as } = await setup(['a1']);
    const a = as[0]!;
    const r = await a.sendFault({ vdiskId, segment: 2, op: 1, state: SegmentState.Zero }).reply();
    expect(r.action).to.equal(FaultAction.Retry);
    const d = deltas(a).pop()!;
    expect(d.lazy).to.equal(true);
    expect(ctl.controller.durability.isPending(vdiskId, d.toVersion)).to.equal(true);
    // A full table of that version (the agent asks for it) says lazy too.
    a.stream.write({ body: 'tableRequest', tableRequest: { vdiskId, haveVersion: 0, reason: 'test' } });
    await until(() => fulls(a).some((f) => f.version === d.toVersion), 5000, 'full table');
    expect(fulls(a).find((f) => f.version === d.toVersion)!.lazy).to.equal(true);
    // The agent must promise durability: answered once the group commit ran.
    a.stream.write({ body: 'syncRequest', syncRequest: { requestId: 4, vdiskId, version: d.toVersion } });
    const m = await a.next((x) => x.body === 'syncReply');
    expect((m as { syncReply: SyncReplyMsg }).syncReply).to.deep.equal({ requestId: 4, ok: true, durableVersion: d.toVersion, reason: '' });
    expect(ctl.controller.durability.groupCommits).to.equal(1);
    // Durable now: a full table of it says nothing.
    const from = a.received.length;
    a.stream.write({ body: 'tableRequest', tableRequest: { vdiskId, haveVersion: 0, reason: 'test' } });
    const full = await a.next((x) => x.body === 'tableFull', 5000, from);
    expect((full as { tableFull: { lazy?: boolean } }).tableFull).to.not.have.property('lazy');
  });

  it('a lazy allocation takes reserved space; with none to be had, or more than was reserved, the change commits FULL', async () => {
    const { vdiskId, as } = await setup(['a1']);
    const a = as[0]!;
    await a.sendFault({ vdiskId, segment: 0, op: 1, state: SegmentState.Zero }).reply();
    expect(deltas(a).pop()!.lazy).to.equal(true);
    const loc = ctl.db.segment(vdiskId, 0);
    const reserved = ctl.db.spaceReservations().some((r) => r.containerId === loc.containerId && loc.offset! >= r.first && loc.offset! < r.first + r.count);
    expect(reserved, 'allocated inside a durable reservation').to.equal(true);
    const alloc = ctl.controller.allocator as unknown as { prepareLazy: (...args: unknown[]) => boolean };
    const real = alloc.prepareLazy.bind(alloc);
    // prepareLazy could not reserve: FULL.
    alloc.prepareLazy = () => false;
    await a.sendFault({ vdiskId, segment: 1, op: 1, state: SegmentState.Zero }).reply();
    expect(deltas(a).pop()).to.not.have.property('lazy');
    // It said yes but the reservations do not cover the change (a bigger batch than prepared): the same change, FULL.
    const allocator = ctl.controller.allocator;
    const allocate = allocator.allocate.bind(allocator);
    let refused = 0;
    allocator.allocate = (v, n, eligible, o = {}) => {
      if (o.lazy === true) {
        refused++;
        throw new UnreservedSpaceError(CA, n, 0);
      }
      return allocate(v, n, eligible, o);
    };
    alloc.prepareLazy = () => true;
    const r = await a.sendFault({ vdiskId, segment: 2, op: 1, state: SegmentState.Zero }).reply();
    expect(r.action).to.equal(FaultAction.Retry);
    expect(deltas(a).pop()).to.not.have.property('lazy');
    expect(ctl.db.segment(vdiskId, 2).state).to.equal(SegmentState.Normal);
    expect(refused).to.equal(1);
    alloc.prepareLazy = real;
    allocator.allocate = allocate;
    expect(ctl.admin.Check({}).violations).to.deep.equal([]);
  });

  it('a lazy change reserves for the entries it says it may allocate, asked right before it runs', async () => {
    const { vdiskId, as } = await setup(['a1']);
    const alloc = ctl.controller.allocator;
    const real = alloc.prepareLazy.bind(alloc);
    const asked: number[] = [];
    alloc.prepareLazy = (v, entries, eligible) => {
      asked.push(entries ?? 1);
      return real(v, entries, eligible);
    };
    // Queued behind another task of the vdisk: members join (a fault batch) until the change runs.
    let release: (() => void) | undefined;
    const blocker = ctl.controller.tables.serialize(vdiskId, () => new Promise<void>((resolve) => (release = resolve)));
    let members = 1;
    const change = ctl.controller.tables.changeTable(
      vdiskId,
      (c) => {
        for (const [i, loc] of c.allocate(members).entries()) c.set(i, SegmentState.Normal, loc);
      },
      undefined,
      { lazy: true, lazyEntries: () => members },
    );
    members = 3;
    await until(() => release !== undefined, 1000, 'the blocking task running');
    release!();
    await blocker;
    const r = await change;
    expect(asked).to.deep.equal([3]);
    expect(r!.ranges).to.deep.equal([[0, 3]]);
    expect(r!.lazy).to.equal(true);
    expect(deltas(as[0]!).pop()!.lazy).to.equal(true);
    alloc.prepareLazy = real;
  });

  it('other changes commit FULL: their deltas carry no lazy, and they make earlier lazy commits durable', async () => {
    const { vdiskId, as } = await setup(['a1']);
    const a = as[0]!;
    await a.sendFault({ vdiskId, segment: 1, op: 1, state: SegmentState.Zero }).reply();
    expect(ctl.controller.durability.pendingVdisks).to.equal(1);
    await ctl.controller.tables.changeTable(vdiskId, (c) => c.set(3, SegmentState.Invalid, null));
    expect(deltas(a).pop()).to.not.have.property('lazy');
    expect(ctl.controller.durability.pendingVdisks).to.equal(0);
  });

  it('an agent back with a newer version than the database gets the full table at a version above it; the others an empty delta', async () => {
    const { vdiskId, as } = await setup(['a1', 'a2']);
    const [a1] = as as [FakeAgent, FakeAgent];
    const dbVersion = ctl.db.vdisk(vdiskId)!.version;
    // a2 comes back (a new stream) holding a version the database lost.
    agents[1]!.close();
    await until(() => ctl.controller.agents.link('a2') === undefined || ctl.controller.agents.link('a2')!.closed, 5000, 'a2 gone');
    const back = new FakeAgent(ctl.address, 'a2', { containers: [containerRef(CA, 8)] });
    agents.push(back);
    await back.register([{ vdiskId, version: dbVersion + 5 }]);
    const full = await back.next((m) => m.body === 'tableFull');
    const raised = ctl.db.vdisk(vdiskId)!.version;
    expect(raised).to.equal(dbVersion + 6);
    expect((full as { tableFull: { version: number } }).tableFull.version).to.equal(raised);
    expect(back.received.some((m) => m.body === 'tableDelta'), 'no delta to the agent reconciled').to.equal(false);
    // a1 held the database's version: an empty delta to the new one.
    await until(() => deltas(a1).some((x) => x.toVersion === raised), 5000, 'delta to a1');
    expect(deltas(a1).find((x) => x.toVersion === raised)).to.deep.include({ fromVersion: dbVersion, extents: [] });
    expect(ctl.db.sql.prepare("SELECT message FROM events WHERE kind = 'agent' AND message LIKE '%reconciled%'").pluck().all()).to.have.length(1);
    // The version is durable (FULL): a SyncRequest for it is ok at once.
    back.stream.write({ body: 'syncRequest', syncRequest: { requestId: 1, vdiskId, version: raised } });
    const reply = await back.next((m) => m.body === 'syncReply');
    expect((reply as { syncReply: SyncReplyMsg }).syncReply).to.include({ ok: true, durableVersion: raised });
  });

  it('after a restart, an agent holding a lost version that the new run committed again (equal by chance) is reconciled too, once', async () => {
    const t = tempDir();
    const dbPath = join(t.dir, 'c.db');
    let h = await startController({ dbPath, listen: '127.0.0.1:0', ackTimeoutMs: 2000, durableIntervalMs: 60_000 });
    try {
      h.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
      const first = new FakeAgent(h.address, 'a1', { containers: [containerRef(CA, 8)] });
      await first.register();
      const vdiskId = h.admin.CreateVdisk({ name: 'd', size: 4 * MiB }).id;
      h.admin.AddExport({ vdisk: 'd', agent: 'a1' });
      await first.next((m) => m.body === 'tableFull');
      first.close();
      const d = h.db.vdisk(vdiskId)!.version;
      await h.close();
      // The run that followed lost versions d+1 and d+2 (the plug pulled); this run commits its own d+1 and d+2.
      h = await startController({ dbPath, listen: '127.0.0.1:0', ackTimeoutMs: 2000, durableIntervalMs: 60_000 });
      await h.controller.tables.changeTable(vdiskId, (c) => c.set(0, SegmentState.Invalid, null));
      await h.controller.tables.changeTable(vdiskId, (c) => c.set(1, SegmentState.Invalid, null));
      expect(h.db.vdisk(vdiskId)!.version).to.equal(d + 2);
      const back = new FakeAgent(h.address, 'a1', { containers: [containerRef(CA, 8)] });
      agents.push(back);
      await back.register([{ vdiskId, version: d + 2 }]);
      const full = await back.next((m) => m.body === 'tableFull');
      expect((full as { tableFull: { version: number } }).tableFull.version).to.equal(d + 3);
      expect(back.tables.get(vdiskId)!.get(0).state, "this run's table, not the lost one").to.equal(SegmentState.Invalid);
      // A flush vouching for the lost version fails, though this run has a version of that number; one before it is durable.
      back.stream.write({ body: 'syncRequest', syncRequest: { requestId: 1, vdiskId, version: d + 2 } });
      back.stream.write({ body: 'syncRequest', syncRequest: { requestId: 2, vdiskId, version: d } });
      await until(() => back.received.filter((m) => m.body === 'syncReply').length === 2, 5000, 'sync replies');
      const answers = back.received.flatMap((m) => (m.body === 'syncReply' ? [m.syncReply] : []));
      expect(answers.find((a) => a.requestId === 1)).to.include({ ok: false, durableVersion: d });
      expect(answers.find((a) => a.requestId === 2)).to.include({ ok: true });
      // Registering again in this run, holding what this run sent: nothing to reconcile.
      back.close();
      await until(() => h.controller.agents.link('a1') === undefined || h.controller.agents.link('a1')!.closed, 5000, 'a1 gone');
      const again = new FakeAgent(h.address, 'a1', { containers: [containerRef(CA, 8)] });
      agents.push(again);
      await again.register([{ vdiskId, version: d + 3 }]);
      await again.next((m) => m.body === 'exportSet');
      expect(h.db.vdisk(vdiskId)!.version).to.equal(d + 3);
      expect(again.received.some((m) => m.body === 'tableFull'), 'kept the very version: nothing sent').to.equal(false);
    } finally {
      for (const a of agents.splice(0)) a.close();
      await h.close();
      t.cleanup();
    }
  });

  it('an agent back with the database\'s version or an older one is not reconciled', async () => {
    const { vdiskId } = await setup(['a1']);
    const before = ctl.db.vdisk(vdiskId)!.version;
    const b = new FakeAgent(ctl.address, 'b1', { containers: [containerRef(CA, 8)] });
    agents.push(b);
    await b.register([{ vdiskId, version: before }]);
    expect(ctl.db.vdisk(vdiskId)!.version).to.equal(before);
  });
});
