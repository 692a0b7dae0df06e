// Snapshots and clones with real clients on two agents: qemu-io writes
// pattern A through agent a, `tabula vdisk snapshot` freezes it, pattern B
// goes in through agent b (copy-on-write); the snapshot, exported read-only,
// still reads A (a WRITE gets DATA PROTECT 07/27/00, MODE SENSE shows WP),
// the vdisk reads B, and a clone of the snapshot takes pattern C without
// changing either. `tabula check` is clean after each step and the space
// accounting (shared and exclusive, per container and per vdisk) matches
// what the test counts from its own writes.
import { expect } from 'chai';
import { describeRun, runBounded } from '../support/bounded-run.js';
import { requireTools } from '../support/tools.js';
import { iqnOf, useCluster } from './cluster.js';
import { readP, writeP } from './clients.js';
import { CHECK_CONDITION, GOOD, LunSession, describeIo, senseText } from './scsi-client.js';
import { expectSpace } from './space.js';
import { STATE, check, segments, table } from './table.js';

const MiB = 1 << 20;
const BASE = 'base';
const SNAP = 'snap1';
const CLONE = 'clone1';
const A = 0xa1;
const B = 0xb2;
const C = 0xc3;

/** qemu-io opened read-only (-r): it refuses to open a write-protected LUN read-write. */
async function readOnlyP(url: string, pattern: number, offset: number, len: number): Promise<void> {
  const r = await runBounded('qemu-io', ['-r', '-f', 'raw', '-c', `read -P 0x${pattern.toString(16)} ${offset} ${len}`, url], { timeoutMs: 60_000 });
  if (r.exitCode !== 0 || /failed|error|Pattern verification/i.test(r.stdout + r.stderr)) throw new Error(`${describeRun(r)}\n${r.stdout}`);
}

describe('system: snapshot and clone through two agents', function () {
  this.timeout(120_000);
  const cluster = useCluster('snapshot-clone', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    await c.serveVdisk({ vdisk: BASE, size: '16MiB', containerSize: '128MiB', agents: { a: {}, b: {} } });
  });

  /** The Check RPC behind `tabula check` (the CLI itself runs at the end). */
  async function clean(): Promise<void> {
    const r = await cluster().admin.call('Check', {});
    expect(r.violations).to.deep.equal([]);
    expect(r.ok).to.equal(true);
  }

  it('pattern A through agent a; the snapshot shares every written segment, copies nothing', async function () {
    const c = cluster();
    await writeP(c.url('a', BASE), A, 0, 8 * MiB);
    await clean();
    const out = await c.cliOk(['vdisk', 'snapshot', BASE, SNAP]);
    expect(out).to.match(new RegExp(`snapshot ${SNAP} of vdisk ${BASE} created: 16MiB, shares 8MiB`));
    // Both tables point at the same 8 container segments, no-write in both.
    const [tb, ts] = await Promise.all([table(c, BASE), table(c, SNAP)]);
    const sb = segments(tb);
    const ss = segments(ts);
    for (let s = 0; s < 8; s++) {
      expect(sb[s]?.state, `base segment ${s}`).to.equal(STATE.noWrite);
      expect(ss[s], `snapshot segment ${s}`).to.deep.equal(sb[s]);
    }
    expect(ss.slice(8).every((e) => e.state === STATE.zero)).to.equal(true);
    await expectSpace(c, MiB, { allocated: 8, shared: 8, exclusive: 0, vdisks: { [BASE]: [8, 0], [SNAP]: [8, 0] } });
    await clean();
  });

  it('pattern B through agent b lands in the vdisk only (copy-on-write keeps the rest of a partly written segment)', async function () {
    const c = cluster();
    // Segments 0-3 whole, and the first 64 KiB of segment 4.
    await writeP(c.url('b', BASE), B, 0, 4 * MiB + 65536);
    for (const agent of ['a', 'b']) {
      await readP(c.url(agent, BASE), B, 0, 4 * MiB + 65536);
      await readP(c.url(agent, BASE), A, 4 * MiB + 65536, 4 * MiB - 65536);
      await readP(c.url(agent, BASE), 0, 8 * MiB, 8 * MiB);
    }
    // Five segments copied for the vdisk; their old locations are the snapshot's alone.
    await expectSpace(c, MiB, { allocated: 13, shared: 3, exclusive: 10, vdisks: { [BASE]: [3, 5], [SNAP]: [3, 5] } });
    const sb = segments(await table(c, BASE));
    expect(sb.slice(0, 5).map((e) => e.state)).to.deep.equal(Array(5).fill(STATE.normal));
    expect(sb.slice(5, 8).map((e) => e.state)).to.deep.equal(Array(3).fill(STATE.noWrite));
    await clean();
  });

  it('the snapshot exported read-only reads A; a WRITE gets DATA PROTECT and MODE SENSE shows WP', async function () {
    const c = cluster();
    const out = await c.cliOk(['export', 'add', SNAP, '--agent', 'a', '--read-only']);
    expect(out).to.match(/snap1/);
    await c.waitServed(SNAP, ['a']);
    await readOnlyP(c.url('a', SNAP), A, 0, 8 * MiB);
    await readOnlyP(c.url('a', SNAP), 0, 8 * MiB, 8 * MiB);
    const s = await LunSession.open(c.agent('a').portal, iqnOf(SNAP));
    try {
      const w = await s.write(16, Buffer.alloc(4096, 0xee));
      expect(w.status, describeIo(w)).to.equal(CHECK_CONDITION);
      expect(senseText(w.sense)).to.equal('07/27/00');
      // MODE SENSE(6), all pages: the device-specific parameter's WP bit (0x80).
      const ms = await s.command(Buffer.from([0x1a, 0, 0x3f, 0, 0xff, 0]), { read: 0xff });
      expect(ms.status, describeIo(ms)).to.equal(GOOD);
      expect((ms.data[2] ?? 0) & 0x80, `device-specific parameter 0x${(ms.data[2] ?? 0).toString(16)}`).to.equal(0x80);
      const r = await s.read(16, 8);
      expect(r.data.equals(Buffer.alloc(4096, A))).to.equal(true);
    } finally {
      s.close();
    }
    // The vdisk is unchanged by any of it.
    await readP(c.url('a', BASE), B, 0, 4 * MiB + 65536);
    await clean();
  });

  it('a clone of the snapshot takes pattern C; snapshot and vdisk keep theirs', async function () {
    const c = cluster();
    const out = await c.cliOk(['vdisk', 'clone', SNAP, CLONE]);
    expect(out).to.match(new RegExp(`vdisk ${CLONE} cloned from ${SNAP}: 16MiB, shares 8MiB`));
    await expectSpace(c, MiB, { allocated: 13, shared: 8, exclusive: 5, vdisks: { [BASE]: [3, 5], [SNAP]: [8, 0], [CLONE]: [8, 0] } });
    await c.cliOk(['export', 'add', CLONE, '--agent', 'b']);
    await c.waitServed(CLONE, ['b']);
    await readP(c.url('b', CLONE), A, 0, 8 * MiB);
    // Segments 2-5 of the clone, and a zero segment (12) allocated for it.
    await writeP(c.url('b', CLONE), C, 2 * MiB, 4 * MiB);
    await writeP(c.url('b', CLONE), C, 12 * MiB, MiB);
    await readP(c.url('b', CLONE), A, 0, 2 * MiB);
    await readP(c.url('b', CLONE), C, 2 * MiB, 4 * MiB);
    await readP(c.url('b', CLONE), A, 6 * MiB, 2 * MiB);
    await readP(c.url('b', CLONE), C, 12 * MiB, MiB);
    await readOnlyP(c.url('a', SNAP), A, 0, 8 * MiB);
    await readOnlyP(c.url('a', SNAP), 0, 12 * MiB, MiB);
    for (const agent of ['a', 'b']) {
      await readP(c.url(agent, BASE), B, 0, 4 * MiB + 65536);
      await readP(c.url(agent, BASE), A, 4 * MiB + 65536, 4 * MiB - 65536);
      await readP(c.url(agent, BASE), 0, 8 * MiB, 8 * MiB);
    }
    // Snapshot locations 0-1 shared with the clone, 2-4 its own, 5 shared
    // with the vdisk, 6-7 with both; 5 new segments for the clone.
    await expectSpace(c, MiB, { allocated: 18, shared: 5, exclusive: 13, vdisks: { [BASE]: [3, 5], [SNAP]: [5, 3], [CLONE]: [4, 5] } });
    await clean();
    // What an operator sees.
    const ls = await c.cliOk(['vdisk', 'ls']);
    expect(ls).to.match(/NAME\s+KIND\s+PROVISIONED\s+ALLOCATED\s+SHARED\s+EXCLUSIVE/);
    expect(ls).to.match(new RegExp(`${SNAP}\\s+snapshot of ${BASE}\\s+16MiB\\s+8MiB \\(50%\\)\\s+5MiB\\s+3MiB`));
    expect(ls).to.match(new RegExp(`${CLONE}\\s+clone of ${SNAP}\\s+16MiB\\s+9MiB \\(56%\\)\\s+4MiB\\s+5MiB`));
    const cls = await c.cliOk(['container', 'ls']);
    expect(cls).to.match(/CAPACITY\s+ALLOCATED\s+SHARED\s+EXCLUSIVE\s+FREE/);
    expect(cls).to.match(/\s18MiB\s+5MiB\s+13MiB\s/);
  });

  it('removing the snapshot frees what only it held; a location left to one holder becomes writable there', async function () {
    const c = cluster();
    await c.cliOk(['export', 'rm', SNAP, '--agent', 'a']);
    await c.cliOk(['vdisk', 'rm', SNAP]);
    // Snapshot-only 2-4 freed; 0-1 now the clone's alone, 5 the vdisk's, 6-7 still shared by both.
    await expectSpace(c, MiB, { allocated: 15, shared: 2, exclusive: 13, vdisks: { [BASE]: [2, 6], [CLONE]: [2, 7] } });
    const sb = segments(await table(c, BASE));
    expect(sb[5]?.state, 'vdisk segment 5, now exclusive').to.equal(STATE.normal);
    expect(sb[6]?.state, 'vdisk segment 6, still shared').to.equal(STATE.noWrite);
    const sc = segments(await table(c, CLONE));
    expect(sc[0]?.state, 'clone segment 0, now exclusive').to.equal(STATE.normal);
    await readP(c.url('b', CLONE), A, 0, 2 * MiB);
    await readP(c.url('a', BASE), A, 5 * MiB, 3 * MiB);
    const r = await check(c);
    expect(r.ok, r.text).to.equal(true);
    expect(r.text).to.match(/ok: all invariants hold/);
  });
});
