// SIGKILL the controller under two agents: allocated segments keep serving
// reads and writes through both; a first write to a zero segment is held and
// completes once the controller is back (agent b, the controller's 30 s hold
// timeout), or fails NOT READY 02/04/0A when the hold runs out first (agent
// a, --hold-timeout 2). Nothing acknowledged is lost across the restart and
// `tabula check` passes.
import { expect } from 'chai';
import { requireTools } from '../support/tools.js';
import { iqnOf, useCluster } from './cluster.js';
import { waitFor } from '../support/process.js';
import { readP, writeP } from './clients.js';
import { CHECK_CONDITION, GOOD, LunSession, describeIo, pattern, senseText, type IoResult } from './scsi-client.js';
import { STATE, check, segments, table } from './table.js';

const MiB = 1 << 20;
const VDISK = 'ck';
const BLOCKS_PER_SEG = MiB / 512;

describe('system: the controller is SIGKILLed and restarted', function () {
  this.timeout(240_000);
  const cluster = useCluster('controller-crash', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    await c.serveVdisk({ vdisk: VDISK, size: '32MiB', containerSize: '128MiB', agents: { a: { holdTimeoutS: 2 }, b: {} }, controller: { holdTimeoutS: 30 } });
    // Segments 0-3 allocated before the crash.
    await writeP(c.url('a', VDISK), 0x11, 0, 4 * MiB);
  });

  it('keeps serving allocated segments, holds or fails first writes, and loses nothing acknowledged', async function () {
    const c = cluster();
    const before = segments(await table(c, VDISK));
    expect(before.slice(0, 4).map((s) => s.state)).to.deep.equal([STATE.normal, STATE.normal, STATE.normal, STATE.normal]);
    expect(before[10]?.state).to.equal(STATE.zero);
    expect(before[11]?.state).to.equal(STATE.zero);

    const [sa, sb] = await Promise.all([LunSession.open(c.agent('a').portal, iqnOf(VDISK)), LunSession.open(c.agent('b').portal, iqnOf(VDISK))]);
    try {
      // Thin allocations commit lazily (docs/architecture.md, "Durability of
      // thin allocations"): an agent completes a FUA write or a flush only
      // once it knows the table version it holds is durable, and b learns it
      // for a's allocations by asking. Let it have asked (its ack of the
      // latest version, then a flush), so that what follows tests serving
      // without the controller, not the moment right after an allocation.
      const latest = (await table(c, VDISK)).version;
      await waitFor('agent b acking the latest table version', 30_000, async () => {
        const ex = (await c.admin.call('ListExports', { vdisk: VDISK, agent: 'b' })).exports as { ackedVersion: number }[];
        return ex.some((e) => e.ackedVersion >= latest) ? true : undefined;
      });
      expect(describeIo(await sb.sync(30_000))).to.equal('GOOD');
      await c.killController();

      // Allocated segments: reads and writes go on through both agents.
      await readP(c.url('b', VDISK), 0x11, 0, 4 * MiB);
      await writeP(c.url('a', VDISK), 0x22, 1 * MiB, MiB);
      await readP(c.url('b', VDISK), 0x22, 1 * MiB, MiB);
      await writeP(c.url('b', VDISK), 0x33, 2 * MiB + 65536, 65536);
      await readP(c.url('a', VDISK), 0x33, 2 * MiB + 65536, 65536);
      const lba3 = 3 * BLOCKS_PER_SEG + 40;
      expect(describeIo(await sb.write(lba3, pattern(0x3333, lba3, 64)))).to.equal('GOOD');
      const r3 = await sa.read(lba3, 64);
      expect(r3.status).to.equal(GOOD);
      expect(r3.data.equals(pattern(0x3333, lba3, 64))).to.equal(true);
      // Zero segments still read as zeros.
      await readP(c.url('a', VDISK), 0, 10 * MiB, MiB);

      // A first write to zero segment 10 through b is held (30 s hold)...
      const lbaHeld = 10 * BLOCKS_PER_SEG + 8;
      const held = sb.write(lbaHeld, pattern(0x1010, lbaHeld, 32), 90_000);
      let settled: IoResult | Error | undefined;
      held.then(
        (r) => (settled = r),
        (e: Error) => (settled = e),
      );
      // ...while one through a (2 s hold) fails NOT READY, ASYMMETRIC ACCESS STATE TRANSITION.
      const lbaFail = 11 * BLOCKS_PER_SEG;
      const failed = await sa.write(lbaFail, pattern(0x1111, lbaFail, 32), 30_000);
      expect(failed.status, describeIo(failed)).to.equal(CHECK_CONDITION);
      expect(senseText(failed.sense)).to.equal('02/04/0a');
      expect(settled, 'the held write completed with the controller down').to.equal(undefined);
      // Reads elsewhere are not blocked by the held write.
      const r0 = await sb.read(0, 8);
      expect(describeIo(r0)).to.equal('GOOD');
      expect(r0.data.equals(Buffer.alloc(8 * 512, 0x11)), `LBA 0: ${r0.data.subarray(0, 16).toString('hex')}`).to.equal(true);

      // The controller comes back on the same database and port: the held write completes.
      await c.startController();
      const done = await held;
      expect(describeIo(done)).to.equal('GOOD');
      const back = await sa.read(lbaHeld, 32, 30_000);
      expect(describeIo(back)).to.equal('GOOD');
      expect(back.data.equals(pattern(0x1010, lbaHeld, 32))).to.equal(true);

      // The write that failed may be repeated now, and succeeds.
      const again = await sa.write(lbaFail, pattern(0x1111, lbaFail, 32), 30_000);
      expect(describeIo(again)).to.equal('GOOD');

      const after = segments(await table(c, VDISK));
      expect(after[10]?.state).to.equal(STATE.normal);
      expect(after[11]?.state).to.equal(STATE.normal);
    } finally {
      sa.close();
      sb.close();
    }

    // Nothing acknowledged was lost, as both agents see it.
    for (const agent of ['a', 'b']) {
      const url = c.url(agent, VDISK);
      await readP(url, 0x11, 0, MiB);
      await readP(url, 0x22, MiB, MiB);
      await readP(url, 0x11, 2 * MiB, 65536);
      await readP(url, 0x33, 2 * MiB + 65536, 65536);
      await readP(url, 0x11, 2 * MiB + 131072, MiB - 131072);
    }
  });

  it('tabula check passes after the restart, and both agents are back online', async function () {
    const c = cluster();
    const r = await check(c);
    expect(r.ok, r.text).to.equal(true);
    await waitFor('both agents online', 30_000, async () => {
      const agents = (await c.admin.call('ListAgents', {})).agents;
      return ['a', 'b'].every((n) => agents.some((x) => x.name === n && x.online)) ? true : undefined;
    });
    await c.waitServed(VDISK, ['a', 'b']);
  });
});


