// Mirror rebuild with real processes (a controller, one agent, three file
// containers in three failure domains, qemu's iSCSI clients):
// - `vdisk set-copies mir 2 --wait` on a one-copy vdisk holding data, while
//   the whole vdisk is rewritten through iSCSI: it ends healthy, every
//   segment has a second leg in another domain whose bytes in that
//   container's file equal the first leg's and the data written, and
//   `tabula check` is clean;
// - `vdisk set-copies mir 1`: the second legs go, their container segments
//   are zeroed and freed;
// - a degraded vdisk (two segments lost their second leg to a failed
//   container: the stale legs the controller keeps for a resync, put in the
//   database as the leg-failure path leaves them) is left alone for the
//   rebuild delay, and `vdisk repair mir --wait` rebuilds it at once.
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from '../support/process.js';
import { requireTools } from '../support/tools.js';
import { useCluster, type Cluster } from './cluster.js';
import { compare, copyTo } from './clients.js';
import { check, table } from './table.js';

const MiB = 1 << 20;
const SEGS = 16;
const VDISK = 'mir';

interface Leg {
  container: string;
  offset: number;
}

describe('system: mirror rebuild (set-copies, repair) with real copies', function () {
  this.timeout(600_000);
  const ids: string[] = [];
  let ref = '';

  const cluster = useCluster('mirror-rebuild', async (c) => {
    requireTools(['timeout', 'qemu-img']);
    await c.startController();
    // The vdisk is created thick, one copy, while c0 is the only container.
    ids.push(await c.addContainer('c0.img', `${SEGS + 8}MiB`));
    await c.cliOk(['vdisk', 'create', VDISK, '--size', `${SEGS}MiB`, '--thick']);
    ids.push(await c.addContainer('c1.img', `${SEGS + 8}MiB`));
    ids.push(await c.addContainer('c2.img', `${SEGS + 8}MiB`));
    // One agent reaches all three files: name a failure domain each (they would share the agent's host).
    for (const [i, id] of ids.entries()) await c.admin.call('SetContainerDomain', { id, domain: `d${i}` });
    await c.startAgent('a', { containers: [c.containerGlob] });
    await c.cliOk(['export', 'add', VDISK, '--agent', 'a']);
    await c.waitServed(VDISK, ['a']);
    ref = join(c.dir, 'data.raw');
    writeFileSync(ref, randomBytes(SEGS * MiB));
    await copyTo(ref, c.url('a', VDISK));
  });

  /** Every segment's locations, leg 0 first, from `vdisk table --json`. */
  async function legsOf(c: Cluster): Promise<Leg[][]> {
    const t = await table(c, VDISK);
    const out: Leg[][] = [];
    for (const e of t.extents as (typeof t.extents[number] & { legs?: { list: Leg[] } | null })[]) {
      for (let i = 0; i < e.count; i++) {
        out[e.first + i] = e.container === '' ? [] : [{ container: e.container, offset: e.offset + i }, ...(e.legs?.list ?? []).map((l) => ({ container: l.container, offset: l.offset + i }))];
      }
    }
    return out;
  }

  /** The segment's bytes in its container's file (the data area starts at the label's data offset). */
  async function readLeg(c: Cluster, leg: Leg): Promise<Buffer> {
    const info = (await c.admin.call('ListContainers', {})).containers.find((x) => x.id === leg.container);
    if (!info) throw new Error(`unknown container ${leg.container}`);
    const b = Buffer.alloc(MiB);
    const fd = openSync(info.path, 'r');
    try {
      readSync(fd, b, 0, MiB, info.dataOffset + leg.offset * MiB);
    } finally {
      closeSync(fd);
    }
    return b;
  }

  async function expectMirrored(c: Cluster, copies: number): Promise<void> {
    const legs = await legsOf(c);
    const data = Buffer.alloc(SEGS * MiB);
    const fd = openSync(ref, 'r');
    readSync(fd, data, 0, data.length, 0);
    closeSync(fd);
    for (let s = 0; s < SEGS; s++) {
      const l = legs[s] ?? [];
      expect(l.length, `segment ${s} legs`).to.equal(copies);
      expect(new Set(l.map((x) => x.container)).size, `segment ${s} in distinct containers`).to.equal(copies);
      for (const leg of l) {
        expect((await readLeg(c, leg)).equals(data.subarray(s * MiB, (s + 1) * MiB)), `segment ${s} on ${leg.container.slice(0, 8)}@${leg.offset}`).to.equal(true);
      }
    }
  }

  it('set-copies 2 --wait while the vdisk is rewritten: a second leg in another domain with the same bytes; check clean', async function () {
    const c = cluster();
    // New data written through iSCSI while the rebuild runs: writes wait for their segment's copy, then reach both legs.
    writeFileSync(ref, randomBytes(SEGS * MiB));
    const [r] = await Promise.all([c.cli(['vdisk', 'set-copies', VDISK, '2', '--wait'], { timeoutMs: 240_000 }), copyTo(ref, c.url('a', VDISK), 240_000)]);
    expect(r.exitCode, `${r.stdout}${r.stderr}`).to.equal(0);
    expect(r.stdout.trimEnd().split('\n').pop()).to.equal(`vdisk ${VDISK}: 2 copies, healthy (${SEGS} segments)`);
    const same = await compare(ref, c.url('a', VDISK));
    expect(same.same, same.text).to.equal(true);
    await expectMirrored(c, 2);
    const legs = await legsOf(c);
    expect(legs.every((l) => l[0]!.container === ids[0] && l[1]!.container !== ids[0])).to.equal(true);
    const ck = await check(c);
    expect(ck.ok, ck.text).to.equal(true);
    const show = await c.cliOk(['vdisk', 'show', VDISK]);
    expect(show).to.match(/^health:\s+2 copies, healthy \(16 segments\)$/m);
  });

  it('set-copies 1 removes the second legs and frees their space (zeroed first)', async function () {
    const c = cluster();
    await c.cliOk(['vdisk', 'set-copies', VDISK, '1']);
    await expectMirrored(c, 1);
    await waitFor('second legs freed', 60_000, async () => {
      const list = (await c.admin.call('ListContainers', {})).containers;
      return list.filter((x) => x.id !== ids[0]).every((x) => x.segmentsUsed === 0) ? true : undefined;
    });
    const same = await compare(ref, c.url('a', VDISK));
    expect(same.same, same.text).to.equal(true);
    const ck = await check(c);
    expect(ck.ok, ck.text).to.equal(true);
  });

  it('a degraded vdisk (legs lost with a failed container) waits for the rebuild delay; vdisk repair --wait rebuilds it at once', async function () {
    const c = cluster();
    const set = await c.cli(['vdisk', 'set-copies', VDISK, '2', '--wait'], { timeoutMs: 240_000 });
    expect(set.exitCode, `${set.stdout}${set.stderr}`).to.equal(0);
    // Segments 3 and 4 lose their second leg as when its container fails (mirrors.ts): the leg
    // leaves the table (a new version) and is kept as a stale leg, holding its reference.
    await c.killController();
    const db = new Database(c.dbPath);
    try {
      const v = db.prepare('SELECT id FROM vdisks WHERE name = ?').get(VDISK) as { id: string };
      const lost = db.prepare('SELECT seg, container_id AS c, offset AS o FROM segment_legs WHERE vdisk_id = ? AND seg IN (3, 4)').all(v.id) as { seg: number; c: string; o: number }[];
      expect(lost).to.have.length(2);
      db.transaction(() => {
        db.prepare('DELETE FROM segment_legs WHERE vdisk_id = ? AND seg IN (3, 4)').run(v.id);
        for (const l of lost) {
          db.prepare('INSERT INTO stale_legs (vdisk_id, seg, container_id, offset, dirty, since) VALUES (?, ?, ?, ?, 0, ?)').run(v.id, l.seg, l.c, l.o, new Date().toISOString());
        }
        db.prepare('UPDATE vdisks SET version = version + 1 WHERE id = ?').run(v.id);
      })();
    } finally {
      db.close();
    }
    await c.startController();
    const v0 = await c.cliJson<{ health: { degraded: number; stale: number; rebuilding: unknown } }>(['vdisk', 'show', VDISK]);
    expect(v0.health).to.deep.include({ degraded: 2, stale: 2, rebuilding: null });
    expect(await c.cliOk(['vdisk', 'ls'])).to.match(new RegExp(`^${VDISK}\\s.*\\sdegraded 2\\s`, 'm'));

    const r = await c.cli(['vdisk', 'repair', VDISK, '--wait'], { timeoutMs: 240_000 });
    expect(r.exitCode, `${r.stdout}${r.stderr}`).to.equal(0);
    expect(r.stdout.trimEnd().split('\n').pop()).to.equal(`vdisk ${VDISK}: 2 copies, healthy (${SEGS} segments)`);
    await expectMirrored(c, 2);
    const ck = await check(c);
    expect(ck.ok, ck.text).to.equal(true);
  });
});
