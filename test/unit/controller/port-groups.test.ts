// ALUA across agents, controller side: the state of each exporter's port
// group (a pure function of what the controller knows), agent numbers in
// Welcome, and the ExportSet every exporter of a vdisk gets again when a
// group's state changes (fake agents over loopback gRPC).
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { expect } from 'chai';
import { ControllerDb } from '../../../src/controller/db.js';
import { MIGRATIONS, migrate } from '../../../src/controller/schema.js';
import { groupState, portGroupsOf, type ExporterFacts } from '../../../src/controller/port-groups.js';
import { AluaState, type Export } from '../../../src/wire/proto-types.js';
import { CA, FakeAgent, MiB, containerRef, startTestController, tempDir } from './helpers.js';

const serving: ExporterFacts = {
  agent: 'a',
  number: 1,
  portals: 1,
  alua: 'optimized',
  fenced: false,
  connected: true,
  gone: false,
  draining: false,
  syncing: false,
};

describe('controller: port group states (pure)', () => {
  it('a serving agent reports its export preference', () => {
    expect(groupState(serving)).to.equal(AluaState.ActiveOptimized);
    expect(groupState({ ...serving, alua: 'non-optimized' })).to.equal(AluaState.ActiveNonOptimized);
  });

  it('away within its lease: unchanged (it may still serve); past its lease or stopped after a drain: unavailable', () => {
    expect(groupState({ ...serving, connected: false })).to.equal(AluaState.ActiveOptimized);
    expect(groupState({ ...serving, connected: false, alua: 'non-optimized' })).to.equal(AluaState.ActiveNonOptimized);
    expect(groupState({ ...serving, connected: false, gone: true })).to.equal(AluaState.Unavailable);
  });

  it('fenced: unavailable, connected or not; draining or syncing a table: transitioning', () => {
    expect(groupState({ ...serving, fenced: true })).to.equal(AluaState.Unavailable);
    expect(groupState({ ...serving, fenced: true, connected: false })).to.equal(AluaState.Unavailable);
    expect(groupState({ ...serving, draining: true })).to.equal(AluaState.Transitioning);
    expect(groupState({ ...serving, syncing: true })).to.equal(AluaState.Transitioning);
    expect(groupState({ ...serving, syncing: true, fenced: true })).to.equal(AluaState.Unavailable);
  });

  it('groups by agent number with relative port ids number*16+i+1; an agent without a number has none', () => {
    const groups = portGroupsOf([
      { ...serving, agent: 'b', number: 3, portals: 2, alua: 'non-optimized' },
      { ...serving, agent: 'a', number: 1, portals: 1 },
      { ...serving, agent: 'old', number: null },
    ]);
    expect(groups).to.deep.equal([
      { id: 1, state: AluaState.ActiveOptimized, relativePortIds: [17], agent: 'a' },
      { id: 3, state: AluaState.ActiveNonOptimized, relativePortIds: [49, 50], agent: 'b' },
    ]);
  });
});

describe('controller: agent numbers and ALUA preferences in the database', () => {
  it('numbers agents of an older database in the order they registered, and new ones with the smallest number free', () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'old.db');
      const raw = new Database(path);
      migrate(raw, MIGRATIONS.slice(0, 4));
      raw.exec(`
        INSERT INTO agents (name, portals, last_seen, registered) VALUES ('zeta', '[]', '2026-11-02', '2026-11-01');
        INSERT INTO agents (name, portals, last_seen, registered) VALUES ('alpha', '[]', '2026-11-02', '2026-11-02');
        INSERT INTO vdisks (id, name, size, block_size, segment_size, segment_count, created) VALUES ('v', 'v', 0, 512, ${MiB}, 0, 'x');
        INSERT INTO exports (vdisk_id, agent, target_iqn, lun) VALUES ('v', 'zeta', 'iqn.2026-11.org.tabula:v', 0);
      `);
      raw.close();
      const db = new ControllerDb(path);
      try {
        expect(db.agents().map((a) => `${a.name} ${a.number}`)).to.deep.equal(['alpha 2', 'zeta 1']);
        expect(db.export('v', 'zeta')?.alua).to.equal('optimized');
        expect(db.registerAgent('zeta', [], [])).to.equal(1);
        expect(db.registerAgent('new', [], [])).to.equal(3);
        expect(db.registerAgent('new', [], [])).to.equal(3);
      } finally {
        db.close();
      }
    } finally {
      t.cleanup();
    }
  });
});

describe('controller: port groups in the ExportSet (fake agents over loopback gRPC)', function () {
  this.timeout(20_000);
  type Ctl = Awaited<ReturnType<typeof startTestController>>;
  let ctl: Ctl | undefined;
  const agents: FakeAgent[] = [];

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await ctl?.cleanup();
    ctl = undefined;
  });

  function exportOf(a: FakeAgent, vdiskId: string, from = 0): Export | undefined {
    const sets = a.received.slice(from).flatMap((m) => (m.body === 'exportSet' ? [m.exportSet] : []));
    return sets.at(-1)?.exports.find((e) => e.vdiskId === vdiskId);
  }

  const states = (e: Export | undefined): string[] => (e?.portGroups ?? []).map((g) => `${g.agent}:${g.id}:${g.state}:${g.relativePortIds.join(',')}`);

  it('numbers agents for good, lists both exporters with their states, and tells the survivor when the other is unavailable', async () => {
    ctl = await startTestController({ leaseMs: 800, leaseMarginMs: 200, ackTimeoutMs: 2000 });
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const a = new FakeAgent(ctl.address, 'a', { containers: [containerRef(CA, 8)], portals: ['127.0.0.1:3260', '127.0.0.2:3260'] });
    const b = new FakeAgent(ctl.address, 'b', { containers: [containerRef(CA, 8)] });
    agents.push(a, b);
    expect((await a.register()).agentNumber).to.equal(1);
    expect((await b.register()).agentNumber).to.equal(2);
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 4 * MiB });
    ctl.admin.AddExport({ vdisk: 'd', agent: 'a' });
    await a.next((m) => m.body === 'tableFull');
    const from = b.received.length;
    expect(ctl.admin.AddExport({ vdisk: 'd', agent: 'b', alua: 'non-optimized' }).alua).to.equal('non-optimized');
    await b.next((m) => m.body === 'tableFull', 5000, from);
    // Once b has acked its table, both hear of both groups, b's active/non-optimized.
    const settled = ['a:1:0:17,18', 'b:2:1:33'];
    await a.next((m) => m.body === 'exportSet' && states(m.exportSet.exports[0]).join() === settled.join());
    await b.next((m) => m.body === 'exportSet' && states(m.exportSet.exports[0]).join() === settled.join(), 5000, from);
    expect(exportOf(b, v.id)?.ownPortGroup).to.equal(2);
    expect(exportOf(a, v.id)?.ownPortGroup).to.equal(1);
    expect(ctl.admin.ListExports({}).exports.map((e) => `${e.agent} ${e.alua} ${e.aluaState}`)).to.deep.equal([
      'a optimized active/optimized',
      'b non-optimized active/non-optimized',
    ]);
    expect(() => ctl!.admin.AddExport({ vdisk: 'd', agent: 'a', alua: 'standby' })).to.throw(/ALUA state/);

    // b goes away: nothing changes within its lease, then a hears b is unavailable.
    const before = a.received.length;
    b.close();
    await a.next((m) => m.body === 'exportSet' && states(m.exportSet.exports[0]).includes(`b:2:${AluaState.Unavailable}:33`), 5000, before);
    const between = a.received.slice(before).filter((m) => m.body === 'exportSet').map((m) => (m.body === 'exportSet' ? states(m.exportSet.exports[0]) : []));
    expect(between.every((s) => s[1] === `b:2:${AluaState.ActiveNonOptimized}:33` || s[1] === `b:2:${AluaState.Unavailable}:33`)).to.equal(true);

    // b again, under the same name: the same number; transitioning until its table is in, then active again.
    const b2 = new FakeAgent(ctl.address, 'b', { containers: [containerRef(CA, 8)] });
    agents.push(b2);
    const back = a.received.length;
    expect((await b2.register()).agentNumber).to.equal(2);
    await a.next((m) => m.body === 'exportSet' && states(m.exportSet.exports[0])[1] === `b:2:${AluaState.ActiveNonOptimized}:33`, 5000, back);
  });

  it('a draining agent is transitioning for the others, and unavailable once it is gone', async () => {
    ctl = await startTestController({ leaseMs: 60_000 });
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const a = new FakeAgent(ctl.address, 'a', { containers: [containerRef(CA, 8)] });
    const b = new FakeAgent(ctl.address, 'b', { containers: [containerRef(CA, 8)] });
    agents.push(a, b);
    await a.register();
    await b.register();
    ctl.admin.CreateVdisk({ name: 'd', size: 4 * MiB });
    ctl.admin.AddExport({ vdisk: 'd', agent: 'a' });
    ctl.admin.AddExport({ vdisk: 'd', agent: 'b' });
    await a.next((m) => m.body === 'exportSet' && states(m.exportSet.exports[0]).join() === 'a:1:0:17,b:2:0:33');
    const from = a.received.length;
    b.stream.write({ body: 'heartbeat', heartbeat: { seq: 1, heldIos: 0, draining: true } });
    await a.next((m) => m.body === 'exportSet' && states(m.exportSet.exports[0])[1] === `b:2:${AluaState.Transitioning}:33`, 5000, from);
    // Gone after a drain: unavailable at once, without waiting for the (long) lease.
    const gone = a.received.length;
    b.close();
    await a.next((m) => m.body === 'exportSet' && states(m.exportSet.exports[0])[1] === `b:2:${AluaState.Unavailable}:33`, 5000, gone);
  });

  it('an agent back with the table it kept serving from is active at once, never transitioning', async () => {
    ctl = await startTestController({ leaseMs: 60_000 });
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const a = new FakeAgent(ctl.address, 'a', { containers: [containerRef(CA, 8)] });
    const b = new FakeAgent(ctl.address, 'b', { containers: [containerRef(CA, 8)] });
    agents.push(a, b);
    await a.register();
    await b.register();
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 4 * MiB });
    ctl.admin.AddExport({ vdisk: 'd', agent: 'a' });
    ctl.admin.AddExport({ vdisk: 'd', agent: 'b' });
    await a.next((m) => m.body === 'exportSet' && states(m.exportSet.exports[0]).join() === 'a:1:0:17,b:2:0:33');
    const kept = b.tables.get(v.id)!.version;
    b.close();
    const from = a.received.length;
    const b2 = new FakeAgent(ctl.address, 'b', { containers: [containerRef(CA, 8)] });
    agents.push(b2);
    await b2.register([{ vdiskId: v.id, version: kept }]);
    await b2.next((m) => m.body === 'exportSet' && states(m.exportSet.exports[0]).join() === 'a:1:0:17,b:2:0:33');
    const seen = a.received.slice(from).flatMap((m) => (m.body === 'exportSet' ? [states(m.exportSet.exports[0])[1]] : []));
    expect(seen.filter((x) => x !== 'b:2:0:33')).to.deep.equal([]);
  });
});
