// Leg failure and resync (src/controller/mirrors.ts) against a fake host: a
// real database and real table changes (with no agent holding the tables,
// so no acks are waited for), and fake copy commands. What is checked is
// the decision: one table change per vdisk whatever the number of leg
// faults, which legs go stale and dirty, promotion, and what a resync
// copies (only the dirty segments).
import { expect } from 'chai';
import { join } from 'node:path';
import { Allocator } from '../../../src/controller/allocator.js';
import type { AgentLink } from '../../../src/controller/agent-link.js';
import type { AgentRegistry } from '../../../src/controller/agent-registry.js';
import type { CopyArgs } from '../../../src/controller/agent-commands.js';
import { checkInvariants } from '../../../src/controller/check.js';
import { ControllerDb, type Location } from '../../../src/controller/db.js';
import { MirrorManager, type LegAnswer, type MirrorHost } from '../../../src/controller/mirrors.js';
import { TableChanges } from '../../../src/controller/table-changes.js';
import { WriteBehind } from '../../../src/controller/write-behind.js';
import { IoOp, SegmentState } from '../../../src/table/index.js';
import type { Fault } from '../../../src/wire/proto-types.js';
import { CA, CB, CC, MiB, tempDir, until } from './helpers.js';

const NORMAL = SegmentState.Normal;
const NO_WRITE = SegmentState.NoWrite;
const SEGS = 8;

interface Fake {
  db: ControllerDb;
  tables: TableChanges;
  mirrors: MirrorManager;
  host: MirrorHost & { closed: boolean };
  copies: CopyArgs[];
  /** Answer of the next copies: null = done. */
  copyError: string | null;
  /** Agent copyAgent names (null: none reaches both). */
  copyAgent: string | null;
  released: string[];
}

describe('controller mirrors: leg failure and resync (fake host)', () => {
  let t: ReturnType<typeof tempDir>;
  let f: Fake;

  beforeEach(() => {
    t = tempDir();
    const db = new ControllerDb(join(t.dir, 'c.db'));
    const domains: Record<string, string> = { [CA]: 'd1', [CB]: 'd2', [CC]: 'd3' };
    for (const id of [CA, CB, CC]) {
      db.insertContainer({ id, path: `/c/${id.slice(0, 8)}`, size: (SEGS + 1) * MiB, dataOffset: MiB, segmentSize: MiB, segmentsTotal: SEGS, state: 'online', domain: domains[id] as string });
    }
    const writeBehind = new WriteBehind(db);
    // No agent holds a table: commits are sent to no one and acked at once.
    const agents = { holders: () => [], leaseMs: 0, leaseEnd: () => 0, unreachableExporters: () => [] } as unknown as AgentRegistry;
    const migrating = new Set<string>();
    const allocator = new Allocator(db);
    const tables = new TableChanges(db, allocator, writeBehind, agents, 1000, { migrating, scrub: () => undefined, settled: () => undefined });
    const fake = { copies: [] as CopyArgs[], copyError: null as string | null, copyAgent: 'a1' as string | null, released: [] as string[] };
    const host = {
      db,
      closed: false,
      migrating,
      writeBehind,
      tables,
      allocator,
      // Every copying agent stays connected: a copy error is the copy's own.
      agents: { link: () => ({}) as AgentLink },
      commands: {
        copyAgent: () => fake.copyAgent,
        copy: (_agent: string, cmd: CopyArgs) => {
          fake.copies.push(cmd);
          return Promise.resolve(fake.copyError);
        },
      },
    };
    const mirrors = new MirrorManager(host, (v) => fake.released.push(v));
    f = Object.assign(fake, { db, tables, mirrors, host });
  });

  afterEach(() => {
    f.host.closed = true;
    f.db.close();
    t.cleanup();
  });

  /** A 2-copy (or `copies`) vdisk with segment i on CA@i and CB@i (and CC@i for 3). */
  async function mirrored(name: string, segs: number, copies = 2, base = 0): Promise<string> {
    const id = `${name}-id`;
    f.db.insertVdisk({ id, name, size: segs * MiB, blockSize: 512, segmentSize: MiB, segmentCount: segs, thin: true, version: 0, copies });
    await f.tables.changeTable(id, (ctx) => {
      for (let s = 0; s < segs; s++) {
        const legs = [CA, CB, CC].slice(0, copies).map((c) => ({ containerId: c, offset: base + s }));
        ctx.set(s, NORMAL, legs[0] as Location, legs.slice(1));
      }
    });
    return id;
  }

  let nextFault = 1;
  function legFault(vdiskId: string, seg: number, failed: string, op: IoOp = IoOp.Write): Promise<LegAnswer> {
    const fault: Fault = { faultId: nextFault++, vdiskId, tableVersion: 1, segment: seg, op, lba: seg * 2048, blocks: 8, state: NORMAL, detail: 'EIO', failedContainer: failed };
    return new Promise((resolve) => f.mirrors.legFault(fault, resolve));
  }

  const where = (id: string, seg: number): string[] => f.db.locationsOfSegment(id, seg).map((l) => `${l.containerId.slice(0, 2)}@${l.offset}`);
  const state = (id: string, seg: number): SegmentState => f.db.segment(id, seg).state;
  const stale = (c: string) => f.db.staleLegs({ containerId: c }).map((s) => `${s.vdiskId}:${s.seg}${s.dirty ? ' dirty' : ''}`);
  const events = (kind: string): string[] =>
    (f.db.sql.prepare('SELECT subject, message FROM events WHERE kind = ? ORDER BY rowid').all(kind) as { subject: string; message: string }[]).map((e) => `${e.subject}: ${e.message}`);
  const clean = (): void => {
    f.host.writeBehind.flush();
    expect(checkInvariants(f.db).filter((l) => !/degraded/i.test(l))).to.deep.equal([]);
  };

  it('one leg fault: the container fails, every mirrored segment loses that leg in one change, RETRY', async () => {
    const id = await mirrored('m', 4);
    const v0 = f.db.vdisk(id)!.version;
    const a = await legFault(id, 1, CB);
    expect(a).to.deep.equal({ kind: 'retry' });
    expect(f.db.container(CB)!.state).to.equal('failed');
    expect(f.db.vdisk(id)!.version).to.equal(v0 + 1);
    for (let s = 0; s < 4; s++) expect(where(id, s), `segment ${s}`).to.deep.equal([`aa@${s}`]);
    // The faulting segment was written to CA only: dirty, and writable. The others: clean, no-write (tracking).
    expect(stale(CB)).to.deep.equal([`${id}:0`, `${id}:1 dirty`, `${id}:2`, `${id}:3`]);
    expect([0, 1, 2, 3].map((s) => state(id, s))).to.deep.equal([NO_WRITE, NORMAL, NO_WRITE, NO_WRITE]);
    // The cached table (what agents get) has one leg per segment.
    const table = f.tables.table(id);
    expect([0, 1, 2, 3].map((s) => table.legCountOf(s))).to.deep.equal([1, 1, 1, 1]);
    // Stale legs keep their references: nothing is released or free.
    expect(f.db.refcount({ containerId: CB, offset: 2 })).to.equal(1);
    expect(events('container-failed')).to.have.length(1);
    expect(events('degraded')).to.deep.equal([`m: 4 segments lost their copy on failed container ${CB}`]);
    clean();
  });

  it('a failed leg 0 promotes leg 1', async () => {
    const id = await mirrored('m', 2);
    expect(await legFault(id, 0, CA)).to.deep.equal({ kind: 'retry' });
    expect(where(id, 0)).to.deep.equal(['bb@0']);
    expect(where(id, 1)).to.deep.equal(['bb@1']);
    expect(f.tables.table(id).get(0).container).to.equal(CB);
    expect(stale(CA)).to.deep.equal([`${id}:0 dirty`, `${id}:1`]);
    clean();
  });

  it('leg faults arriving together are decided once per container: one change per vdisk, every fault RETRY, each named segment dirty', async () => {
    const id1 = await mirrored('m1', 4);
    const id2 = await mirrored('m2', 2, 2, 4);
    const v1 = f.db.vdisk(id1)!.version;
    const v2 = f.db.vdisk(id2)!.version;
    const answers = await Promise.all([legFault(id1, 0, CB), legFault(id1, 3, CB), legFault(id2, 1, CB), legFault(id1, 0, CB)]);
    expect(answers.map((a) => a.kind)).to.deep.equal(['retry', 'retry', 'retry', 'retry']);
    expect(f.db.vdisk(id1)!.version).to.equal(v1 + 1);
    expect(f.db.vdisk(id2)!.version).to.equal(v2 + 1);
    expect(stale(CB)).to.deep.equal([`${id1}:0 dirty`, `${id1}:1`, `${id1}:2`, `${id1}:3 dirty`, `${id2}:0`, `${id2}:1 dirty`]);
    expect(events('container-failed')).to.have.length(1);
    clean();
  });

  it('a later leg fault for a failed container marks its segment dirty and gets RETRY, with no table change', async () => {
    const id = await mirrored('m', 4);
    await legFault(id, 0, CB);
    const v = f.db.vdisk(id)!.version;
    expect(await legFault(id, 2, CB)).to.deep.equal({ kind: 'retry' });
    expect(f.db.vdisk(id)!.version).to.equal(v);
    expect(stale(CB)).to.deep.equal([`${id}:0 dirty`, `${id}:1`, `${id}:2 dirty`, `${id}:3`]);
    expect(events('container-failed')).to.have.length(1);
  });

  it('a failed read or flush (verify) marks nothing dirty: the stale leg still holds what the others hold', async () => {
    // Regression: read leg faults marked their segments dirty, so a resync copied segments that were only read.
    const id = await mirrored('m', 4);
    expect(await legFault(id, 1, CB, IoOp.Read)).to.deep.equal({ kind: 'retry' });
    expect(await legFault(id, 2, CB, IoOp.Read)).to.deep.equal({ kind: 'retry' });
    expect(await legFault(id, 3, CB, IoOp.Verify)).to.deep.equal({ kind: 'retry' });
    expect(stale(CB)).to.deep.equal([`${id}:0`, `${id}:1`, `${id}:2`, `${id}:3`]);
    expect(await legFault(id, 2, CB)).to.deep.equal({ kind: 'retry' });
    expect(stale(CB)).to.deep.equal([`${id}:0`, `${id}:1`, `${id}:2 dirty`, `${id}:3`]);
    clean();
  });

  it('a segment whose only leg is on the failed container keeps it (single-copy behaviour)', async () => {
    const id = await mirrored('m', 2);
    // Segment 1 is degraded already: its only leg is CB@1.
    await f.tables.changeTable(id, (ctx) => ctx.set(1, NORMAL, { containerId: CB, offset: 1 }, []));
    await legFault(id, 0, CB);
    expect(where(id, 0)).to.deep.equal(['aa@0']);
    expect(where(id, 1)).to.deep.equal(['bb@1']);
    expect(state(id, 1)).to.equal(NORMAL);
    expect(stale(CB)).to.deep.equal([`${id}:0 dirty`]);
    clean();
  });

  it('three copies: the failed leg in the middle goes, the other two stay in order', async () => {
    const id = await mirrored('m', 2, 3);
    await legFault(id, 1, CB);
    expect(where(id, 0)).to.deep.equal(['aa@0', 'cc@0']);
    expect(where(id, 1)).to.deep.equal(['aa@1', 'cc@1']);
    clean();
  });

  it('resync: clean legs come back in one change (tracking no-write back to normal), dirty ones are copied from a healthy leg, the container is online', async () => {
    const id = await mirrored('m', 4);
    const bytes: number[] = [];
    f.mirrors.observer = { resyncBytes: (n) => bytes.push(n) };
    await legFault(id, 1, CB);
    // Segment 2 written since (what make-writable does: dirty, normal).
    await f.tables.changeTable(id, (ctx) => {
      f.db.markDirty(id, 2);
      ctx.set(2, NORMAL, { containerId: CA, offset: 2 });
    });
    // Reported reachable while online: nothing to do.
    f.mirrors.containerReachable(CA);
    expect(f.mirrors.resyncing(CA)).to.equal(false);
    f.mirrors.containerReachable(CB);
    expect(f.mirrors.resyncing(CB)).to.equal(true);
    await f.mirrors.settled(CB);
    expect(f.copies.map((c) => [c.srcContainer, c.srcOffset, c.dstContainer, c.dstOffset, c.length])).to.have.deep.members([
      [CA, 1 * MiB, CB, 1 * MiB, MiB],
      [CA, 2 * MiB, CB, 2 * MiB, MiB],
    ]);
    for (let s = 0; s < 4; s++) expect(where(id, s), `segment ${s}`).to.deep.equal([`aa@${s}`, `bb@${s}`]);
    expect([0, 1, 2, 3].map((s) => state(id, s))).to.deep.equal([NORMAL, NORMAL, NORMAL, NORMAL]);
    expect(stale(CB)).to.deep.equal([]);
    expect(f.db.container(CB)!.state).to.equal('online');
    expect(f.mirrors.resyncBytesTotal).to.equal(2 * MiB);
    expect(bytes).to.deep.equal([MiB, MiB]);
    expect(f.released.filter((v) => v === id)).to.have.length(2);
    expect(f.db.refcount({ containerId: CB, offset: 1 })).to.equal(1);
    expect(f.tables.table(id).legCountOf(3)).to.equal(2);
    expect(events('container-online')).to.have.length(1);
    clean();
  });

  it('resync keeps an entry no-write while its first leg is shared (a snapshot taken while degraded)', async () => {
    const id = await mirrored('m', 2);
    await legFault(id, 0, CB);
    // A snapshot now: the source's entries no-write, every location shared (stale legs stay the source's).
    await f.tables.changeTable(id, (ctx) => ctx.set(0, NO_WRITE, { containerId: CA, offset: 0 }));
    const sid = 's-id';
    f.db.tx(() => {
      f.db.insertVdisk({ id: sid, name: 's', size: 2 * MiB, blockSize: 512, segmentSize: MiB, segmentCount: 2, thin: true, version: 0, kind: 'snapshot', parentId: id });
      f.db.shareInto(id, sid);
    });
    await f.mirrors.resync(CB);
    expect(f.copies.map((c) => [c.srcContainer, c.srcOffset, c.dstContainer, c.dstOffset])).to.deep.equal([[CA, 0, CB, 0]]);
    for (let s = 0; s < 2; s++) {
      expect(where(id, s), `segment ${s}`).to.deep.equal([`aa@${s}`, `bb@${s}`]);
      expect(state(id, s), `segment ${s}`).to.equal(NO_WRITE);
      expect(where(sid, s), `snapshot segment ${s}`).to.deep.equal([`aa@${s}`]);
    }
    expect(f.db.container(CB)!.state).to.equal('online');
    clean();
  });

  it('resync with a copy that fails: the container stays failed with its stale legs', async () => {
    const id = await mirrored('m', 2);
    await legFault(id, 0, CB);
    f.copyError = 'EIO on the destination';
    await f.mirrors.resync(CB);
    expect(f.db.container(CB)!.state).to.equal('failed');
    // The clean leg came back; the dirty one did not, and its segment is writable again.
    expect(where(id, 1)).to.deep.equal(['aa@1', 'bb@1']);
    expect(where(id, 0)).to.deep.equal(['aa@0']);
    expect(stale(CB)).to.deep.equal([`${id}:0 dirty`]);
    expect(events('container-resync').some((e) => /stopped/.test(e))).to.equal(true);
    clean();
  });

  it('resync waits while no agent reaches both containers, and goes on once one does', async () => {
    const id = await mirrored('m', 2);
    await legFault(id, 1, CB);
    f.copyAgent = null;
    const done = f.mirrors.resync(CB);
    await until(() => where(id, 0).length === 2, 5000, 'clean leg back');
    expect(f.copies).to.have.length(0);
    expect(f.mirrors.resyncProgress(id)).to.deep.equal({ done: 0, total: 1, bytes: 0 });
    f.copyAgent = 'a2';
    await done;
    expect(f.copies).to.have.length(1);
    expect(where(id, 1)).to.deep.equal(['aa@1', 'bb@1']);
    expect(f.mirrors.resyncProgress(id)).to.equal(undefined);
    expect(f.db.container(CB)!.state).to.equal('online');
  });

  it('a leg fault during a resync stops it and removes the re-added legs again', async () => {
    const id = await mirrored('m', 4);
    await legFault(id, 1, CB);
    f.copyAgent = null; // the dirty segment waits
    const done = f.mirrors.resync(CB);
    await until(() => where(id, 0).length === 2, 5000, 'clean legs back');
    expect(await legFault(id, 0, CB)).to.deep.equal({ kind: 'retry' });
    await done;
    expect(f.db.container(CB)!.state).to.equal('failed');
    for (let s = 0; s < 4; s++) expect(where(id, s), `segment ${s}`).to.deep.equal([`aa@${s}`]);
    expect(stale(CB)).to.deep.equal([`${id}:0 dirty`, `${id}:1 dirty`, `${id}:2`, `${id}:3`]);
    clean();
  });
});
