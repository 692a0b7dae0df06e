// One agent loses the controller (a network partition through a proxy) while
// it keeps serving its initiators; the other agent changes the table. Agent a
// cannot be told of the change, nor fenced, so the controller must not let it
// happen until a is back: otherwise a serves stale data (zeros where b's
// acknowledged write landed, or data b unmapped). b's first write is held
// and completes once a has resynced; b's UNMAP of a whole segment is zeroed
// in place rather than released.
import { expect } from 'chai';
import { requireTools } from '../support/tools.js';
import { iqnOf, sleep, useCluster, waitFor } from './cluster.js';
import { readP, writeP } from './clients.js';
import { CuttableProxy } from './proxy.js';
import { GOOD, LunSession, describeIo, pattern, type IoResult } from './scsi-client.js';
import { STATE, check, faults, segments, table } from './table.js';

const MiB = 1 << 20;
const VDISK = 'pt';
const BLOCKS_PER_SEG = MiB / 512;

async function agentOnline(c: ReturnType<ReturnType<typeof useCluster>>, name: string): Promise<boolean> {
  return (await c.admin.call('ListAgents', {})).agents.some((a) => a.name === name && a.online);
}

describe('system: an agent partitioned from the controller', function () {
  this.timeout(180_000);
  let proxy: CuttableProxy | undefined;
  const cluster = useCluster('partition', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    await c.startController({ holdTimeoutS: 60 });
    await c.addContainer('c0.img', '64MiB');
    proxy = await CuttableProxy.start(c.controllerAddress);
    await Promise.all([
      c.startAgent('a', { containers: [c.containerGlob], controller: proxy.address }),
      c.startAgent('b', { containers: [c.containerGlob] }),
      c.cliOk(['vdisk', 'create', VDISK, '--size', '16MiB']),
    ]);
    await Promise.all([c.cliOk(['export', 'add', VDISK, '--agent', 'a']), c.cliOk(['export', 'add', VDISK, '--agent', 'b'])]);
    await c.waitServed(VDISK, ['a', 'b']);
    await writeP(c.url('a', VDISK), 0x21, 0, 2 * MiB);
  });
  after(async () => proxy?.close());

  it('a first write through b waits until a is back, then a reads it', async function () {
    const c = cluster();
    const p = proxy as CuttableProxy;
    p.cut();
    await waitFor('agent a offline', 20_000, async () => ((await agentOnline(c, 'a')) ? undefined : true));

    const sb = await LunSession.open(c.agent('b').portal, iqnOf(VDISK));
    const sa = await LunSession.open(c.agent('a').portal, iqnOf(VDISK));
    try {
      const lba = 5 * BLOCKS_PER_SEG + 64;
      const write = sb.write(lba, pattern(0x5151, lba, 16), 90_000);
      let settled: IoResult | Error | undefined;
      write.then(
        (r) => (settled = r),
        (e: Error) => (settled = e),
      );
      await sleep(1500);
      const meanwhile = await sa.read(lba, 16);
      expect(describeIo(meanwhile)).to.equal('GOOD');
      if (settled !== undefined) {
        // Without the guard the write is acknowledged now; a must then see it.
        expect(meanwhile.data.equals(pattern(0x5151, lba, 16)), 'a serves stale zeros after b acknowledged a write').to.equal(true);
      }
      expect(settled, 'the first write waits for the partitioned agent').to.equal(undefined);
      expect(segments(await table(c, VDISK))[5]?.state).to.equal(STATE.zero);
      const fs = await faults(c, VDISK);
      expect(fs.some((f) => f.segment === 5 && f.agent === 'b' && f.outcome === 'wait' && /agent a/.test(f.detail)), JSON.stringify(fs.slice(0, 3))).to.equal(true);

      p.heal();
      const done = await write;
      expect(describeIo(done)).to.equal('GOOD');
      const r = await sa.read(lba, 16, 30_000);
      expect(r.status).to.equal(GOOD);
      expect(r.data.equals(pattern(0x5151, lba, 16))).to.equal(true);
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
      const cdb = Buffer.alloc(10);
      cdb[0] = 0x42;
      cdb.writeUInt16BE(24, 7);
      const params = Buffer.alloc(24);
      params.writeUInt16BE(22, 0);
      params.writeUInt16BE(16, 2);
      params.writeBigUInt64BE(0n, 8);
      params.writeUInt32BE(BLOCKS_PER_SEG, 16);
      const r = await sb.command(cdb, { write: params, timeoutMs: 90_000 });
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
