import { expect } from 'chai';
import { MemoryBlockDevice } from '../../../src/blockdev/memory-device.js';
import type { WriteOptions } from '../../../src/blockdev/block-device.js';
import { ScsiTargetDevice } from '../../../src/scsi/target-device.js';
import { TaskAttribute } from '../../../src/scsi/port.js';
import { cdb, expectGood, request, TARGET } from './helpers.js';

/** A device whose writes wait until released, logging when each I/O starts and ends. */
class GatedDevice extends MemoryBlockDevice {
  readonly events: string[] = [];
  private gates: Array<() => void> = [];
  holdWrites = true;

  override async write(lba: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    this.events.push(`write ${lba} start`);
    if (this.holdWrites) await new Promise<void>((resolve) => this.gates.push(resolve));
    await super.write(lba, data, opts);
    this.events.push(`write ${lba} end`);
  }

  override async read(lba: number, blocks: number): Promise<Buffer> {
    this.events.push(`read ${lba}`);
    return super.read(lba, blocks);
  }

  release(): void {
    const g = this.gates;
    this.gates = [];
    for (const go of g) go();
  }

  get waiting(): number {
    return this.gates.length;
  }
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

function setup(): { target: ScsiTargetDevice; dev: GatedDevice } {
  const target = new ScsiTargetDevice({ name: TARGET });
  const dev = new GatedDevice(64);
  target.addLun(0, dev);
  return { target, dev };
}

describe('command concurrency', () => {
  it('runs ordinary commands concurrently', async () => {
    const { target, dev } = setup();
    const w1 = target.execute(request(cdb.write10(1, 1), { dataOut: Buffer.alloc(512, 1) }));
    const w2 = target.execute(request(cdb.write10(2, 1), { dataOut: Buffer.alloc(512, 2) }));
    await tick();
    expect(dev.waiting).to.equal(2);
    dev.release();
    expectGood(await w1);
    expectGood(await w2);
  });

  it('COMPARE AND WRITE waits for commands in progress and holds off new ones', async () => {
    const { target, dev } = setup();
    const w1 = target.execute(request(cdb.write10(5, 1), { dataOut: Buffer.alloc(512, 0x11) }));
    await tick();
    const caw = target.execute(request(cdb.caw(5n, 1), { dataOut: Buffer.concat([Buffer.alloc(512, 0x11), Buffer.alloc(512, 0x22)]) }));
    await tick();
    const w2 = target.execute(request(cdb.write10(6, 1), { dataOut: Buffer.alloc(512, 0x33) }));
    await tick();
    // only the first write has started: CAW has not read, the later write is held
    expect(dev.events).to.deep.equal(['write 5 start']);
    dev.release();
    await tick();
    await tick();
    // the first write completed, then the CAW read (and sees its data) and started writing
    expect(dev.events.slice(0, 4)).to.deep.equal(['write 5 start', 'write 5 end', 'read 5', 'write 5 start']);
    dev.holdWrites = false;
    dev.release();
    expectGood(await w1);
    expectGood(await caw);
    expectGood(await w2);
    expect(dev.events.indexOf('write 6 start')).to.be.greaterThan(dev.events.lastIndexOf('write 5 end'));
    const back = await target.execute(request(cdb.read10(5, 2)));
    expect([back.dataIn![0], back.dataIn![512]]).to.deep.equal([0x22, 0x33]);
  });

  it('an ORDERED command is a barrier', async () => {
    const { target, dev } = setup();
    const w1 = target.execute(request(cdb.write10(1, 1), { dataOut: Buffer.alloc(512, 1) }));
    await tick();
    const ordered = target.execute(request(cdb.write10(2, 1), { dataOut: Buffer.alloc(512, 2), attr: TaskAttribute.Ordered }));
    const w3 = target.execute(request(cdb.write10(3, 1), { dataOut: Buffer.alloc(512, 3) }));
    await tick();
    expect(dev.events).to.deep.equal(['write 1 start']);
    dev.release();
    await tick();
    await tick();
    expect(dev.events).to.deep.equal(['write 1 start', 'write 1 end', 'write 2 start']);
    dev.holdWrites = false;
    dev.release();
    await Promise.all([w1, ordered, w3]);
    expect(dev.events.slice(3)).to.deep.equal(['write 2 end', 'write 3 start', 'write 3 end']);
  });

  it('many COMPARE AND WRITEs on one block serialise (lock semantics)', async () => {
    const { target, dev } = setup();
    dev.holdWrites = false;
    await target.execute(request(cdb.write10(0, 1), { dataOut: Buffer.alloc(512, 0) }));
    // 20 initiators try to take the "lock" 0 -> k; exactly one wins
    const tries = Array.from({ length: 20 }, (_, k) =>
      target.execute(request(cdb.caw(0n, 1), { dataOut: Buffer.concat([Buffer.alloc(512, 0), Buffer.alloc(512, k + 1)]) })),
    );
    const results = await Promise.all(tries);
    expect(results.filter((r) => r.status === 0).length).to.equal(1);
    expect(results.filter((r) => r.status === 2).length).to.equal(19);
  });
});
