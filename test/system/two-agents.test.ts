// Two agents (separate processes, separate portals) export the same thin
// vdisk from one shared container file: what one writes, the other reads,
// including segments the other's fault allocated; concurrent first writes
// to one zero segment from both agents allocate it exactly once.
import { expect } from 'chai';
import { join } from 'node:path';
import { writeRandomImage } from '../support/random-image.js';
import { requireTools } from '../support/tools.js';
import { useCluster } from './cluster.js';
import { compare, copyTo, readP, writeP } from './clients.js';
import { GOOD, LunSession, describeIo, pattern } from './scsi-client.js';
import { STATE, check, containerSegmentsUsed, countTextStates, faults, segments, table } from './table.js';

const MiB = 1 << 20;
const VDISK = 'shared';
const SIZE_MIB = 48;
/** The image covers the first 32 segments; the rest stay zero for the fault tests. */
const IMAGE_MIB = 32;

describe('system: two agents export one thin vdisk', function () {
  this.timeout(180_000);
  const cluster = useCluster('two-agents', async (c) => {
    requireTools(['timeout', 'qemu-img', 'qemu-io']);
    await c.serveVdisk({ vdisk: VDISK, size: `${SIZE_MIB}MiB`, containerSize: '256MiB', agents: { a: {}, b: {} } });
  });

  it('starts thin: every segment zero, nothing allocated', async function () {
    const t = await table(cluster(), VDISK);
    expect(t.segmentCount).to.equal(SIZE_MIB);
    expect(segments(t).every((s) => s.state === STATE.zero)).to.equal(true);
    expect(await containerSegmentsUsed(cluster())).to.equal(0);
  });

  it('qemu-img writes an image through agent a; agent b reads back the same bytes', async function () {
    const c = cluster();
    const image = join(c.dir, 'image.raw');
    const layout = await writeRandomImage(image, IMAGE_MIB * MiB, 7);
    await copyTo(image, c.url('a', VDISK));
    const viaB = await compare(image, c.url('b', VDISK));
    expect(viaB.same, viaB.text).to.equal(true);
    const viaA = await compare(image, c.url('a', VDISK));
    expect(viaA.same, viaA.text).to.equal(true);
    // Every 1 MiB chunk of the image with data is a segment the faults of agent a allocated.
    const segs = segments(await table(c, VDISK));
    const normal = segs.filter((s) => s.state === STATE.normal).length;
    expect(normal).to.be.at.least(layout.full + layout.partial);
    expect(segs.slice(IMAGE_MIB).every((s) => s.state === STATE.zero), 'segments past the image stay zero').to.equal(true);
    expect(await containerSegmentsUsed(c)).to.equal(normal);
    // What an operator sees: `tabula vdisk table` lists the allocated segments.
    const text = await c.cliOk(['vdisk', 'table', VDISK]);
    expect(text).to.match(new RegExp(`^# vdisk ${VDISK} version \\d+: ${SIZE_MIB} segments`));
    expect(countTextStates(text)).to.deep.equal({ normal, zero: SIZE_MIB - normal });
  });

  it('a segment first allocated by a fault on agent b reads back through agent a', async function () {
    const c = cluster();
    const seg = IMAGE_MIB + 1;
    expect(segments(await table(c, VDISK))[seg]?.state).to.equal(STATE.zero);
    await writeP(c.url('b', VDISK), 0xb7, seg * MiB + 4096, 256 * 1024);
    await readP(c.url('a', VDISK), 0xb7, seg * MiB + 4096, 256 * 1024);
    // The rest of the segment still reads as zeros on both (LBPRZ holds for the unwritten part).
    await readP(c.url('a', VDISK), 0, seg * MiB, 4096);
    await readP(c.url('b', VDISK), 0, seg * MiB + 4096 + 256 * 1024, MiB - 4096 - 256 * 1024);
    const after = segments(await table(c, VDISK))[seg];
    expect(after?.state).to.equal(STATE.normal);
    const fs = await faults(c, VDISK);
    const f = fs.find((x) => x.segment === seg && x.agent === 'b');
    expect(f, JSON.stringify(fs.slice(0, 5))).to.not.equal(undefined);
    expect(f?.state).to.equal('zero');
    expect(f?.op).to.match(/^write/);
  });

  it('concurrent first writes from both agents to one zero segment allocate it once and keep both writes', async function () {
    const c = cluster();
    const [sa, sb] = await Promise.all([LunSession.open(c.agent('a').portal, `iqn.2026-11.org.tabula:${VDISK}`), LunSession.open(c.agent('b').portal, `iqn.2026-11.org.tabula:${VDISK}`)]);
    try {
      const blocksPerSeg = MiB / 512;
      const targets = [IMAGE_MIB + 4, IMAGE_MIB + 5, IMAGE_MIB + 6, IMAGE_MIB + 7];
      const usedBefore = await containerSegmentsUsed(c);
      const before = segments(await table(c, VDISK));
      for (const s of targets) expect(before[s]?.state, `segment ${s} before`).to.equal(STATE.zero);
      // Both agents hit each zero segment at once: a in its first half, b in its second.
      const half = blocksPerSeg / 2;
      const writes = targets.flatMap((s, i) => {
        const lbaA = s * blocksPerSeg + 8;
        const lbaB = s * blocksPerSeg + half + 16;
        return [sa.write(lbaA, pattern(0xa000 + i, lbaA, 128)), sb.write(lbaB, pattern(0xb000 + i, lbaB, 128))];
      });
      const results = await Promise.all(writes);
      for (const r of results) expect(describeIo(r)).to.equal('GOOD');
      const after = segments(await table(c, VDISK));
      const locations = new Set<string>();
      for (const s of targets) {
        const e = after[s];
        expect(e?.state, `segment ${s} after`).to.equal(STATE.normal);
        locations.add(`${e?.container}:${e?.offset}`);
      }
      expect(locations.size, 'each segment at its own container location').to.equal(targets.length);
      // Exactly one container segment per newly allocated vdisk segment.
      expect(await containerSegmentsUsed(c)).to.equal(usedBefore + targets.length);
      // Both halves survive, seen from both agents.
      for (const [i, s] of targets.entries()) {
        const lbaA = s * blocksPerSeg + 8;
        const lbaB = s * blocksPerSeg + half + 16;
        for (const sess of [sa, sb]) {
          const ra = await sess.read(lbaA, 128);
          const rb = await sess.read(lbaB, 128);
          expect(ra.status).to.equal(GOOD);
          expect(rb.status).to.equal(GOOD);
          expect(ra.data.equals(pattern(0xa000 + i, lbaA, 128)), `segment ${s} first half`).to.equal(true);
          expect(rb.data.equals(pattern(0xb000 + i, lbaB, 128)), `segment ${s} second half`).to.equal(true);
        }
      }
    } finally {
      sa.close();
      sb.close();
    }
  });

  it('tabula check finds every invariant holding', async function () {
    const r = await check(cluster());
    expect(r.ok, r.text).to.equal(true);
  });
});
