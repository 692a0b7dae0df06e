// The agent's metrics against a fake controller, which lets a test say WAIT,
// say nothing (hold timeout), drop the stream and fence: the outcomes,
// held I/Os, connection state, reconnects and fencing show up as they happen.
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent, type AgentHandle } from '../../../src/agent/index.js';
import { SegmentState } from '../../../src/table/index.js';
import { FaultAction } from '../../../src/wire/proto-types.js';
import type { RawInitiator } from '../../support/raw-initiator.js';
import { FakeController, type FakeStream } from '../agent/fake-controller.js';
import { BPS, BS, CONTAINER_ID, IQN, SEG, SEGS, VDISK_ID, exportOf, loginTo, makeContainer, normal, write10, zero } from '../agent/rig.js';
import { valueOf } from './exposition.js';
import { metrics, untilValue } from './scrape.js';

async function exportDisk(stream: FakeStream, version: number): Promise<void> {
  stream.send({ body: 'exportSet', exportSet: { exports: [exportOf()] } });
  stream.send({
    body: 'tableFull',
    tableFull: { vdiskId: VDISK_ID, version, segmentSize: SEG, blockSize: BS, segmentCount: SEGS, containers: [CONTAINER_ID], extents: [normal(0, 2), zero(2, SEGS - 2)] },
  });
  expect((await stream.take('tableAck')).tableAck.version).to.equal(version);
}

describe('metrics: agent against a fake controller', function () {
  this.timeout(20_000);
  let dir: string;
  let ctl: FakeController;
  let agent: AgentHandle;
  let ini: RawInitiator | undefined;
  let addr: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-metrics-agent-'));
    await makeContainer(dir);
    ctl = await FakeController.start();
    agent = await startAgent({
      controller: ctl.address,
      name: 'agent-a',
      portals: ['127.0.0.1:0'],
      containers: [join(dir, '*.img')],
      holdTimeoutMs: 1000,
      metricsListen: ':0',
      backoff: { initialMs: 50, maxMs: 200, jitter: 0.5 },
      welcomeTimeoutMs: 2000,
    });
    addr = agent.metricsAddress as string;
  });

  after(async () => {
    ini?.destroy();
    await agent?.close();
    await ctl?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('binds ":0" on loopback', () => {
    expect(addr).to.match(/^127\.0\.0\.1:\d+$/);
  });

  it('counts WAIT answers, held I/O, and the hold timeout', async () => {
    const { stream } = await ctl.accept();
    await exportDisk(stream, 1);
    const e0 = await metrics(addr);
    expect(valueOf(e0, 'tabula_agent_controller_connected')).to.equal(1);
    expect(valueOf(e0, 'tabula_agent_table_version', { vdisk: 'disk0' })).to.equal(1);
    expect(valueOf(e0, 'tabula_agent_vdisk_fenced', { vdisk: 'disk0' })).to.equal(0);
    expect(valueOf(e0, 'tabula_agent_controller_reconnects_total')).to.equal(0);

    ini = await loginTo(agent.portals[0]!.port, IQN);
    const write = ini.scsi(write10(2 * BPS, 1), { write: Buffer.alloc(BS, 1) });
    const f = await stream.take('fault');
    expect(f.fault.state).to.equal(SegmentState.Zero);
    const held = await metrics(addr);
    expect(valueOf(held, 'tabula_agent_held_ios')).to.equal(1);
    expect(valueOf(held, 'tabula_agent_faults_total', { state: 'zero' })).to.equal(1);
    stream.send({ body: 'faultReply', faultReply: { faultId: f.fault.faultId, action: FaultAction.Wait, tableVersion: 0, senseKey: 0, asc: 0, ascq: 0, reason: 'test' } });
    await untilValue(addr, 'tabula_agent_fault_outcomes_total', { outcome: 'wait' }, 1);

    // No further answer: the device fails the write NOT READY at its hold timeout, then the fault is given up.
    const r = await write;
    expect(r.status).to.equal(2);
    expect(r.sense?.[2]! & 0x0f).to.equal(0x02);
    const e = await untilValue(addr, 'tabula_agent_fault_outcomes_total', { outcome: 'timeout' }, 1);
    expect(valueOf(e, 'tabula_agent_io_errors_total', { vdisk: 'disk0', kind: 'not-ready' })).to.equal(1);
    expect(valueOf(e, 'tabula_agent_held_ios')).to.equal(0);
    expect(valueOf(e, 'tabula_agent_fault_round_trip_seconds_count')).to.equal(0);
    expect(valueOf(e, 'tabula_agent_fault_outcomes_total', { outcome: 'retry' })).to.equal(0);
  });

  it('shows the link going down, the reconnect, and a fence', async () => {
    ctl.streams.at(-1)!.end();
    await untilValue(addr, 'tabula_agent_controller_connected', {}, 0);
    const { stream } = await ctl.accept();
    const e = await untilValue(addr, 'tabula_agent_controller_connected', {}, 1);
    expect(valueOf(e, 'tabula_agent_controller_reconnects_total')).to.equal(1);

    stream.send({ body: 'fence', fence: { vdiskId: VDISK_ID, reason: 'test' } });
    const fenced = await untilValue(addr, 'tabula_agent_vdisk_fenced', { vdisk: 'disk0' }, 1);
    expect(valueOf(fenced, 'tabula_agent_table_version', { vdisk: 'disk0' })).to.equal(undefined);
  });
});
