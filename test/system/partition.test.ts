// One agent loses the controller (a network partition through a proxy) while
// it keeps serving its initiators; the other agent changes the table. Agent a
// cannot be told of the change, so the controller must not let it take effect
// while a may still serve the old table: otherwise a serves stale data (zeros
// where b's acknowledged write landed, or data b unmapped). With leases
// (Welcome.lease_ms), b's first write to a zero segment is held until a's
// lease has surely run out (lease plus margin after a was last heard); from
// then on a holds I/O to its zero segments itself, until it is back and has
// resynced, when it reads b's data. b's UNMAP of a whole segment (a normal
// segment, which a serves whatever its lease) is zeroed in place rather than
// released.
import { expect } from 'chai';
import { requireTools } from '../support/tools.js';
import { iqnOf, useCluster } from './cluster.js';
import { sleep, waitFor } from '../support/process.js';
import { readP, writeP } from './clients.js';
import { CuttableProxy } from './proxy.js';
import { GOOD, LunSession, describeIo, pattern } from './scsi-client.js';
import { STATE, check, faults, segments, table } from './table.js';
import { unmapCdb, unmapList } from '../support/cdb.js';

const MiB = 1 << 20;
const VDISK = 'pt';
const BLOCKS_PER_SEG = MiB / 512;

/** A promise and, synchronously, what it settled with so far (undefined while pending). */
function track<T>(promise: Promise<T>): { promise: Promise<T>; settled: () => T | Error | undefined } {
  let settled: T | Error | undefined;
  promise.then(
    (r) => (settled = r),
    (e: Error) => (settled = e),
  );
  return { promise, settled: () => settled };
}

async function agentOnline(c: ReturnType<ReturnType<typeof useCluster>>, name: string): Promise<boolean> {
  return (await c.admin.call('ListAgents', {})).agents.some((a) => a.name === name && a.online);
}

describe('system: an agent partitioned from the controller', function () {
  this.timeout(180_000);
  let proxy: CuttableProxy | undefined;
  const cluster = useCluster('partition', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    proxy = await CuttableProxy.start(c.controllerAddress);
    await c.serveVdisk({ vdisk: VDISK, size: '16MiB', containerSize: '64MiB', agents: { a: { controller: proxy.address }, b: {} }, controller: { holdTimeoutS: 60 } });
    await writeP(c.url('a', VDISK), 0x21, 0, 2 * MiB);
  });
  after(async () => proxy?.close());

  it("a first write through b is held while a's lease may run; then a holds that segment too until it is back, and reads b's data", async function () {
    const c = cluster();
    const p = proxy as CuttableProxy;
    // Sessions first: the partition is between a and the controller only.
    const sb = await LunSession.open(c.agent('b').portal, iqnOf(VDISK));
    const sa = await LunSession.open(c.agent('a').portal, iqnOf(VDISK));
    try {
      const lba = 5 * BLOCKS_PER_SEG + 64;
      const data = pattern(0x5151, lba, 16);
      p.cut();
      // The proxy drops the stream: seen at once (a silent link is the unit tests' case, test/unit/controller/fence.test.ts).
      await waitFor('agent a offline', 5_000, async () => ((await agentOnline(c, 'a')) ? undefined : true), 50);
      const write = track(sb.write(lba, data, 90_000));
      // a's lease (8 s from its last answered heartbeat, at most one 2 s interval ago) still runs: it reads zeros.
      const meanwhile = await sa.read(lba, 16);
      expect(describeIo(meanwhile)).to.equal('GOOD');
      if (write.settled() !== undefined) {
        // Acknowledged already: a must see it.
        expect(meanwhile.data.equals(data), 'a serves stale zeros after b acknowledged a write').to.equal(true);
      }
      expect(meanwhile.data.equals(Buffer.alloc(data.length)), 'a reads zeros while its lease runs').to.equal(true);
      expect(write.settled(), "the first write waits while a's lease may run").to.equal(undefined);

      // Still cut off: the write completes once a's lease is surely over.
      const done = await write.promise;
      expect(describeIo(done)).to.equal('GOOD');
      expect(segments(await table(c, VDISK))[5]?.state).to.equal(STATE.normal);
      // The fault's record names what it waited for.
      const fs = await faults(c, VDISK);
      expect(fs.some((f) => f.segment === 5 && f.agent === 'b' && /agent a .*not connected/.test(f.detail)), JSON.stringify(fs.slice(0, 3))).to.equal(true);
      // a's lease has run out: it must not serve its zero segment 5 any more, so the read is held.
      const later = track(sa.read(lba, 16, 90_000));
      await sleep(500);
      const early = later.settled();
      if (early !== undefined && !(early instanceof Error)) {
        expect(early.data.equals(Buffer.alloc(data.length)), 'a serves stale zeros after its lease ran out').to.equal(false);
      }
      expect(early, 'a holds I/O to its zero segments once its lease ran out').to.equal(undefined);

      p.heal();
      const r = await later.promise;
      expect(r.status).to.equal(GOOD);
      expect(r.data.equals(data), 'a reads b\'s write once resynced').to.equal(true);
      let rb = await sb.read(lba, 16);
      // a's port group went unavailable past its lease and came back (ALUA):
      // b's session hears of it once, ASYMMETRIC ACCESS STATE CHANGED, then reads.
      if (rb.status !== GOOD) {
        expect(describeIo(rb)).to.equal('status 0x2 sense 06/2a/06');
        rb = await sb.read(lba, 16);
      }
      expect(rb.status).to.equal(GOOD);
      expect(rb.data.equals(data)).to.equal(true);
    } finally {
      sa.close();
      sb.close();
    }
  });

  it('an UNMAP of a whole segment through b is zeroed in place while a is away; both read zeros', async function () {
    const c = cluster();
    const p = proxy as CuttableProxy;
    await waitFor('agent a online', 30_000, async () => ((await agentOnline(c, 'a')) ? true : undefined));
    p.cut();
    await waitFor('agent a offline', 20_000, async () => ((await agentOnline(c, 'a')) ? undefined : true));
    const sb = await LunSession.open(c.agent('b').portal, iqnOf(VDISK));
    try {
      const r = await sb.command(unmapCdb(24), { write: unmapList(0, BLOCKS_PER_SEG), timeoutMs: 90_000 });
      expect(describeIo(r)).to.equal('GOOD');
    } finally {
      sb.close();
    }
    await readP(c.url('b', VDISK), 0, 0, MiB);
    await readP(c.url('a', VDISK), 0, 0, MiB);
    await readP(c.url('a', VDISK), 0x21, MiB, MiB);
    p.heal();
    await waitFor('agent a online', 30_000, async () => ((await agentOnline(c, 'a')) ? true : undefined));
    await c.waitServed(VDISK, ['a', 'b']);
    await readP(c.url('a', VDISK), 0, 0, MiB);
    const r = await check(c);
    expect(r.ok, r.text).to.equal(true);
  });
});
