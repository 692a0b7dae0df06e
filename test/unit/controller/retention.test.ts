// Retention of the fault and event logs (src/controller/retention.ts): the
// newest maxRows rows and nothing older than maxAgeDays are kept, pruned in
// small batches in the background; `tabula fault ls` filters (db.findFaults).
import { expect } from 'chai';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { ControllerDb, type NewFault } from '../../../src/controller/db.js';
import { DEFAULT_RETENTION, Retention } from '../../../src/controller/retention.js';
import { WriteBehind } from '../../../src/controller/write-behind.js';
import { AdminError } from '../../../src/controller/admin.js';
import { FaultAction } from '../../../src/wire/proto-types.js';
import { SegmentState } from '../../../src/table/index.js';
import { CA, FakeAgent, MiB, containerRef, startTestController, tempDir, until } from './helpers.js';

const VDISK = '5e1f3c2a-7d44-4b1e-9a0c-3f6e2d1b8c01';

function fault(seg: number, over: Partial<NewFault> = {}): NewFault {
  return { agent: 'a1', vdiskId: VDISK, segment: seg, op: 'write', lba: seg * 2048, blocks: 8, state: 'zero', tableVersion: seg + 1, detail: '', ...over };
}

const DAY = 86_400_000;
const ago = (ms: number): string => new Date(Date.now() - ms).toISOString();

describe('controller retention (fault and event logs)', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 'c.db'));
  });
  afterEach(() => {
    db.close();
    t.cleanup();
  });

  it('pruneLog removes, oldest first and at most a batch at a time, what is beyond the newest rows or too old', () => {
    for (let i = 0; i < 10; i++) db.insertFault(fault(i));
    expect(db.pruneLog('faults', 4, ago(DAY), 3)).to.equal(3);
    expect(db.pruneLog('faults', 4, ago(DAY), 3)).to.equal(3);
    expect(db.pruneLog('faults', 4, ago(DAY), 3), 'only the newest 4 left').to.equal(0);
    expect(db.findFaults({}, 100).map((f) => f.segment)).to.deep.equal([9, 8, 7, 6]);
    // By age: rows from 2 days ago go under a 1-day bound, however few rows there are.
    db.sql.exec('DELETE FROM faults');
    for (let i = 0; i < 3; i++) db.insertFault(fault(i, { time: ago(2 * DAY) }));
    for (let i = 3; i < 5; i++) db.insertFault(fault(i));
    expect(db.pruneLog('faults', 1000, ago(DAY), 100)).to.equal(3);
    expect(db.logRows('faults')).to.equal(2);
    // The same for events.
    for (let i = 0; i < 5; i++) db.event('test', `s${i}`, 'm');
    expect(db.pruneLog('events', 2, ago(DAY), 100)).to.equal(3);
    expect(db.logRows('events')).to.equal(2);
  });

  it('a pass prunes both logs to their bounds in batches, each in its own turn, and counts what it removed', async () => {
    db.tx(() => {
      for (let i = 0; i < 2500; i++) db.insertFault(fault(i));
      for (let i = 0; i < 40; i++) db.event('test', `s${i}`, 'm');
    });
    const r = new Retention(db, { faults: { maxRows: 1000 }, events: { maxRows: 10 }, batchRows: 200 });
    // Turns between batches: a counter on setImmediate sees the pass yield.
    let turns = 0;
    let ticking = true;
    const tick = (): void => {
      turns++;
      if (ticking) setImmediate(tick);
    };
    setImmediate(tick);
    const removed = await r.prune();
    ticking = false;
    expect(removed).to.deep.equal({ faults: 1500, events: 30 });
    expect(turns, 'the pass yields between batches').to.be.greaterThanOrEqual(7);
    expect(db.logRows('faults')).to.equal(1000);
    expect(db.findFaults({}, 1)[0]?.segment, 'the newest kept').to.equal(2499);
    expect(db.logRows('events')).to.equal(10);
    expect(r.removed).to.deep.equal({ faults: 1500, events: 30 });
  });

  it('refuses bounds that make no sense, and defaults what is not given', () => {
    expect(() => new Retention(db, { faults: { maxRows: -1 } })).to.throw(/retention of faults: maxRows/);
    expect(() => new Retention(db, { events: { maxAgeDays: 0 } })).to.throw(/retention of events: maxAgeDays/);
    expect(new Retention(db, { faults: { maxRows: 5 } }).limits).to.deep.equal({ faults: { maxRows: 5, maxAgeDays: DEFAULT_RETENTION.faults.maxAgeDays }, events: DEFAULT_RETENTION.events });
  });

  it('findFaults filters by vdisk, agent, outcome and time, newest first', () => {
    const other = 'a0a0a0a0-0000-4000-8000-000000000000';
    const id1 = db.insertFault(fault(1, { time: ago(3 * DAY) }));
    const id2 = db.insertFault(fault(2, { agent: 'a2' }));
    db.insertFault(fault(3, { vdiskId: other }));
    db.setFaultOutcome(id1, 'retry');
    db.setFaultOutcome(id2, 'fail', 'segment is in state error');
    const segs = (f: Parameters<ControllerDb['findFaults']>[0], limit = 100): number[] => db.findFaults(f, limit).map((x) => x.segment);
    expect(segs({})).to.deep.equal([3, 2, 1]);
    expect(segs({}, 2)).to.deep.equal([3, 2]);
    expect(segs({ vdiskId: VDISK })).to.deep.equal([2, 1]);
    expect(segs({ agent: 'a2' })).to.deep.equal([2]);
    expect(segs({ outcome: 'retry' })).to.deep.equal([1]);
    expect(segs({ since: ago(DAY) })).to.deep.equal([3, 2]);
    expect(segs({ vdiskId: VDISK, agent: 'a1', since: ago(DAY) })).to.deep.equal([]);
  });

  it('ListFaults (tabula fault ls) passes its filters to the database and refuses a bad time', async () => {
    const ctl = await startTestController();
    try {
      ctl.db.insertFault(fault(1, { time: ago(2 * DAY) }));
      ctl.db.insertFault(fault(2, { agent: 'a2' }));
      const segs = (r: Parameters<typeof ctl.admin.ListFaults>[0]): number[] => ctl.admin.ListFaults(r).faults.map((f) => f.segment);
      expect(segs({})).to.deep.equal([2, 1]);
      expect(segs({ agent: 'a2' })).to.deep.equal([2]);
      expect(segs({ outcome: 'pending', since: ago(DAY) })).to.deep.equal([2]);
      expect(() => ctl.admin.ListFaults({ since: 'yesterday' })).to.throw(AdminError, /bad since "yesterday": give an ISO 8601 time/);
    } finally {
      await ctl.cleanup();
    }
  });

  it('through the real fault path: first writes of an agent over gRPC, the controller keeps the newest max-rows and answers every one', async function () {
    this.timeout(180_000);
    const total = 600;
    const ctl = await startTestController({ retention: { faults: { maxRows: 150 }, intervalMs: 100 } });
    const a = new FakeAgent(ctl.address, 'a1', { containers: [containerRef(CA, total)] });
    try {
      ctl.admin.AddContainer({ id: CA, path: '/c/a', size: (total + 1) * MiB, dataOffset: MiB });
      await a.register();
      const v = ctl.admin.CreateVdisk({ name: 'thin', size: total * MiB });
      ctl.admin.AddExport({ vdisk: 'thin', agent: 'a1' });
      await a.next((m) => m.body === 'tableFull');
      for (let seg = 0; seg < total; seg++) {
        const r = await a.sendFault({ vdiskId: v.id, segment: seg, op: 1, lba: seg * 2048, blocks: 8, state: SegmentState.Zero }).reply();
        expect(r.action).to.equal(FaultAction.Retry);
      }
      await ctl.controller.retention.prune();
      ctl.controller.writeBehind.flush();
      await ctl.controller.retention.prune();
      expect(ctl.db.logRows('faults')).to.equal(150);
      const shown = ctl.admin.ListFaults({ vdisk: 'thin', limit: 10_000 }).faults;
      expect(shown).to.have.length(150);
      expect(shown[0]).to.deep.include({ segment: total - 1, outcome: 'retry' });
      expect(ctl.controller.retention.removed.faults).to.equal(total - 150);
      await until(() => ctl.db.vdisk(v.id)!.version > total, 5000, 'every allocation committed');
    } finally {
      a.close();
      await ctl.cleanup();
    }
  });

  it('65,536 first-write faults (a 64 GiB thin vdisk filled at 1 MiB segments) through the write-behind: rows and database size stay bounded', async function () {
    this.timeout(240_000);
    const wb = new WriteBehind(db);
    const r = new Retention(db, { intervalMs: 50 });
    r.start();
    const total = 65_536;
    // As the fault path does: the insert and the outcome written behind, a burst per turn.
    for (let seg = 0; seg < total; seg++) {
      const rec = { id: 0 };
      wb.add(() => {
        rec.id = db.insertFault(fault(seg));
      });
      wb.add(() => db.setFaultOutcome(rec.id, 'retry'));
      if (seg % 64 === 63) await new Promise<void>((resolve) => setImmediate(resolve));
      if (seg % 8192 === 8191) await new Promise<void>((resolve) => setTimeout(resolve, 60));
    }
    wb.flush();
    await r.prune();
    r.stop();
    db.sql.pragma('wal_checkpoint(TRUNCATE)');
    const rows = db.logRows('faults');
    const file = statSync(db.path).size;
    const pages = (db.sql.pragma('page_count', { simple: true }) as number) * (db.sql.pragma('page_size', { simple: true }) as number);
    const max = DEFAULT_RETENTION.faults.maxRows;
    console.log(`      after ${total} faults: ${rows} rows kept (${r.removed.faults} removed), database file ${(file / 2 ** 20).toFixed(2)} MiB (${(pages / 2 ** 20).toFixed(2)} MiB of pages)`);
    expect(rows).to.equal(max);
    expect(db.findFaults({}, 1)[0]?.segment, 'the newest kept').to.equal(total - 1);
    // docs/deploy.md, "Retention and deadlines": at most 8 MiB for the default 20,000 faults
    // (the file keeps its high-water mark; freed pages are reused, not returned).
    expect(file).to.be.below(8 * 2 ** 20);
  });
});
