// Agent leases with real processes. Two agents export one thin vdisk.
// - Agent b is SIGKILLed and stays dead: once its lease has run out, first
//   writes through agent a are allocated and complete (before leases they
//   were held until b came back, failing 02/04/0A at the hold timeout).
// - Agent a is cut off from the controller (a proxy) but alive: it keeps
//   serving allocated segments; once its lease has run out, b's first write
//   goes ahead and a read of that segment through a is held, not answered
//   with stale zeros, until a is back and has resynced: then it reads b's data.
import { expect } from 'chai';
import { DEFAULT_LEASE_MARGIN_MS, DEFAULT_LEASE_MS } from '../../src/controller/agent-registry.js';
import { requireTools } from '../support/tools.js';
import { iqnOf, useCluster } from './cluster.js';
import { sleep, waitFor } from '../support/process.js';
import { readP, writeP } from './clients.js';
import { CuttableProxy } from './proxy.js';
import { GOOD, LunSession, describeIo, pattern, type IoResult } from './scsi-client.js';
import { STATE, check, segments, table } from './table.js';

const MiB = 1 << 20;
const BLOCKS_PER_SEG = MiB / 512;
/** Past any lease the controller could still count for a silent agent. */
const PAST_LEASE_MS = DEFAULT_LEASE_MS + DEFAULT_LEASE_MARGIN_MS + 1500;

describe('system: an exporting agent dies and stays dead (leases)', function () {
  this.timeout(180_000);
  const VDISK = 'lease-dead';
  const cluster = useCluster('lease-dead', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    await c.serveVdisk({ vdisk: VDISK, size: '16MiB', containerSize: '64MiB', agents: { a: {}, b: {} } });
    await writeP(c.url('a', VDISK), 0x41, 0, MiB);
  });

  it('after b\'s lease, first writes through a are allocated and complete', async function () {
    const c = cluster();
    await c.agent('b').daemon.kill();
    await sleep(PAST_LEASE_MS);
    const sa = await LunSession.open(c.agent('a').portal, iqnOf(VDISK));
    try {
      const lba = 5 * BLOCKS_PER_SEG + 16;
      const w = await sa.write(lba, pattern(0x4242, lba, 32), 30_000);
      expect(describeIo(w), 'first write through a with b dead').to.equal('GOOD');
      const r = await sa.read(lba, 32);
      expect(r.status).to.equal(GOOD);
      expect(r.data.equals(pattern(0x4242, lba, 32))).to.equal(true);
    } finally {
      sa.close();
    }
    // More first writes, through qemu-io, and what was there before.
    await writeP(c.url('a', VDISK), 0x43, 8 * MiB, 2 * MiB);
    await readP(c.url('a', VDISK), 0x43, 8 * MiB, 2 * MiB);
    await readP(c.url('a', VDISK), 0x41, 0, MiB);
    const segs = segments(await table(c, VDISK));
    expect([5, 8, 9].map((s) => segs[s]?.state)).to.deep.equal([STATE.normal, STATE.normal, STATE.normal]);
    const r = await check(c);
    expect(r.ok, r.text).to.equal(true);
  });
});

describe('system: an agent cut off from the controller past its lease', function () {
  this.timeout(180_000);
  const VDISK = 'lease-cut';
  let proxy: CuttableProxy | undefined;
  const cluster = useCluster('lease-cut', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    proxy = await CuttableProxy.start(c.controllerAddress);
    // A long hold: the held read below spans the agent's reconnect backoff.
    await c.serveVdisk({ vdisk: VDISK, size: '16MiB', containerSize: '64MiB', agents: { a: { controller: proxy.address, holdTimeoutS: 45 }, b: {} } });
    await writeP(c.url('a', VDISK), 0x51, 0, 2 * MiB);
  });
  after(async () => proxy?.close());

  it('keeps serving allocated segments; holds a zero segment b wrote meanwhile until resynced, then reads b\'s data', async function () {
    const c = cluster();
    const p = proxy as CuttableProxy;
    p.cut();
    await sleep(PAST_LEASE_MS);
    const [sa, sb, sHeld] = await Promise.all([
      LunSession.open(c.agent('a').portal, iqnOf(VDISK)),
      LunSession.open(c.agent('b').portal, iqnOf(VDISK)),
      LunSession.open(c.agent('a').portal, iqnOf(VDISK)),
    ]);
    try {
      // Allocated segments: a goes on reading and writing them.
      const r0 = await sa.read(0, 8);
      expect(describeIo(r0)).to.equal('GOOD');
      expect(r0.data.equals(Buffer.alloc(8 * 512, 0x51))).to.equal(true);
      expect(describeIo(await sa.write(BLOCKS_PER_SEG, pattern(0x5252, BLOCKS_PER_SEG, 8)))).to.equal('GOOD');

      // b's first write to zero segment 6 does not wait for a any more.
      const lba = 6 * BLOCKS_PER_SEG + 64;
      const w = await sb.write(lba, pattern(0x5353, lba, 16), 30_000);
      expect(describeIo(w), 'first write through b with a cut off').to.equal('GOOD');
      expect(segments(await table(c, VDISK))[6]?.state).to.equal(STATE.normal);

      // a still holds version-old zeros for segment 6: the read is held, not answered with them.
      const held = sHeld.read(lba, 16, 60_000);
      let settled: IoResult | Error | undefined;
      held.then(
        (r) => (settled = r),
        (e: Error) => (settled = e),
      );
      await sleep(2000);
      expect(settled, 'a answered a read of a zero segment after its lease expired').to.equal(undefined);

      p.heal();
      const r = await held;
      expect(describeIo(r)).to.equal('GOOD');
      expect(r.data.equals(pattern(0x5353, lba, 16)), 'a reads b\'s write after resyncing').to.equal(true);
      // Segments nobody wrote read as zeros again.
      const z = await sa.read(9 * BLOCKS_PER_SEG, 8, 30_000);
      expect(describeIo(z)).to.equal('GOOD');
      expect(z.data.equals(Buffer.alloc(8 * 512))).to.equal(true);
    } finally {
      sa.close();
      sb.close();
      sHeld.close();
    }
    await waitFor('agent a back', 30_000, async () => ((await c.admin.call('ListAgents', {})).agents.some((x) => x.name === 'a' && x.online) ? true : undefined));
    await c.waitServed(VDISK, ['a', 'b']);
    const r = await check(c);
    expect(r.ok, r.text).to.equal(true);
  });
});
