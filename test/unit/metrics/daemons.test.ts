// A real controller and a real agent in one process, each with its metrics
// endpoint on a loopback port 0; I/O through the agent's iSCSI portal moves
// the counters on both sides, and what they serve parses as the Prometheus
// text format.
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent, type AgentHandle } from '../../../src/agent/index.js';
import { initContainer } from '../../../src/container/init.js';
import { startController, type ControllerHandle } from '../../../src/controller/daemon.js';
import { SegmentState } from '../../../src/table/index.js';
import type { RawInitiator } from '../../support/raw-initiator.js';
import { loginTo, read10, until, write10 } from '../agent/rig.js';
import { valueOf } from './exposition.js';
import { metrics, untilValue } from './scrape.js';
import { unmapCdb, unmapList } from '../../support/cdb.js';

const MiB = 1 << 20;
const BS = 512;
const BPS = MiB / BS; // blocks per 1 MiB segment
const IQN = 'iqn.2026-11.org.tabula:mdisk';

describe('metrics: controller and agent endpoints', function () {
  this.timeout(30_000);
  let dir: string;
  let ctl: ControllerHandle;
  let agent: AgentHandle;
  let ini: RawInitiator | undefined;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-metrics-'));
    const made = await initContainer(join(dir, 'c0.img'), { size: 17 * MiB });
    ctl = await startController({ dbPath: join(dir, 'controller.db'), listen: '127.0.0.1:0', metricsListen: '127.0.0.1:0', ackTimeoutMs: 3000 });
    const label = made.label;
    ctl.admin.AddContainer({ id: label.id, path: join(dir, 'c0.img'), size: label.size, dataOffset: label.dataOffset, segmentSize: label.segmentSize });
    agent = await startAgent({
      controller: ctl.address,
      name: 'm1',
      portals: ['127.0.0.1:0'],
      containers: [join(dir, '*.img')],
      metricsListen: '127.0.0.1:0',
      backoff: { initialMs: 50, maxMs: 200, jitter: 0.5 },
    });
    await until(() => ctl.admin.ListAgents({}).agents.some((a) => a.name === 'm1' && a.online && a.containers.includes(label.id)), 10_000, 'agent online');
    ctl.admin.CreateVdisk({ name: 'mdisk', size: 8 * MiB });
    ctl.admin.AddExport({ vdisk: 'mdisk', agent: 'm1', targetIqn: IQN, lun: 0 });
    await until(() => agent.exports().some((e) => e.tableVersion !== null && !e.fenced), 10_000, 'table loaded');
  });

  after(async () => {
    ini?.destroy();
    await agent?.close();
    await ctl?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('binds both endpoints on loopback ports of their own', () => {
    expect(ctl.metricsAddress).to.match(/^127\.0\.0\.1:\d+$/);
    expect(agent.metricsAddress).to.match(/^127\.0\.0\.1:\d+$/);
    expect(ctl.metricsAddress).to.not.equal(agent.metricsAddress);
  });

  it('counts I/O, faults, pushes, acks and allocations on both sides', async () => {
    const before = await metrics(ctl.metricsAddress as string);
    const allocatedBefore = valueOf(before, 'tabula_controller_segments_allocated_total') as number;
    expect(allocatedBefore).to.equal(0);

    ini = await loginTo(agent.portals[0]!.port, IQN);
    // First write to a thin (zero) segment: a fault, an allocation, a delta, an ack, a retry.
    const data = Buffer.alloc(8 * BS, 0x5a);
    expect((await ini.scsi(write10(16, 8), { write: data })).status).to.equal(0);
    const r = await ini.scsi(read10(16, 8), { read: 8 * BS });
    expect(r.status).to.equal(0);
    expect(r.data.equals(data)).to.equal(true);
    // A read of a zero segment: no container I/O, no fault, still an I/O.
    expect((await ini.scsi(read10(3 * BPS, 4), { read: 4 * BS })).status).to.equal(0);

    const a = await metrics(agent.metricsAddress as string);
    expect(valueOf(a, 'tabula_agent_ios_total', { vdisk: 'mdisk', op: 'write' })).to.equal(1);
    expect(valueOf(a, 'tabula_agent_io_bytes_total', { vdisk: 'mdisk', op: 'write' })).to.equal(8 * BS);
    expect(valueOf(a, 'tabula_agent_ios_total', { vdisk: 'mdisk', op: 'read' })).to.equal(2);
    expect(valueOf(a, 'tabula_agent_io_bytes_total', { vdisk: 'mdisk', op: 'read' })).to.equal(12 * BS);
    expect(valueOf(a, 'tabula_agent_faults_total', { state: 'zero' })).to.equal(1);
    expect(valueOf(a, 'tabula_agent_fault_outcomes_total', { outcome: 'retry' })).to.equal(1);
    expect(valueOf(a, 'tabula_agent_fault_outcomes_total', { outcome: 'timeout' })).to.equal(0);
    expect(valueOf(a, 'tabula_agent_fault_round_trip_seconds_count')).to.equal(1);
    expect(valueOf(a, 'tabula_agent_fault_round_trip_seconds_bucket', { le: '+Inf' })).to.equal(1);
    expect(valueOf(a, 'tabula_agent_fault_round_trip_seconds_bucket', { le: '0.0001' })).to.be.a('number');
    expect(valueOf(a, 'tabula_agent_controller_connected')).to.equal(1);
    expect(valueOf(a, 'tabula_agent_held_ios')).to.equal(0);
    expect(a.types.get('tabula_agent_ios_total')).to.equal('counter');
    expect(a.types.get('tabula_agent_fault_round_trip_seconds')).to.equal('histogram');
    expect(a.types.has('process_cpu_seconds_total')).to.equal(true);

    const c = await metrics(ctl.metricsAddress as string);
    const version = valueOf(c, 'tabula_controller_table_version', { vdisk: 'mdisk' }) as number;
    expect(version).to.be.greaterThan(0);
    expect(valueOf(a, 'tabula_agent_table_version', { vdisk: 'mdisk' })).to.equal(version);
    expect(valueOf(c, 'tabula_controller_agents_connected')).to.equal(1);
    expect(valueOf(c, 'tabula_controller_faults_total', { state: 'zero' })).to.equal(1);
    expect(valueOf(c, 'tabula_controller_fault_replies_total', { outcome: 'retry' })).to.equal(1);
    expect(valueOf(c, 'tabula_controller_fault_decision_seconds_count')).to.equal(1);
    expect(valueOf(c, 'tabula_controller_table_pushes_total', { kind: 'full' })).to.be.at.least(1);
    expect(valueOf(c, 'tabula_controller_table_pushes_total', { kind: 'delta' })).to.be.at.least(1);
    const acks = valueOf(c, 'tabula_controller_table_acks_total') as number;
    expect(acks).to.be.at.least(2);
    expect(valueOf(c, 'tabula_controller_table_ack_seconds_count')).to.be.at.least(2);
    expect(valueOf(c, 'tabula_controller_segments_allocated_total')).to.equal(1);
    const containerId = ctl.admin.ListContainers({}).containers[0]!.id;
    expect(valueOf(c, 'tabula_controller_container_segments', { container: containerId })).to.equal(16);
    expect(valueOf(c, 'tabula_controller_container_free_segments', { container: containerId })).to.equal(15);
    expect(valueOf(c, 'tabula_controller_fences_total')).to.equal(0);
    expect(c.types.has('nodejs_eventloop_lag_seconds')).to.equal(true);
  });

  it('counts unmaps and the segments they free', async () => {
    const list = unmapList(0, BPS);
    const u = await (ini as RawInitiator).scsi(unmapCdb(list.length), { write: list });
    expect(u.status).to.equal(0);
    const a = await metrics(agent.metricsAddress as string);
    expect(valueOf(a, 'tabula_agent_ios_total', { vdisk: 'mdisk', op: 'unmap' })).to.equal(1);
    expect(valueOf(a, 'tabula_agent_io_bytes_total', { vdisk: 'mdisk', op: 'unmap' })).to.equal(MiB);
    // Freed once every exporter acked the table where the segment is zero.
    await until(() => ctl.controller.allocator.freeSegments(ctl.admin.ListContainers({}).containers[0]!.id) === 16, 5000, 'segment freed');
    const c = await metrics(ctl.metricsAddress as string);
    expect(valueOf(c, 'tabula_controller_segments_freed_total')).to.equal(1);
    // The freed segment was scrubbed (a zero command), which is not a copy.
    expect(valueOf(c, 'tabula_controller_zero_commands_total')).to.equal(1);
    expect(valueOf(c, 'tabula_controller_zeros_done_total', { result: 'ok' })).to.equal(1);
    expect(valueOf(c, 'tabula_controller_copies_done_total', { result: 'ok' })).to.equal(0);
  });

  it('counts failed I/O by kind and faults by state', async () => {
    await ctl.admin.SetSegmentState({ vdisk: 'mdisk', first: 2, count: 1, state: SegmentState.Error });
    const r = await (ini as RawInitiator).scsi(read10(2 * BPS, 1), { read: BS });
    expect(r.status).to.equal(2); // CHECK CONDITION
    const a = await metrics(agent.metricsAddress as string);
    expect(valueOf(a, 'tabula_agent_io_errors_total', { vdisk: 'mdisk', kind: 'read-error' })).to.equal(1);
    expect(valueOf(a, 'tabula_agent_faults_total', { state: 'error' })).to.equal(1);
    // Repaired, so the snapshot below may be taken.
    await ctl.admin.SetSegmentState({ vdisk: 'mdisk', first: 2, count: 1, state: SegmentState.Zero });
  });

  it('times a fault that was told WAIT from arrival to its final answer, once', async () => {
    const c0 = await metrics(ctl.metricsAddress as string);
    const decisions = valueOf(c0, 'tabula_controller_fault_decision_seconds_count') as number;
    const retries = valueOf(c0, 'tabula_controller_fault_replies_total', { outcome: 'retry' }) as number;
    await ctl.admin.SetSegmentState({ vdisk: 'mdisk', first: 5, count: 1, state: SegmentState.Invalid });
    const write = (ini as RawInitiator).scsi(write10(5 * BPS, 1), { write: Buffer.alloc(BS, 7) });
    const held = await untilValue(ctl.metricsAddress as string, 'tabula_controller_fault_replies_total', { outcome: 'wait' }, 1);
    expect(valueOf(held, 'tabula_controller_faults_total', { state: 'invalid' })).to.equal(1);
    expect(valueOf(held, 'tabula_controller_fault_decision_seconds_count')).to.equal(decisions);
    await ctl.admin.SetSegmentState({ vdisk: 'mdisk', first: 5, count: 1, state: SegmentState.Normal });
    expect((await write).status).to.equal(0);
    const c = await metrics(ctl.metricsAddress as string);
    expect(valueOf(c, 'tabula_controller_fault_decision_seconds_count')).to.equal(decisions + 1);
    expect(valueOf(c, 'tabula_controller_fault_replies_total', { outcome: 'retry' })).to.equal(retries + 1);
    const a = await metrics(agent.metricsAddress as string);
    expect(valueOf(a, 'tabula_agent_fault_outcomes_total', { outcome: 'wait' })).to.equal(1);
    expect(valueOf(a, 'tabula_agent_faults_total', { state: 'invalid' })).to.equal(1);
  });

  it('counts the copy command of a copy-on-write after a snapshot', async () => {
    await ctl.admin.SnapshotVdisk({ vdisk: 'mdisk', name: 'msnap' });
    const c0 = await metrics(ctl.metricsAddress as string);
    expect(valueOf(c0, 'tabula_controller_table_version', { vdisk: 'msnap' })).to.be.a('number');
    expect(valueOf(c0, 'tabula_controller_copy_commands_total')).to.equal(0);
    // Segment 5 is shared with the snapshot now: a write faults no-write, one agent copies, then RETRY.
    const w = await (ini as RawInitiator).scsi(write10(5 * BPS + 1, 1), { write: Buffer.alloc(BS, 9) });
    expect(w.status).to.equal(0);
    const c = await metrics(ctl.metricsAddress as string);
    expect(valueOf(c, 'tabula_controller_faults_total', { state: 'no-write' })).to.equal(1);
    expect(valueOf(c, 'tabula_controller_copy_commands_total')).to.equal(1);
    expect(valueOf(c, 'tabula_controller_copies_done_total', { result: 'ok' })).to.equal(1);
    expect(valueOf(c, 'tabula_controller_copies_done_total', { result: 'failed' })).to.equal(0);
    const a = await metrics(agent.metricsAddress as string);
    expect(valueOf(a, 'tabula_agent_faults_total', { state: 'no-write' })).to.equal(1);
  });

  it('answers other paths with 404 and other methods with 405', async () => {
    const nf = await fetch(`http://${agent.metricsAddress}/`);
    expect(nf.status).to.equal(404);
    await nf.text();
    const post = await fetch(`http://${ctl.metricsAddress}/metrics`, { method: 'POST' });
    expect(post.status).to.equal(405);
    expect(post.headers.get('allow')).to.equal('GET, HEAD');
    await post.text();
  });
});
