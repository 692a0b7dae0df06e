// A vdisk with a 4 MiB segment size, end to end. A container is carved into
// segments of the size in its label (`container init --segment-size`), and a
// vdisk allocates only from containers of its own segment size. With only
// 1 MiB containers, `vdisk create --segment-size 4MiB` is refused with a
// one-line reason that says how to add a container for it; with a 4 MiB
// container, thin first writes allocate there and read back through iSCSI.
import { expect } from 'chai';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { requireTools } from '../support/tools.js';
import { iqnOf, useCluster } from './cluster.js';
import { readP, writeP } from './clients.js';
import { GOOD, LunSession, describeIo, pattern } from './scsi-client.js';
import { STATE, check, segments, table } from './table.js';

const MiB = 1 << 20;
const VDISK = 'big';
const SEG = 4 * MiB;
const BLOCKS_PER_SEG = SEG / 512;

describe('system: a vdisk with a 4 MiB segment size', function () {
  this.timeout(180_000);
  let small = '';
  const cluster = useCluster('segment-size', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    await c.startController();
    small = await c.addContainer('c1.img', '64MiB');
    await c.startAgent('a', { containers: [c.containerGlob] });
  });

  it('is refused, naming the fix, while no container has 4 MiB segments', async function () {
    const c = cluster();
    const r = await c.cli(['vdisk', 'create', VDISK, '--size', '64MiB', '--segment-size', '4MiB']);
    expect(r.exitCode).to.not.equal(0);
    const err = r.stderr.trim();
    expect(err.split('\n'), err).to.have.length(1);
    expect(err).to.match(/no online container has 4MiB segments/);
    expect(err).to.match(/containers have 1MiB/);
    expect(err).to.match(/--segment-size 4MiB/);
    const vdisks = (await c.admin.call('ListVdisks', {})).vdisks;
    expect(vdisks.some((v) => v.name === VDISK), 'nothing was created').to.equal(false);
  });

  it('with a 4 MiB container: created thin, first writes allocate there, reads return the data', async function () {
    const c = cluster();
    mkdirSync(join(c.dir, 'containers'), { recursive: true });
    const path = join(c.dir, 'containers', 'c4.img');
    const init = JSON.parse(await c.cliOk(['container', 'init', path, '--size', '64MiB', '--segment-size', '4MiB', '--json'], { admin: false })) as { id: string; segmentSize: number };
    expect(init.segmentSize).to.equal(SEG);
    await c.cliOk(['container', 'add', path]);
    // The agent finds the new container on its next registration: restart it so it reports it.
    await c.agent('a').daemon.stop();
    await c.startAgent('a', { containers: [c.containerGlob] });

    const v = JSON.parse(await c.cliOk(['vdisk', 'create', VDISK, '--size', '64MiB', '--segment-size', '4MiB', '--json'])) as { segmentSize: number; segmentCount: number; thin: boolean };
    expect(v).to.include({ segmentSize: SEG, segmentCount: 16, thin: true });
    await c.cliOk(['export', 'add', VDISK, '--agent', 'a']);
    await c.waitServed(VDISK, ['a']);

    // A write spanning segments 1 and 2 (a boundary at 8 MiB), and one inside segment 15.
    await writeP(c.url('a', VDISK), 0x61, 6 * MiB, 4 * MiB);
    const s = await LunSession.open(c.agent('a').portal, iqnOf(VDISK));
    try {
      const lba = 15 * BLOCKS_PER_SEG + 3 * (MiB / 512) + 7;
      expect(describeIo(await s.write(lba, pattern(0x6262, lba, 64), 30_000))).to.equal('GOOD');
      const r = await s.read(lba, 64);
      expect(r.status).to.equal(GOOD);
      expect(r.data.equals(pattern(0x6262, lba, 64))).to.equal(true);
      // The rest of a newly allocated segment reads as zeros.
      const z = await s.read(15 * BLOCKS_PER_SEG, 64);
      expect(z.data.equals(Buffer.alloc(64 * 512))).to.equal(true);
    } finally {
      s.close();
    }
    await readP(c.url('a', VDISK), 0x61, 6 * MiB, 4 * MiB);
    await readP(c.url('a', VDISK), 0, 4 * MiB, 2 * MiB);
    await readP(c.url('a', VDISK), 0, 10 * MiB, 2 * MiB);

    const t = await table(c, VDISK);
    expect(t.segmentSize).to.equal(SEG);
    const segs = segments(t);
    const allocated = segs.flatMap((e, i) => (e.state === STATE.normal ? [i] : []));
    expect(allocated).to.deep.equal([1, 2, 15]);
    for (const i of allocated) expect(segs[i]?.container, `segment ${i}`).to.equal(init.id);
    expect(segs.every((e) => e.container !== small)).to.equal(true);
    const r = await check(c);
    expect(r.ok, r.text).to.equal(true);
  });
});
