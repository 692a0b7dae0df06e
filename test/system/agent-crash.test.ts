// SIGKILL an agent in the middle of a stream of writes (to allocated and to
// zero segments, so faults and table pushes are in flight), then restart it
// under the same name and portal: it reloads its tables from the controller
// and serves the same data as the agent that stayed up. Every write that was
// acknowledged reads back; every block of one that was not holds either its
// old or its new contents.
import { expect } from 'chai';
import { requireTools } from '../support/tools.js';
import { iqnOf, useCluster } from './cluster.js';
import { waitFor } from '../support/process.js';
import { readP, writeP } from './clients.js';
import { GOOD, LunSession, describeIo, pattern } from './scsi-client.js';
import { check } from './table.js';

const MiB = 1 << 20;
const VDISK = 'ac';
const BLOCKS_PER_SEG = MiB / 512;
/** Each write: 64 KiB at its own place; writes never overlap. */
const WRITE_BLOCKS = 128;

interface Write {
  lba: number;
  tag: number;
  /** GOOD status seen before the kill. */
  acked: boolean;
}

describe('system: an agent is SIGKILLed mid-write and restarted', function () {
  this.timeout(240_000);
  const cluster = useCluster('agent-crash', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    await c.serveVdisk({ vdisk: VDISK, size: '40MiB', containerSize: '128MiB', agents: { a: {}, b: {} }, controller: { holdTimeoutS: 10, ackTimeoutS: 2 } });
    // Segments 0-7 hold data before the crash.
    await writeP(c.url('a', VDISK), 0x44, 0, 8 * MiB);
  });

  it('reloads its tables after the restart and serves what the other agent serves', async function () {
    const c = cluster();
    // Writes spread over segments 4-35: half over allocated data (old = 0x44), half into zero segments (old = 0).
    const writes: Write[] = [];
    for (let seg = 4; seg < 36; seg++) {
      for (const off of [0, 3 * WRITE_BLOCKS, 6 * WRITE_BLOCKS]) writes.push({ lba: seg * BLOCKS_PER_SEG + off, tag: 0x5000 + writes.length, acked: false });
    }
    const sa = await LunSession.open(c.agent('a').portal, iqnOf(VDISK));
    let goodCount = 0;
    const killAfter = 24;
    let killed: Promise<void> | undefined;
    // Four writers, each taking the next write; the agent dies under them.
    let next = 0;
    const writer = async (): Promise<void> => {
      while (next < writes.length) {
        const w = writes[next++] as Write;
        let ok = false;
        try {
          const r = await sa.write(w.lba, pattern(w.tag, w.lba, WRITE_BLOCKS), 20_000);
          ok = r.status === GOOD;
        } catch {
          return; // the connection died with the agent
        }
        if (killed !== undefined) return; // an answer racing the kill proves nothing either way; treat as unacked
        w.acked = ok;
        if (ok && ++goodCount === killAfter) killed = c.agent('a').daemon.kill();
      }
    };
    await Promise.all([writer(), writer(), writer(), writer()]);
    sa.close();
    await killed;
    expect(c.agent('a').daemon.running).to.equal(false);
    const acked = writes.filter((w) => w.acked);
    expect(acked.length).to.be.at.least(killAfter - 1);
    expect(acked.length, 'some writes were cut off by the kill').to.be.below(writes.length);

    await c.startAgent('a', { containers: [c.containerGlob] });
    await c.waitServed(VDISK, ['a', 'b']);

    const [sa2, sb] = await Promise.all([LunSession.open(c.agent('a').portal, iqnOf(VDISK)), LunSession.open(c.agent('b').portal, iqnOf(VDISK))]);
    try {
      for (const w of writes) {
        const want = pattern(w.tag, w.lba, WRITE_BLOCKS);
        const old = Buffer.alloc(WRITE_BLOCKS * 512, w.lba < 8 * BLOCKS_PER_SEG ? 0x44 : 0);
        const [ra, rb] = await Promise.all([sa2.read(w.lba, WRITE_BLOCKS), sb.read(w.lba, WRITE_BLOCKS)]);
        expect(describeIo(ra)).to.equal('GOOD');
        expect(describeIo(rb)).to.equal('GOOD');
        expect(ra.data.equals(rb.data), `lba ${w.lba}: both agents serve the same bytes`).to.equal(true);
        if (w.acked) {
          expect(ra.data.equals(want), `acknowledged write at lba ${w.lba} lost`).to.equal(true);
        } else {
          for (let i = 0; i < WRITE_BLOCKS; i++) {
            const blk = ra.data.subarray(i * 512, (i + 1) * 512);
            const isOld = blk.equals(old.subarray(i * 512, (i + 1) * 512));
            const isNew = blk.equals(want.subarray(i * 512, (i + 1) * 512));
            expect(isOld || isNew, `unacknowledged write at lba ${w.lba}, block ${i}: neither old nor new`).to.equal(true);
          }
        }
      }
    } finally {
      sa2.close();
      sb.close();
    }
    // Data untouched by the stream is still there (segment 1, and the tail of segment 4 past the writes).
    await readP(c.url('a', VDISK), 0x44, MiB, MiB);
    await readP(c.url('a', VDISK), 0x44, 4 * MiB + 7 * WRITE_BLOCKS * 512, MiB - 7 * WRITE_BLOCKS * 512);
  });

  it('the restarted agent takes new first writes, and tabula check passes', async function () {
    const c = cluster();
    await writeP(c.url('a', VDISK), 0x66, 38 * MiB, MiB);
    await readP(c.url('b', VDISK), 0x66, 38 * MiB, MiB);
    const r = await check(c);
    expect(r.ok, r.text).to.equal(true);
    const exports = await waitFor('export of a acked', 10_000, async () => {
      const ex = (await c.admin.call('ListExports', { vdisk: VDISK, agent: 'a' })).exports;
      return ex.length === 1 && !ex[0]?.fenced ? ex : undefined;
    });
    expect(exports[0]?.agent).to.equal('a');
  });
});
