// Deadlines on what the controller sends and waits for (issue 19), with
// fake agents over loopback gRPC: a connected agent that never answers a
// zero or a copy, or never acks a snapshot's table version. The operation
// ends within its deadline (or goes on with another agent), and what the
// silent agent might still write stays out of use until it answers.
import { expect } from 'chai';
import { AdminError } from '../../../src/controller/admin.js';
import { commandDeadlineMs } from '../../../src/controller/agent-commands.js';
import { checkInvariants } from '../../../src/controller/check.js';
import { SegmentState } from '../../../src/table/index.js';
import { CA, CB, FakeAgent, MiB, containerRef, sleep, startTestController, until } from './helpers.js';

type Ctl = Awaited<ReturnType<typeof startTestController>>;
type AgentOpts = ConstructorParameters<typeof FakeAgent>[2];

const COMMAND_MS = 200;

describe('controller deadlines (silent agents)', () => {
  let ctl: Ctl;
  const agents: FakeAgent[] = [];

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await ctl?.cleanup();
  });

  async function agent(name: string, containers: string[], opts: AgentOpts = {}): Promise<FakeAgent> {
    const a = new FakeAgent(ctl.address, name, { containers: containers.map((c) => containerRef(c, 8)), ...opts });
    agents.push(a);
    await a.register();
    return a;
  }
  const used = (c: string): number => ctl.db.containerSegmentsUsed(c);
  const events = (kind: string): string[] =>
    ctl.db.sql.prepare('SELECT message FROM events WHERE kind = ? ORDER BY id').pluck().all(kind) as string[];

  it('a zero command past its deadline: the slot goes on to other work, its segments wait for the silent agent and are freed by its late answer', async () => {
    ctl = await startTestController({ commandTimeoutMs: COMMAND_MS, scrub: { retryMinMs: 20, retryMaxMs: 50 } });
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const a1 = await agent('a1', [CA], { zero: 'manual' });
    const a2 = await agent('a2', [CA]);
    ctl.admin.CreateVdisk({ name: 'd', size: 2 * MiB, thick: true });
    await ctl.admin.RemoveVdisk({ name: 'd' });
    const m = await a1.next((x) => x.body === 'zeroCommand');
    const z = m.body === 'zeroCommand' ? m.zeroCommand : undefined;
    await until(() => events('command').length > 0, 5000, 'the deadline');
    expect(events('command')[0]).to.match(new RegExp(`^no answer: agent a1 did not finish command ${z!.commandId} \\(zeroing of 2097152 bytes of ${CA}@0\\) within ${commandDeadlineMs(COMMAND_MS, 2 * MiB)} ms$`));
    expect(ctl.controller.commands.overdue('a1')).to.equal(1);
    // Not sent again to a2 (its late zeroing could land after a2's, on reused space), not freed.
    await sleep(300);
    expect(a2.zeros).to.have.length(0);
    expect(used(CA)).to.equal(2);
    expect(ctl.controller.scrubber.pending(CA)).to.equal(2);
    // New work goes to a2 meanwhile.
    ctl.admin.CreateVdisk({ name: 'e', size: 1 * MiB, thick: true });
    await ctl.admin.RemoveVdisk({ name: 'e' });
    await until(() => a2.zeros.length === 1 && used(CA) === 2, 3000, 'a2 zeroes the new space');
    // a1 resumes and answers: its segments are free.
    a1.copyDone(z!.commandId);
    await until(() => used(CA) === 0, 3000, 'freed by the late answer');
    expect(ctl.controller.commands.overdue('a1')).to.equal(0);
    expect(checkInvariants(ctl.db)).to.deep.equal([]);
  });

  it('an overdue zero outlives its agent\'s stream: owed until the agent is back and has had its deadline, then sent again', async () => {
    ctl = await startTestController({ commandTimeoutMs: COMMAND_MS, scrub: { retryMinMs: 20, retryMaxMs: 50 } });
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const a1 = await agent('a1', [CA], { zero: 'manual' });
    ctl.admin.CreateVdisk({ name: 'd', size: 2 * MiB, thick: true });
    await ctl.admin.RemoveVdisk({ name: 'd' });
    await a1.next((x) => x.body === 'zeroCommand');
    await until(() => ctl.controller.commands.overdue('a1') === 1, 5000, 'the deadline');
    // The stream goes (keepalive, a restart): a resumed process may still run what it had read.
    a1.close();
    await until(() => ctl.controller.agents.link('a1') === undefined, 2000, 'a1 gone');
    await sleep(commandDeadlineMs(COMMAND_MS, 2 * MiB) + 100);
    expect(ctl.controller.commands.overdue('a1'), 'still owed while a1 is away').to.equal(1);
    expect(used(CA)).to.equal(2);
    // Back, it answers nothing: after its deadline the segments are zeroed again (by it) and freed.
    const back = await agent('a1', [CA]);
    await until(() => used(CA) === 0, 5000, 'zeroed after a1 had its time');
    expect(back.zeros).to.have.length(1);
    expect(ctl.controller.commands.overdue('a1')).to.equal(0);
    expect(checkInvariants(ctl.db)).to.deep.equal([]);
  });

  it('a migration copy past its deadline is done again by another agent; its destination stays reserved until the silent agent answers', async () => {
    ctl = await startTestController({ commandTimeoutMs: COMMAND_MS, scrub: { retryMinMs: 20, retryMaxMs: 50 } });
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    ctl.admin.CreateVdisk({ name: 'd', size: 2 * MiB, thick: true });
    ctl.admin.AddContainer({ id: CB, path: '/c/b', size: 9 * MiB, dataOffset: MiB });
    const a1 = await agent('a1', [CA, CB], { copy: 'manual' });
    await agent('a2', [CA, CB]);
    ctl.admin.MigrateVdisk({ vdisk: 'd', toContainer: CB });
    await a1.next((x) => x.body === 'copyCommand');
    await until(() => ctl.db.migration(ctl.db.findVdisk('d')!.id)?.state === 'done', 10_000, 'the migration done through a2');
    expect(ctl.db.segmentRows(ctl.db.findVdisk('d')!.id).every((r) => r.containerId === CB && r.state === SegmentState.Normal)).to.equal(true);
    // a1's destinations (one per segment it was sent; the migration copies several at once): neither free nor mapped until a1 answers.
    expect(a1.copies.length).to.be.within(1, 2);
    expect(ctl.controller.allocator.reservedCount).to.equal(a1.copies.length);
    expect(ctl.controller.commands.overdue('a1')).to.equal(a1.copies.length);
    expect(checkInvariants(ctl.db)).to.deep.equal([]);
    for (const c of a1.copies) a1.copyDone(c.commandId, 'stopped');
    await until(() => ctl.controller.allocator.reservedCount === 0 && used(CB) === 2 && ctl.controller.scrubber.pending() === 0, 5000, 'given up and scrubbed');
    expect(checkInvariants(ctl.db)).to.deep.equal([]);
  });

  it('a snapshot whose exporter does not ack fails at the ack deadline, naming it; the source converges once it acks', async () => {
    ctl = await startTestController({ ackTimeoutMs: 300 });
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const v = ctl.admin.CreateVdisk({ name: 'd', size: 2 * MiB, thick: true });
    const as: FakeAgent[] = [];
    for (const n of ['a1', 'a2']) {
      const a = await agent(n, [CA]);
      ctl.admin.AddExport({ vdisk: 'd', agent: n });
      await a.next((x) => x.body === 'tableFull');
      as.push(a);
    }
    const a2 = as[1] as FakeAgent;
    a2.autoAck = false;
    const t0 = performance.now();
    const err = await ctl.admin.SnapshotVdisk({ vdisk: 'd', name: 's1' }).then(
      () => null,
      (e: Error) => e,
    );
    const tookMs = performance.now() - t0;
    expect(err).to.be.instanceOf(AdminError);
    expect(err!.message).to.match(/^snapshot of vdisk d abandoned: agent a2 fenced: no ack of table version \d+ within 300 ms$/);
    // Bounded: the ack deadline, not a wait for a2 (generous slack for a loaded machine).
    expect(tookMs).to.be.below(10_000);
    expect(ctl.db.findVdisk('s1')).to.equal(undefined);
    // a2 resumes: it acks what it was sent, and the source's entries are writable again.
    const delta = await a2.next((x) => x.body === 'tableDelta');
    if (delta.body === 'tableDelta') a2.ack(v.id, delta.tableDelta.toVersion);
    await until(() => ctl.db.segmentRows(v.id).every((r) => r.state === SegmentState.Normal), 5000, 'the source writable again');
    expect(checkInvariants(ctl.db)).to.deep.equal([]);
  });
});
