// Freed container segments come back as zeros: a segment released by UNMAP,
// or freed by removing a vdisk, and then allocated again (to the same vdisk
// or another) must not show its old contents: the unwritten part of a first
// write's segment reads as zeros (LBPRZ), and a new thick vdisk reads zeros.
// The container is made so small that every allocation has to reuse space.
import { expect } from 'chai';
import { requireTools } from '../support/tools.js';
import { iqnOf, useCluster } from './cluster.js';
import { waitFor } from '../support/process.js';
import { readP, writeP } from './clients.js';
import { LunSession, describeIo } from './scsi-client.js';
import { STATE, check, containerSegmentsUsed, segments, table } from './table.js';
import { unmapCdb, unmapList } from '../support/cdb.js';

const MiB = 1 << 20;
const BLOCKS_PER_SEG = MiB / 512;

describe('system: freed container space is reused without its old data', function () {
  this.timeout(180_000);
  const cluster = useCluster('space-reuse', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    await c.startController();
    // 1 MiB of label area and room for exactly two 1 MiB segments.
    await c.addContainer('c0.img', '3MiB');
    await c.startAgent('a', { containers: [c.containerGlob] });
    const list = (await c.admin.call('ListContainers', {})).containers;
    expect(list.map((x) => x.segmentsTotal)).to.deep.equal([2]);
  });

  it('a segment released by UNMAP and allocated again reads as zeros where it was not written', async function () {
    const c = cluster();
    await c.cliOk(['vdisk', 'create', 'u1', '--size', '8MiB']);
    await c.cliOk(['export', 'add', 'u1', '--agent', 'a']);
    await c.waitServed('u1', ['a']);
    const url = c.url('a', 'u1');
    await writeP(url, 0xab, 0, 2 * MiB);
    expect(await containerSegmentsUsed(c)).to.equal(2);

    const s = await LunSession.open(c.agent('a').portal, iqnOf('u1'));
    try {
      const r = await s.command(unmapCdb(24), { write: unmapList(0, 2 * BLOCKS_PER_SEG) });
      expect(describeIo(r)).to.equal('GOOD');
    } finally {
      s.close();
    }
    const t = segments(await table(c, 'u1'));
    expect(t.slice(0, 2).map((x) => x.state)).to.deep.equal([STATE.zero, STATE.zero]);
    await waitFor('released segments freed', 20_000, async () => ((await containerSegmentsUsed(c)) === 0 ? true : undefined));

    // First writes elsewhere must take the freed space: 4 KiB at the start of segments 4 and 5.
    await writeP(url, 0xcd, 4 * MiB, 4096);
    await writeP(url, 0xcd, 5 * MiB + MiB - 4096, 4096);
    await readP(url, 0xcd, 4 * MiB, 4096);
    await readP(url, 0, 4 * MiB + 4096, MiB - 4096);
    await readP(url, 0, 5 * MiB, MiB - 4096);
    await readP(url, 0xcd, 5 * MiB + MiB - 4096, 4096);
    // And the unmapped range itself reads as zeros.
    await readP(url, 0, 0, 2 * MiB);
  });

  // Removing a vdisk frees its segments only after an agent has zeroed them
  // (the controller's scrub, ZeroCommand), so a new thick vdisk, or a
  // partial first write, never sees the removed vdisk's data.
  it('space freed by removing a vdisk reads as zeros in a new thick vdisk', async function () {
    const c = cluster();
    await c.cliOk(['export', 'rm', 'u1', '--agent', 'a']);
    await c.cliOk(['vdisk', 'rm', 'u1']);
    await waitFor('removed vdisk scrubbed and freed', 20_000, async () => ((await containerSegmentsUsed(c)) === 0 ? true : undefined));
    await c.cliOk(['vdisk', 'create', 'u2', '--size', '2MiB', '--thick']);
    await c.cliOk(['export', 'add', 'u2', '--agent', 'a']);
    await c.waitServed('u2', ['a']);
    await readP(c.url('a', 'u2'), 0, 0, 2 * MiB);
    const r = await check(c);
    expect(r.ok, r.text).to.equal(true);
  });

  it('a thick vdisk written in full, then removed: a thin vdisk\'s partial first writes there read zeros around them', async function () {
    const c = cluster();
    const u2 = c.url('a', 'u2');
    await writeP(u2, 0xee, 0, 2 * MiB);
    await readP(u2, 0xee, 0, 2 * MiB);
    await c.cliOk(['export', 'rm', 'u2', '--agent', 'a']);
    await c.cliOk(['vdisk', 'rm', 'u2']);
    await waitFor('removed vdisk scrubbed and freed', 20_000, async () => ((await containerSegmentsUsed(c)) === 0 ? true : undefined));

    await c.cliOk(['vdisk', 'create', 'u3', '--size', '8MiB']);
    await c.cliOk(['export', 'add', 'u3', '--agent', 'a']);
    await c.waitServed('u3', ['a']);
    const u3 = c.url('a', 'u3');
    // 4 KiB in the middle of segment 3, 4 KiB at the end of segment 6: both segments come from u2's old space.
    await writeP(u3, 0x3c, 3 * MiB + 256 * 1024, 4096);
    await writeP(u3, 0x6c, 7 * MiB - 4096, 4096);
    expect(await containerSegmentsUsed(c)).to.equal(2);
    await readP(u3, 0, 3 * MiB, 256 * 1024);
    await readP(u3, 0x3c, 3 * MiB + 256 * 1024, 4096);
    await readP(u3, 0, 3 * MiB + 256 * 1024 + 4096, MiB - 256 * 1024 - 4096);
    await readP(u3, 0, 6 * MiB, MiB - 4096);
    await readP(u3, 0x6c, 7 * MiB - 4096, 4096);
    const r = await check(c);
    expect(r.ok, r.text).to.equal(true);
  });
});
