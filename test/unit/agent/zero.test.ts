// ZeroCommand (the controller's scrub of freed space) at the agent: zeroes
// exactly the range of the container's data area, durably, and answers
// CopyDone; a bad range or container gets ok=false with the reason and the
// agent goes on working.
import { expect } from 'chai';
import { runZero } from '../../../src/agent/zero.js';
import { MapResolver, type ContainerDriver } from '../../../src/container/driver.js';
import { CONTAINER_ID, DATA_OFFSET, SEG, readContainer, useRig, writeContainer } from './rig.js';

describe('agent daemon: ZeroCommand', function () {
  this.timeout(20_000);
  const fx = useRig();

  it('zeroes exactly the range (whole segments, not aligned to anything larger) and answers CopyDone ok', async () => {
    const { stream } = await fx.ctl.accept();
    const old = Buffer.alloc(6 * SEG, 0xa5);
    writeContainer(fx.rig.containerPath, 2 * SEG, old);
    stream.send({ body: 'zeroCommand', zeroCommand: { commandId: 7, container: CONTAINER_ID, offset: 3 * SEG, length: 3 * SEG } });
    const done = await stream.take('copyDone');
    expect(done.copyDone).to.deep.equal({ commandId: 7, ok: true, error: '' });
    expect(readContainer(fx.rig.containerPath, 3 * SEG, 3 * SEG).equals(Buffer.alloc(3 * SEG)), 'zeroed').to.equal(true);
    expect(readContainer(fx.rig.containerPath, 2 * SEG, SEG).equals(Buffer.alloc(SEG, 0xa5)), 'segment before kept').to.equal(true);
    expect(readContainer(fx.rig.containerPath, 6 * SEG, 2 * SEG).equals(Buffer.alloc(2 * SEG, 0xa5)), 'segments after kept').to.equal(true);
  });

  it('answers ok=false for a range beyond the data area or a container it does not reach, and goes on working', async () => {
    const { stream } = await fx.ctl.accept();
    const dataSize = (4 << 20) - DATA_OFFSET;
    writeContainer(fx.rig.containerPath, dataSize - SEG, Buffer.alloc(SEG, 0x5a));
    stream.send({ body: 'zeroCommand', zeroCommand: { commandId: 1, container: CONTAINER_ID, offset: dataSize - SEG, length: 2 * SEG } });
    const beyond = await stream.take('copyDone');
    expect(beyond.copyDone.commandId).to.equal(1);
    expect(beyond.copyDone.ok).to.equal(false);
    expect(beyond.copyDone.error).to.match(/beyond the data area \(3145728 bytes\)/);
    expect(readContainer(fx.rig.containerPath, dataSize - SEG, SEG).equals(Buffer.alloc(SEG, 0x5a)), 'nothing zeroed').to.equal(true);

    stream.send({ body: 'zeroCommand', zeroCommand: { commandId: 2, container: 'deadbeef-0000-4000-8000-000000000000', offset: 0, length: SEG } });
    const elsewhere = await stream.take('copyDone');
    expect(elsewhere.copyDone).to.include({ commandId: 2, ok: false });
    expect(elsewhere.copyDone.error).to.match(/container not reachable from this agent/);

    stream.send({ body: 'zeroCommand', zeroCommand: { commandId: 3, container: CONTAINER_ID, offset: dataSize - SEG, length: SEG } });
    expect((await stream.take('copyDone')).copyDone).to.deep.equal({ commandId: 3, ok: true, error: '' });
    expect(readContainer(fx.rig.containerPath, dataSize - SEG, SEG).equals(Buffer.alloc(SEG)), 'last segment zeroed').to.equal(true);
  });
});

describe('agent zero (runZero)', () => {
  /** A driver that records calls; `fail` makes discard throw. */
  function stubDriver(fail?: string): { driver: ContainerDriver; calls: string[] } {
    const calls: string[] = [];
    const driver = {
      kind: 'stub',
      id: CONTAINER_ID,
      path: '/stub',
      dataSize: 16 * SEG,
      discard: (offset: number, length: number) => {
        calls.push(`discard ${offset}+${length}`);
        return fail === undefined ? Promise.resolve() : Promise.reject(new Error(fail));
      },
      flush: () => {
        calls.push('flush');
        return Promise.resolve();
      },
    } as unknown as ContainerDriver;
    return { driver, calls };
  }

  it('discards, then flushes, before it reports done', async () => {
    const { driver, calls } = stubDriver();
    const done = await runZero({ commandId: 5, container: CONTAINER_ID, offset: SEG, length: 2 * SEG }, new MapResolver([driver]));
    expect(done).to.deep.equal({ commandId: 5, ok: true, error: '' });
    expect(calls).to.deep.equal([`discard ${SEG}+${2 * SEG}`, 'flush']);
  });

  it('reports a failing medium as ok=false naming the command, without flushing', async () => {
    const { driver, calls } = stubDriver('zero /stub offset 65536: EIO');
    const done = await runZero({ commandId: 6, container: CONTAINER_ID, offset: SEG, length: SEG }, new MapResolver([driver]));
    expect(done.ok).to.equal(false);
    expect(done.error).to.equal(`zero 6: ${SEG} bytes of ${CONTAINER_ID}+${SEG}: zero /stub offset 65536: EIO`);
    expect(calls).to.deep.equal([`discard ${SEG}+${SEG}`]);
  });

  it('refuses offsets and lengths that are not whole non-negative numbers', async () => {
    const { driver, calls } = stubDriver();
    const r = new MapResolver([driver]);
    const bad = await runZero({ commandId: 8, container: CONTAINER_ID, offset: -1, length: SEG }, r);
    expect(bad).to.include({ ok: false });
    expect(bad.error).to.match(/offset -1 invalid/);
    const frac = await runZero({ commandId: 9, container: CONTAINER_ID, offset: 0, length: 1.5 }, r);
    expect(frac.error).to.match(/length 1.5 invalid/);
    expect(calls).to.deep.equal([]);
  });
});
