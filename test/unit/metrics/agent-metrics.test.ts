// AgentMetrics' wrappers on their own, around a fake device and fake fault
// sinks: what each BlockDevice call counts as, errors by kind, the fault
// sink's outcomes, and series that go away with their device.
import { expect } from 'chai';
import { BlockDeviceError, type ProvisioningStatus } from '../../../src/blockdev/block-device.js';
import type { AgentDevice, DeviceSpec } from '../../../src/agent/device-port.js';
import type { FaultDecision, FaultSink } from '../../../src/agent/fault.js';
import type { ContainerResolver } from '../../../src/container/driver.js';
import { AgentMetrics } from '../../../src/metrics/index.js';
import { IoOp, MappingTable, SegmentState } from '../../../src/table/index.js';
import { parseExposition, valueOf, type Exposition } from './exposition.js';

/** Succeeds, except where `fail` says; records nothing of its own. */
class FakeDevice implements AgentDevice {
  readonly blockSize = 512;
  readonly blockCount = 1024;
  readonly thin = true;
  readonly version = 1;
  readonly fenced = false;
  readonly heldCount = 0;
  closed = false;
  fail: Error | null = null;

  async read(_lba: number, blocks: number): Promise<Buffer> {
    if (this.fail) throw this.fail;
    return Buffer.alloc(blocks * this.blockSize);
  }
  async write(): Promise<void> {
    if (this.fail) throw this.fail;
  }
  async flush(): Promise<void> {
    if (this.fail) throw this.fail;
  }
  async unmap(): Promise<void> {
    if (this.fail) throw this.fail;
  }
  async writeZeroes(): Promise<void> {
    if (this.fail) throw this.fail;
  }
  async provisioning(): Promise<ProvisioningStatus> {
    return { mapped: true, blocks: 1 };
  }
  async installTable(): Promise<void> {}
  async applyDelta(): Promise<void> {}
  fence(): void {}
  async close(): Promise<void> {
    this.closed = true;
  }
}

const noContainers: ContainerResolver = { get: () => undefined };

function spec(faults: FaultSink, vdiskId = 'v-1', vdiskName = 'disk0'): DeviceSpec {
  return {
    vdiskId,
    vdiskName,
    table: new MappingTable({ segmentCount: 1, segmentSize: 1 << 20, blockSize: 512, version: 0, name: vdiskName }),
    readOnly: false,
    faults,
    containers: noContainers,
    holdTimeoutMs: 1000,
  };
}

async function read(m: AgentMetrics): Promise<Exposition> {
  return parseExposition(await m.registry.metrics());
}

const answer = (d: FaultDecision): FaultSink => ({ fault: async () => d });

describe('metrics: AgentMetrics wrappers', () => {
  it('counts each BlockDevice call under its op, bytes from its blocks, and errors by kind', async () => {
    const m = new AgentMetrics();
    const inner = new FakeDevice();
    const dev = m.deviceFactory(() => inner)(spec(answer({ action: 'done' })));
    await dev.read(0, 8);
    await dev.write(0, Buffer.alloc(3 * 512));
    await dev.writeZeroes(0, 4, false); // WRITE SAME without UNMAP: a write of zeros
    await dev.writeZeroes(0, 16, true); // with UNMAP: an unmap
    await dev.unmap(0, 2);
    await dev.flush();
    inner.fail = new BlockDeviceError('out-of-range', 'beyond the end', 2000);
    await dev.read(2000, 1).catch(() => undefined);
    inner.fail = new Error('a bug');
    await dev.write(0, Buffer.alloc(512)).catch(() => undefined);

    const e = await read(m);
    const v = (name: string, labels: Record<string, string>): number | undefined => valueOf(e, name, { vdisk: 'disk0', ...labels });
    expect(v('tabula_agent_ios_total', { op: 'read' })).to.equal(2);
    expect(v('tabula_agent_io_bytes_total', { op: 'read' })).to.equal(9 * 512);
    expect(v('tabula_agent_ios_total', { op: 'write' })).to.equal(3);
    expect(v('tabula_agent_io_bytes_total', { op: 'write' })).to.equal(8 * 512);
    expect(v('tabula_agent_ios_total', { op: 'unmap' })).to.equal(2);
    expect(v('tabula_agent_io_bytes_total', { op: 'unmap' })).to.equal(18 * 512);
    expect(v('tabula_agent_ios_total', { op: 'flush' })).to.equal(1);
    expect(v('tabula_agent_io_errors_total', { kind: 'out-of-range' })).to.equal(1);
    expect(v('tabula_agent_io_errors_total', { kind: 'other' })).to.equal(1);
  });

  it('passes errors and results through unchanged', async () => {
    const m = new AgentMetrics();
    const inner = new FakeDevice();
    const dev = m.deviceFactory(() => inner)(spec(answer({ action: 'done' })));
    expect((await dev.read(0, 2)).length).to.equal(1024);
    const boom = new BlockDeviceError('read-error', 'medium error', 5);
    inner.fail = boom;
    let caught: unknown;
    await dev.read(5, 1).catch((e: unknown) => (caught = e));
    expect(caught).to.equal(boom);
    expect(dev.blockCount).to.equal(1024);
    expect(dev.version).to.equal(1);
  });

  it('drops a vdisk\'s series when its device closes', async () => {
    const m = new AgentMetrics();
    const inner = new FakeDevice();
    const dev = m.deviceFactory(() => inner)(spec(answer({ action: 'done' })));
    await dev.read(0, 1);
    expect(valueOf(await read(m), 'tabula_agent_ios_total', { vdisk: 'disk0', op: 'read' })).to.equal(1);
    await dev.close();
    expect(inner.closed).to.equal(true);
    expect(valueOf(await read(m), 'tabula_agent_ios_total', { vdisk: 'disk0', op: 'read' })).to.equal(undefined);
  });

  it('counts faults by state, answers by outcome, round trips of final answers, and rejections as timeouts', async () => {
    const m = new AgentMetrics();
    const fault = { vdiskId: 'v-1', version: 1, segment: 0, op: IoOp.Write, lba: 0, blocks: 1 };
    await m.faultSink(answer({ action: 'retry' })).fault({ ...fault, state: SegmentState.Zero });
    await m.faultSink(answer({ action: 'fail', reason: 'x' })).fault({ ...fault, state: SegmentState.Error });
    await m.faultSink(answer({ action: 'wait' })).fault({ ...fault, state: SegmentState.Invalid });
    const rejecting: FaultSink = { fault: () => Promise.reject(new Error('given up')) };
    let err: unknown;
    await m.faultSink(rejecting).fault({ ...fault, state: SegmentState.NoWrite }).catch((e: unknown) => (err = e));
    expect((err as Error).message).to.equal('given up');

    const e = await read(m);
    for (const s of ['zero', 'error', 'invalid', 'no-write']) expect(valueOf(e, 'tabula_agent_faults_total', { state: s }), s).to.equal(1);
    expect(valueOf(e, 'tabula_agent_faults_total', { state: 'normal' })).to.equal(0);
    for (const o of ['retry', 'fail', 'wait', 'timeout']) expect(valueOf(e, 'tabula_agent_fault_outcomes_total', { outcome: o }), o).to.equal(1);
    expect(valueOf(e, 'tabula_agent_fault_outcomes_total', { outcome: 'done' })).to.equal(0);
    expect(valueOf(e, 'tabula_agent_fault_round_trip_seconds_count')).to.equal(2);
  });

  it('keeps the inner sink\'s release, and leaves it out when there is none', async () => {
    const m = new AgentMetrics();
    expect(m.faultSink(answer({ action: 'done' })).release).to.equal(undefined);
    const withRelease: FaultSink = { fault: async () => ({ action: 'done' }), release: async (r) => ({ ok: true, version: r.version + 1 }) };
    const wrapped = m.faultSink(withRelease);
    expect(await wrapped.release?.({ vdiskId: 'v-1', version: 4, firstSegment: 0, segmentCount: 1 })).to.deep.equal({ ok: true, version: 5 });
  });
});
