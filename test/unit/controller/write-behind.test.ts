import { expect } from 'chai';
import { join } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { ControllerDb } from '../../../src/controller/db.js';
import { MIN_GAP_MS, WriteBehind } from '../../../src/controller/write-behind.js';
import { tempDir } from './helpers.js';

describe('controller write-behind (bookkeeping writes)', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  const count = (): number => db.sql.prepare('SELECT COUNT(*) FROM events').pluck().get() as number;
  const synchronous = (): number => db.sql.pragma('synchronous', { simple: true }) as number;

  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 'c.db'));
  });
  afterEach(() => {
    db.close();
    t.cleanup();
  });

  it('writes nothing at once; a turn later writes everything in one relaxed transaction, then runs the follow-ups', async () => {
    const wb = new WriteBehind(db);
    const seen: string[] = [];
    for (const n of [1, 2, 3]) {
      wb.add(
        () => {
          // 1 = NORMAL (no fsync of its own), inside the one transaction.
          seen.push(`write ${n} tx=${db.sql.inTransaction} sync=${synchronous()}`);
          db.event('test', `s${n}`, 'm');
        },
        () => seen.push(`after ${n} rows=${count()} tx=${db.sql.inTransaction}`),
      );
    }
    expect(count()).to.equal(0);
    expect(wb.pending).to.equal(3);
    await nextTurn();
    expect(seen).to.deep.equal([
      'write 1 tx=true sync=1',
      'write 2 tx=true sync=1',
      'write 3 tx=true sync=1',
      'after 1 rows=3 tx=false',
      'after 2 rows=3 tx=false',
      'after 3 rows=3 tx=false',
    ]);
    expect(wb.pending).to.equal(0);
    // Durable commits are FULL again afterwards (2).
    expect(synchronous()).to.equal(2);
  });

  it('flush() writes at once, and the scheduled turn then has nothing left to do', async () => {
    const wb = new WriteBehind(db);
    let writes = 0;
    let afters = 0;
    wb.add(
      () => {
        writes++;
        db.event('test', 's', 'm');
      },
      () => afters++,
    );
    wb.flush();
    expect([writes, afters, count()]).to.deep.equal([1, 1, 1]);
    await nextTurn();
    expect([writes, afters, count()]).to.deep.equal([1, 1, 1]);
  });

  it('writes queued soon after a flush wait for the next one (MIN_GAP_MS), then go in together', async () => {
    const wb = new WriteBehind(db);
    wb.add(() => db.event('test', 's0', 'm'));
    await nextTurn();
    expect(count()).to.equal(1);
    for (const n of [1, 2, 3]) wb.add(() => db.event('test', `s${n}`, 'm'));
    // Not on the next turn: a timer runs it, no earlier than MIN_GAP_MS after the last flush.
    await nextTurn();
    expect(count()).to.equal(1);
    for (let i = 0; i < 100 && wb.pending > 0; i++) await new Promise((r) => setTimeout(r, MIN_GAP_MS));
    expect(count()).to.equal(4);
    expect(wb.pending).to.equal(0);
  });

  it('once() keeps one pending write per key; after it is written the key can queue again', async () => {
    const wb = new WriteBehind(db);
    const ran: string[] = [];
    wb.once('seen a', () => ran.push('a1'));
    wb.once('seen a', () => ran.push('a2'));
    wb.once('seen b', () => ran.push('b1'));
    await nextTurn();
    expect(ran).to.deep.equal(['a1', 'b1']);
    wb.once('seen a', () => ran.push('a3'));
    wb.flush();
    expect(ran).to.deep.equal(['a1', 'b1', 'a3']);
  });

  it('a failing write loses only itself: the others commit and every follow-up runs', () => {
    const wb = new WriteBehind(db);
    const after: number[] = [];
    wb.add(() => db.event('test', 's1', 'm'), () => after.push(1));
    wb.add(
      () => {
        db.sql.prepare('INSERT INTO no_such_table VALUES (1)').run();
      },
      () => after.push(2),
    );
    wb.add(() => db.event('test', 's3', 'm'), () => after.push(3));
    wb.flush();
    expect(db.sql.prepare('SELECT subject FROM events ORDER BY id').pluck().all()).to.deep.equal(['s1', 's3']);
    expect(after).to.deep.equal([1, 2, 3]);
  });

  it('skips the writes once the database is closed (shutdown), without throwing', () => {
    const wb = new WriteBehind(db);
    let wrote = false;
    wb.add(() => {
      wrote = true;
    });
    db.close();
    expect(() => wb.flush()).not.to.throw();
    expect(wrote).to.equal(false);
  });
});
