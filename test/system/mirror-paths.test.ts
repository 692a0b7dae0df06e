// The controller's paths on a mirrored vdisk, with real processes: a
// controller, one agent and file containers in two failure domains
// (`container add --domain`), a thin 2-copy vdisk written through iSCSI.
// - First writes allocate two legs, one per domain, and the data is on both:
//   the container files, read at each leg's offset, hold what was written.
// - A snapshot, then writes to the vdisk (copy-on-write): the vdisk reads
//   the new data, the snapshot the old, and both legs of each say the same.
// - `container evacuate` of one domain's container moves only the legs on it,
//   to the other container of that domain; data still right on every leg.
// - `tabula check` is clean throughout.
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { iqnOf, useCluster, type Cluster } from './cluster.js';
import { waitFor } from '../support/process.js';
import { GOOD, LunSession, describeIo } from './scsi-client.js';
import { check } from './table.js';

const MiB = 1 << 20;
const SEG = MiB;
const SEGMENTS = 8;
const VDISK = 'mirror';
const SNAP = 'mirror-snap';

interface Leg {
  container: string;
  offset: number;
}

interface WireTable {
  segmentCount: number;
  segmentSize: number;
  /** Extra legs: the wire's `{ list }` (absent or null for one copy). */
  extents: { first: number; count: number; state: number; container: string; offset: number; legs?: { list?: { container: string; offset: number }[] } | null }[];
}

/** Every leg of every segment (leg 0 first), from `GetTable` (what `vdisk table --json` prints). */
async function legsOf(c: Cluster, vdisk: string): Promise<Leg[][]> {
  const t = (await c.admin.call('GetTable', { name: vdisk, fullIds: true })) as unknown as WireTable;
  const out: Leg[][] = Array.from({ length: t.segmentCount }, () => []);
  for (const e of t.extents) {
    if (e.container === '') continue;
    for (let i = 0; i < e.count; i++) {
      const extra = e.legs?.list ?? [];
      out[e.first + i] = [{ container: e.container, offset: e.offset + i }, ...extra.map((l) => ({ container: l.container, offset: l.offset + i }))];
    }
  }
  return out;
}

describe('system: controller paths on a 2-copy vdisk (allocation, copy-on-write, snapshot, evacuation, check)', function () {
  this.timeout(300_000);
  /** Container id -> file, and its data offset. */
  const files = new Map<string, { path: string; dataOffset: number }>();
  const domainOf = new Map<string, string>();
  let c0 = '';
  let c1 = '';
  /** What each segment of the vdisk and of the snapshot should hold (whole segments). */
  const expected = new Map<number, Buffer>();
  const expectedSnap = new Map<number, Buffer>();

  async function addContainer(c: Cluster, file: string, domain: string): Promise<string> {
    const path = join(c.dir, 'containers', file);
    mkdirSync(join(c.dir, 'containers'), { recursive: true });
    const init = JSON.parse(await c.cliOk(['container', 'init', path, '--size', '24MiB', '--json'], { admin: false })) as { id: string };
    await c.cliOk(['container', 'add', path, '--domain', domain]);
    const info = (await c.admin.call('ListContainers', {})).containers.find((x) => x.id === init.id);
    if (info === undefined) throw new Error(`container ${init.id} not listed`);
    files.set(init.id, { path, dataOffset: info.dataOffset });
    domainOf.set(init.id, domain);
    return init.id;
  }

  const cluster = useCluster('mirror-paths', async (c) => {
    await c.startController();
    c0 = await addContainer(c, 'c0.img', 'east');
    c1 = await addContainer(c, 'c1.img', 'west');
    await c.startAgent('a', { containers: [c.containerGlob] });
    await c.cliOk(['vdisk', 'create', VDISK, '--size', `${SEGMENTS}MiB`, '--copies', '2']);
    await c.cliOk(['export', 'add', VDISK, '--agent', 'a']);
    await c.waitServed(VDISK, ['a']);
  });

  function readLeg(l: Leg): Buffer {
    const f = files.get(l.container);
    if (f === undefined) throw new Error(`unknown container ${l.container}`);
    const b = Buffer.alloc(SEG);
    const fd = openSync(f.path, 'r');
    try {
      readSync(fd, b, 0, SEG, f.dataOffset + l.offset * SEG);
    } finally {
      closeSync(fd);
    }
    return b;
  }

  async function withLun<T>(c: Cluster, vdisk: string, fn: (s: LunSession) => Promise<T>): Promise<T> {
    const s = await LunSession.open(c.agent('a').portal, iqnOf(vdisk));
    try {
      return await fn(s);
    } finally {
      s.close();
    }
  }

  async function writeSeg(s: LunSession, seg: number, data: Buffer): Promise<void> {
    const r = await s.write((seg * SEG) / 512, data, 60_000);
    expect(r.status, `WRITE of segment ${seg}: ${describeIo(r)}`).to.equal(GOOD);
  }

  async function readSeg(s: LunSession, seg: number): Promise<Buffer> {
    const r = await s.read((seg * SEG) / 512, SEG / 512, 60_000);
    expect(r.status, `READ of segment ${seg}: ${describeIo(r)}`).to.equal(GOOD);
    return r.data;
  }

  /** Every expected segment has two legs in distinct domains and containers, each holding the data. */
  async function expectLegs(c: Cluster, vdisk: string, want: ReadonlyMap<number, Buffer>): Promise<Leg[][]> {
    const legs = await legsOf(c, vdisk);
    for (const [seg, data] of want) {
      const l = legs[seg] ?? [];
      expect(l, `${vdisk} segment ${seg} legs`).to.have.length(2);
      expect(new Set(l.map((x) => domainOf.get(x.container))).size, `${vdisk} segment ${seg}: legs in distinct domains`).to.equal(2);
      for (const leg of l) expect(readLeg(leg).equals(data), `${vdisk} segment ${seg} leg on ${leg.container}@${leg.offset}`).to.equal(true);
    }
    return legs;
  }

  async function expectClean(c: Cluster): Promise<void> {
    const r = await check(c);
    expect(r.ok, r.text).to.equal(true);
    expect(r.text).to.not.match(/warning/);
  }

  it('thin first writes land on both legs, one per domain', async function () {
    const c = cluster();
    await withLun(c, VDISK, async (s) => {
      for (const seg of [0, 1, 3, 6]) {
        const data = randomBytes(SEG);
        await writeSeg(s, seg, data);
        expected.set(seg, data);
      }
      for (const [seg, data] of expected) expect((await readSeg(s, seg)).equals(data), `segment ${seg} reads back`).to.equal(true);
    });
    await expectLegs(c, VDISK, expected);
    const show = await c.cliJson<{ copies?: number }>(['vdisk', 'show', VDISK]);
    expect(show.copies).to.equal(2);
    await expectClean(c);
  });

  it('snapshot, then writes to the vdisk (copy-on-write): both read right, on both legs of each', async function () {
    const c = cluster();
    const before = await legsOf(c, VDISK);
    await c.cliOk(['vdisk', 'snapshot', VDISK, SNAP]);
    for (const [seg, data] of expected) expectedSnap.set(seg, data);
    // Whole segments (0) and part of one (3): the rest of 3 must come from the copy.
    await withLun(c, VDISK, async (s) => {
      const full = randomBytes(SEG);
      await writeSeg(s, 0, full);
      expected.set(0, full);
      const part = randomBytes(64 * 1024);
      const r = await s.write((3 * SEG + 128 * 1024) / 512, part, 60_000);
      expect(r.status, `partial WRITE of segment 3: ${describeIo(r)}`).to.equal(GOOD);
      const merged = Buffer.from(expected.get(3)!);
      part.copy(merged, 128 * 1024);
      expected.set(3, merged);
      for (const [seg, data] of expected) expect((await readSeg(s, seg)).equals(data), `vdisk segment ${seg} reads back`).to.equal(true);
    });
    const after = await expectLegs(c, VDISK, expected);
    for (const seg of [0, 3]) {
      const old = new Set((before[seg] ?? []).map((l) => `${l.container}@${l.offset}`));
      expect((after[seg] ?? []).some((l) => old.has(`${l.container}@${l.offset}`)), `segment ${seg} copied to new legs`).to.equal(false);
    }
    // The snapshot still maps the old legs, which hold the old data.
    const snapLegs = await expectLegs(c, SNAP, expectedSnap);
    for (const seg of [0, 3]) expect(snapLegs[seg]).to.deep.equal(before[seg]);
    await c.cliOk(['export', 'add', SNAP, '--agent', 'a', '--read-only']);
    await c.waitServed(SNAP, ['a']);
    await withLun(c, SNAP, async (s) => {
      for (const [seg, data] of expectedSnap) expect((await readSeg(s, seg)).equals(data), `snapshot segment ${seg} reads the old data`).to.equal(true);
    });
    await expectClean(c);
  });

  it('container evacuate moves only the legs on that container, into its domain, data intact', async function () {
    const c = cluster();
    // A second container in c0's domain: the only place a leg leaving c0 may go (c1's domain holds the other leg).
    const c2 = await addContainer(c, 'c2.img', 'east');
    await waitFor('the agent reaches the new container', 60_000, async () => {
      const info = (await c.admin.call('ListContainers', {})).containers.find((x) => x.id === c2);
      return info !== undefined && info.agents.includes('a') ? true : undefined;
    });
    const before = await legsOf(c, VDISK);
    const beforeSnap = await legsOf(c, SNAP);
    await c.cliOk(['container', 'evacuate', c0, '--wait'], {});
    for (const [name, was, want] of [
      [VDISK, before, expected],
      [SNAP, beforeSnap, expectedSnap],
    ] as const) {
      const now = await expectLegs(c, name, want);
      for (const seg of want.keys()) {
        const l = now[seg] ?? [];
        expect(l.some((x) => x.container === c0), `${name} segment ${seg} left ${c0}`).to.equal(false);
        // The leg on c1 did not move.
        const west = (was[seg] ?? []).find((x) => x.container === c1);
        expect(west, `${name} segment ${seg} had a leg on c1`).to.not.equal(undefined);
        expect(l).to.deep.include(west!);
        expect(l.some((x) => x.container === c2)).to.equal(true);
      }
    }
    await withLun(c, VDISK, async (s) => {
      for (const [seg, data] of expected) expect((await readSeg(s, seg)).equals(data), `vdisk segment ${seg} after evacuation`).to.equal(true);
    });
    await waitFor(`nothing left on ${c0}`, 60_000, async () => {
      const info = (await c.admin.call('ListContainers', {})).containers.find((x) => x.id === c0);
      return info?.segmentsUsed === 0 ? true : undefined;
    });
    await expectClean(c);
  });
});
