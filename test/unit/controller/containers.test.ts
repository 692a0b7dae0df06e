import { expect } from 'chai';
import { SegmentState } from '../../../src/table/index.js';
import { FaultAction, type ContainerSet } from '../../../src/wire/proto-types.js';
import { isShared } from '../../../src/controller/agent-registry.js';
import { CA, CB, FakeAgent, MiB, containerRef, startTestController, until } from './helpers.js';

type Ctl = Awaited<ReturnType<typeof startTestController>>;

/** The newest ContainerSet the agent got, as id -> shared. */
function lastSet(a: FakeAgent): Record<string, boolean> | undefined {
  const m = a.received.filter((x) => x.body === 'containerSet').pop();
  if (m === undefined || m.body !== 'containerSet') return undefined;
  return Object.fromEntries((m.containerSet as ContainerSet).containers.map((c) => [c.id, c.shared]));
}

describe('controller: containers of running agents (issue 15)', () => {
  let ctl: Ctl;
  const agents: FakeAgent[] = [];

  async function agent(name: string, opts: ConstructorParameters<typeof FakeAgent>[2] = {}): Promise<FakeAgent> {
    const a = new FakeAgent(ctl.address, name, opts);
    agents.push(a);
    await a.register();
    return a;
  }

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await ctl?.cleanup();
  });

  it('a container added after agents connected: each is asked to rescan, its ContainerUpdate is accepted, and allocation uses the container at once', async () => {
    ctl = await startTestController();
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    // Both already see CB's disk, but CB is not registered yet: refused at Register.
    const a1 = await agent('a1', { containers: [containerRef(CA, 8), containerRef(CB, 8)] });
    const a2 = await agent('a2', { containers: [containerRef(CA, 8), containerRef(CB, 8)] });
    await a1.next((m) => m.body === 'error' && /not registered/.test(m.error.message));
    expect(ctl.admin.ListAgents({}).agents.map((a) => a.containers)).to.deep.equal([[CA], [CA]]);
    // CA full: a thin vdisk exported on both has nowhere to allocate.
    ctl.admin.CreateVdisk({ name: 'fill', size: 8 * MiB, thick: true });
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 2 * MiB });
    for (const a of [a1, a2]) {
      ctl.admin.AddExport({ vdisk: 'd', agent: a.name });
      await a.next((m) => m.body === 'tableFull' && m.tableFull.vdiskId === v.id);
    }
    const full = await a1.sendFault({ vdiskId: v.id, segment: 0, state: SegmentState.Zero }).reply();
    expect(full.action).to.equal(FaultAction.Fail);

    const from = [a1.received.length, a2.received.length];
    ctl.admin.AddContainer({ id: CB, path: '/c/b', size: 9 * MiB, dataOffset: MiB });
    await a1.next((m) => m.body === 'rescan', 5000, from[0]);
    await a2.next((m) => m.body === 'rescan', 5000, from[1]);
    a1.containerUpdate([containerRef(CA, 8), containerRef(CB, 8)]);
    a2.containerUpdate([containerRef(CA, 8), containerRef(CB, 8)]);
    await until(() => ctl.admin.ListAgents({}).agents.every((a) => a.containers.includes(CB)), 5000, 'both agents claim CB');
    expect(ctl.admin.ListContainers({}).containers.find((c) => c.id === CB)?.agents).to.deep.equal(['a1', 'a2']);

    const ok = await a1.sendFault({ vdiskId: v.id, segment: 0, state: SegmentState.Zero }).reply();
    expect(ok.action).to.equal(FaultAction.Retry);
    await until(() => a1.tables.get(v.id)?.get(0).container === CB, 5000, 'segment 0 on CB');
  });

  it('records reachability per agent and container; an unreachable container is kept but not used for allocation', async () => {
    ctl = await startTestController();
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const a1 = await agent('a1', { containers: [containerRef(CA, 8)], hostId: 'h1' });
    a1.containerUpdate([{ ...containerRef(CA, 8), reachable: false, error: 'target 10.0.0.1:3260 unreachable', kind: 'iscsi' }]);
    await until(() => (ctl.admin.ListAgents({}).agents[0]?.unreachable ?? []).length === 1, 5000, 'reported unreachable');
    const info = ctl.admin.ListAgents({}).agents[0]!;
    expect(info).to.deep.include({ name: 'a1', host: 'h1', containers: [CA], unreachable: [`${CA}: target 10.0.0.1:3260 unreachable`] });
    expect(ctl.admin.ListContainers({}).containers[0]).to.deep.include({ agents: ['a1'], unreachable: ['a1: target 10.0.0.1:3260 unreachable'] });
    expect(ctl.db.agentContainers('a1')).to.deep.equal([]);
    expect(ctl.db.agentClaims('a1')).to.deep.equal([{ id: CA, path: containerRef(CA, 8).path, reachable: false, error: 'target 10.0.0.1:3260 unreachable' }]);
    // Back again.
    a1.containerUpdate([containerRef(CA, 8)]);
    await until(() => ctl.db.agentContainers('a1').length === 1, 5000, 'reachable again');
    expect(ctl.admin.ListAgents({}).agents[0]?.unreachable).to.deep.equal([]);
    const events = ctl.db.sql.prepare('SELECT message FROM events WHERE subject = ?').pluck().all('a1') as string[];
    expect(events).to.include.members([`container ${CA} unreachable: target 10.0.0.1:3260 unreachable`, `container ${CA} reachable again`]);
  });

  it('tells agents which containers are shared: reached from more than one host', async () => {
    ctl = await startTestController();
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    ctl.admin.AddContainer({ id: CB, path: '/c/b', size: 9 * MiB, dataOffset: MiB });
    const a1 = await agent('a1', { containers: [containerRef(CA, 8), containerRef(CB, 8)], hostId: 'h1' });
    await until(() => lastSet(a1) !== undefined, 5000, 'a ContainerSet');
    expect(lastSet(a1)).to.deep.equal({ [CA]: false, [CB]: false });
    // Same host: a page cache in common, nothing shared.
    const a2 = await agent('a2', { containers: [containerRef(CA, 8)], hostId: 'h1' });
    await until(() => lastSet(a2) !== undefined, 5000, 'a ContainerSet');
    expect(lastSet(a2)).to.deep.equal({ [CA]: false });
    expect(lastSet(a1)).to.deep.equal({ [CA]: false, [CB]: false });
    // Another host reaches CA: both hear it is shared; CB stays private.
    const a3 = await agent('a3', { containers: [containerRef(CA, 8)], hostId: 'h2' });
    await until(() => lastSet(a1)?.[CA] === true && lastSet(a2)?.[CA] === true && lastSet(a3)?.[CA] === true, 5000, 'CA shared everywhere');
    expect(lastSet(a1)).to.deep.equal({ [CA]: true, [CB]: false });
    expect(ctl.admin.ListContainers({}).containers.map((c) => [c.id, c.shared])).to.deep.equal([
      [CA, true],
      [CB, false],
    ]);
    // The ContainerSet comes before the ExportSet on a new stream.
    const bodies = a3.received.map((m) => m.body);
    expect(bodies.indexOf('containerSet')).to.be.lessThan(bodies.indexOf('exportSet'));
  });

  it('isShared: distinct hosts, an agent without one counting as its own', () => {
    expect(isShared([])).to.equal(false);
    expect(isShared([{ agent: 'a', host: 'h' }, { agent: 'b', host: 'h' }])).to.equal(false);
    expect(isShared([{ agent: 'a', host: 'h' }, { agent: 'b', host: 'g' }])).to.equal(true);
    expect(isShared([{ agent: 'a', host: '' }, { agent: 'b', host: '' }])).to.equal(true);
    expect(isShared([{ agent: 'a', host: '' }])).to.equal(false);
  });
});
