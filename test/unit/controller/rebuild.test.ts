// RebuildManager against a fake host: an in-memory world of segments and
// legs, table changes that apply at once, copies the test can hold. What is
// checked is the order of the steps per segment (freeze, copy from a healthy
// leg, add the leg), where new legs go (a domain the segment does not use),
// stale legs and the rebuild delay, set-copies, health, and concurrency.
import { expect } from 'chai';
import { SegmentState } from '../../../src/table/index.js';
import type { AgentLink } from '../../../src/controller/agent-link.js';
import type { CopyArgs } from '../../../src/controller/agent-commands.js';
import type { ExportRow, Location, SegmentRow, StaleLeg, VdiskRow } from '../../../src/controller/db.js';
import type { CommitResult } from '../../../src/controller/table-changes.js';
import { RebuildManager, type RebuildChange, type RebuildHost } from '../../../src/controller/rebuild.js';

/** Polls `pred` (the fake host settles on the event loop) until true, or fails naming `what`. */
async function until(pred: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

const SEG = 1 << 20;
const NORMAL = SegmentState.Normal;
const NO_WRITE = SegmentState.NoWrite;
const key = (l: Location): string => `${l.containerId}@${l.offset}`;

interface Seg {
  state: SegmentState;
  legs: Location[];
}

/** One vdisk `d`, containers with a domain and free offsets, and a log of what the rebuild did. */
class World {
  readonly vdisk: VdiskRow;
  readonly segs = new Map<number, Seg>();
  stale: StaleLeg[] = [];
  readonly domains = new Map<string, string>();
  readonly free = new Map<string, number[]>();
  readonly log: string[] = [];
  readonly unreserved: string[] = [];
  readonly released: string[] = [];
  readonly migrating = new Set<string>();
  /** Locations another table shares too (refcount 2). */
  readonly shared = new Set<string>();
  /** Set: copies wait for the test to call it (per copy), else they finish at once. */
  hold = false;
  readonly pending: (() => void)[] = [];
  inFlight = 0;
  maxInFlight = 0;
  /** Runs during a copy (a change racing the rebuild). */
  duringCopy: ((a: CopyArgs) => void) | null = null;
  changes = 0;
  closed = false;

  constructor(segmentCount: number, copies: number) {
    this.vdisk = {
      id: 'v1',
      name: 'd',
      size: segmentCount * SEG,
      blockSize: 512,
      segmentSize: SEG,
      segmentCount,
      thin: true,
      version: 1,
      created: '',
      kind: 'vdisk',
      parentId: null,
      copies,
    };
  }

  container(id: string, domain: string, room: number): this {
    this.domains.set(id, domain);
    this.free.set(
      id,
      Array.from({ length: room }, (_, i) => 100 + i),
    );
    return this;
  }

  seg(seg: number, legs: Location[], state = NORMAL): this {
    this.segs.set(seg, { state, legs });
    return this;
  }

  legsOf(seg: number): string[] {
    return (this.segs.get(seg)?.legs ?? []).map(key);
  }

  host(): RebuildHost {
    const w = this;
    const segRow = (seg: number): SegmentRow => {
      const s = w.segs.get(seg);
      const l = s?.legs[0];
      return { vdiskId: 'v1', seg, state: s?.state ?? SegmentState.Zero, containerId: l?.containerId ?? null, offset: l?.offset ?? null };
    };
    const table = {
      get segmentCount() {
        return w.vdisk.segmentCount;
      },
      legCountOf: (seg: number) => w.segs.get(seg)?.legs.length ?? 0,
      stateOf: (seg: number) => w.segs.get(seg)?.state ?? SegmentState.Zero,
    };
    return {
      db: {
        vdisk: (id: string) => (id === 'v1' ? w.vdisk : undefined),
        vdisks: () => [w.vdisk],
        exportsOfVdisk: (): ExportRow[] => [],
        segment: (_id: string, seg: number) => segRow(seg),
        refcount: (l: Location) => (w.shared.has(key(l)) ? 2 : 1),
        event: () => undefined,
        locationsOfSegment: (_id: string, seg: number) => [...(w.segs.get(seg)?.legs ?? [])],
        staleLegs: (f: { vdiskId?: string; containerId?: string }) =>
          w.stale.filter((s) => (f.vdiskId === undefined || s.vdiskId === f.vdiskId) && (f.containerId === undefined || s.containerId === f.containerId)),
        dropStaleLeg: (_id: string, seg: number, containerId: string) => {
          w.stale = w.stale.filter((s) => !(s.seg === seg && s.containerId === containerId));
          w.released.push(`stale ${seg} ${containerId}`);
        },
        setVdiskCopies: (_id: string, copies: number) => {
          w.vdisk.copies = copies;
        },
      } as unknown as RebuildHost['db'],
      allocator: {
        eligibleContainers: () => [...w.free.keys()],
        reserve: (_v: VdiskRow, count: number, eligible?: readonly string[]): Location[] => {
          const c = (eligible ?? []).find((id) => (w.free.get(id)?.length ?? 0) >= count);
          if (c === undefined) throw new Error('no room');
          return (w.free.get(c) as number[]).splice(0, count).map((offset) => ({ containerId: c, offset }));
        },
        unreserve: (locs: readonly Location[], free: boolean) => {
          for (const l of locs) w.unreserved.push(`${key(l)}${free ? ' free' : ''}`);
        },
      },
      writeBehind: { flush: () => undefined },
      get closed() {
        return w.closed;
      },
      migrating: w.migrating,
      tables: {
        quiesce: () => Promise.resolve(),
        serialize: <T>(_id: string, fn: () => Promise<T>) => fn(),
        reclaim: () => 0,
        table: () => table,
        changeTable: (_id: string, change: (c: RebuildChange) => void): Promise<CommitResult | null> => {
          const touched = new Set<number>();
          change({
            set: (seg, state, location, legs) => {
              const s = w.segs.get(seg) as Seg;
              const primary = location as Location;
              const keep = legs ?? (key(primary) === key(s.legs[0] as Location) ? s.legs.slice(1) : []);
              w.segs.set(seg, { state, legs: [primary, ...keep] });
              w.log.push(`set ${seg} ${state === NORMAL ? 'normal' : state === NO_WRITE ? 'no-write' : state} ${[primary, ...keep].map(key).join('+')}`);
              touched.add(seg);
            },
            setLegs: (seg, legs) => {
              const s = w.segs.get(seg) as Seg;
              w.segs.set(seg, { state: s.state, legs: [s.legs[0] as Location, ...legs] });
              w.log.push(`legs ${seg} ${legs.map(key).join('+') || '-'}`);
              touched.add(seg);
            },
          });
          if (touched.size === 0) return Promise.resolve(null);
          w.changes++;
          const from = w.vdisk.version++;
          return Promise.resolve({ vdiskId: 'v1', fromVersion: from, version: w.vdisk.version, ranges: [], segmentCount: w.vdisk.segmentCount, touchesNormal: true });
        },
      },
      agents: { link: () => ({}) as unknown as AgentLink },
      commands: {
        copyAgent: () => 'a1',
        copy: async (_agent: string, a: CopyArgs) => {
          w.log.push(`copy ${a.srcContainer}@${a.srcOffset / SEG} ${a.dstContainer}@${a.dstOffset / SEG}`);
          w.inFlight++;
          w.maxInFlight = Math.max(w.maxInFlight, w.inFlight);
          if (w.hold) await new Promise<void>((r) => w.pending.push(r));
          w.duringCopy?.(a);
          w.inFlight--;
          return null;
        },
      },
    };
  }
}

describe('controller mirror rebuild (fake host)', () => {
  const managers: RebuildManager[] = [];
  afterEach(() => {
    for (const m of managers.splice(0)) m.stop();
  });
  const manager = (w: World, opts: { delayMs?: number; concurrency?: number } = {}): RebuildManager => {
    const released: string[] = [];
    const m = new RebuildManager(w.host(), (id) => released.push(id), { domains: () => w.domains, scanIntervalMs: 60_000, ...opts });
    managers.push(m);
    return m;
  };
  const A = (offset: number): Location => ({ containerId: 'A', offset });
  const B = (offset: number): Location => ({ containerId: 'B', offset });

  it('gives each degraded segment a new leg in a domain it does not use: freeze, copy a healthy leg, add the leg', async () => {
    // A and A2 share domain d1: the new legs must go to B (d2).
    const w = new World(4, 2).container('A', 'd1', 8).container('A2', 'd1', 8).container('B', 'd2', 8);
    w.seg(0, [A(0)]).seg(1, [A(1)], NO_WRITE).seg(3, [A(3), B(3)]);
    const m = manager(w, { concurrency: 1 });
    let bytes = 0;
    m.observer = { copied: (n) => (bytes += n) };
    expect(m.health('v1')).to.deep.include({ copies: 2, segments: 3, degraded: 2, stale: 0, dirty: 0 });
    m.start();
    await until(() => !m.running('v1') && w.legsOf(1).length === 2, 2000, 'rebuild done');
    expect(w.log).to.deep.equal([
      'set 0 no-write A@0',
      'copy A@0 B@100',
      'set 0 normal A@0+B@100',
      // Already no-write (an abandoned step, say): no freeze; held by this table alone, so writable after.
      'copy A@1 B@101',
      'set 1 normal A@1+B@101',
    ]);
    expect(w.legsOf(3)).to.deep.equal(['A@3', 'B@3']);
    expect(w.migrating.size).to.equal(0);
    expect(w.unreserved).to.deep.equal(['B@100', 'B@101']);
    expect(bytes).to.equal(2 * SEG);
    expect(m.health('v1')).to.deep.include({ segments: 3, degraded: 0, blocked: '' });
  });

  it('a shared segment (a snapshot holds it too) stays no-write with its new leg', async () => {
    const w = new World(1, 2).container('A', 'd1', 4).container('B', 'd2', 4);
    w.seg(0, [A(0)], NO_WRITE);
    w.shared.add('A@0');
    const m = manager(w);
    m.start();
    await until(() => !m.running('v1') && w.legsOf(0).length === 2, 2000, 'rebuild done');
    expect(w.log).to.deep.equal(['copy A@0 B@100', 'set 0 no-write A@0+B@100']);
  });

  it('with three copies adds two legs in two more domains', async () => {
    const w = new World(1, 3).container('A', 'd1', 4).container('B', 'd2', 4).container('C', 'd3', 4);
    w.seg(0, [A(0)]);
    const m = manager(w);
    m.start();
    await until(() => !m.running('v1') && w.legsOf(0).length === 3, 2000, 'rebuild done');
    const domains = w.segs.get(0)!.legs.map((l) => w.domains.get(l.containerId));
    expect(new Set(domains).size).to.equal(3);
  });

  it('a segment changed during its copy is left alone and its new location freed', async () => {
    const w = new World(1, 2).container('A', 'd1', 4).container('B', 'd2', 4);
    w.seg(0, [A(0)]);
    // The leg moves away under the copy (a migration, a copy-on-write): the copy is stale.
    w.duringCopy = () => {
      if (w.legsOf(0)[0] === 'A@0') w.segs.set(0, { state: NO_WRITE, legs: [A(7)] });
    };
    const m = manager(w);
    m.start();
    await until(() => w.legsOf(0).length === 2, 2000, 'rebuilt on the next pass');
    expect(w.unreserved[0]).to.equal('B@100 free');
    expect(w.legsOf(0)).to.deep.equal(['A@7', 'B@101']);
  });

  it('waits while no other domain has room, and says why in the health', async () => {
    const w = new World(2, 2).container('A', 'd1', 4).container('A2', 'd1', 4);
    w.seg(0, [A(0)]);
    const m = manager(w);
    m.start();
    await until(() => m.health('v1').blocked !== '', 2000, 'blocked');
    const h = m.health('v1');
    expect(h.blocked).to.match(/failure domain other than d1/);
    expect(h).to.deep.include({ degraded: 1 });
    expect(h.rebuilding).to.deep.include({ done: 0, total: 1 });
    expect(w.log).to.deep.equal([]);
    // Room in another domain comes: the run goes on when woken (a repair, say).
    w.container('B', 'd2', 4);
    await m.repair('v1');
    await until(() => !m.running('v1'), 2000, 'rebuild done');
    expect(w.legsOf(0)).to.deep.equal(['A@0', 'B@100']);
  });

  it('keeps segments with a stale leg for a resync until the rebuild delay, then drops the leg and rebuilds', async () => {
    const w = new World(3, 2).container('A', 'd1', 4).container('B', 'd2', 4).container('C', 'd3', 4);
    w.seg(0, [A(0)]).seg(1, [A(1)]);
    const old = new Date(Date.now() - 120_000).toISOString();
    w.stale = [
      { vdiskId: 'v1', seg: 0, containerId: 'C', offset: 0, dirty: true, since: new Date().toISOString() },
      { vdiskId: 'v1', seg: 1, containerId: 'C', offset: 1, dirty: false, since: old },
    ];
    const m = manager(w, { delayMs: 60_000 });
    expect(m.health('v1')).to.deep.include({ degraded: 2, stale: 2, dirty: 1 });
    m.start();
    await until(() => w.legsOf(1).length === 2 && !m.running('v1'), 2000, 'segment 1 rebuilt');
    expect(w.released).to.deep.equal(['stale 1 C']);
    expect(w.legsOf(0)).to.deep.equal(['A@0']);
    // repair does not wait for the delay.
    await m.repair('v1');
    await until(() => w.legsOf(0).length === 2 && !m.running('v1'), 2000, 'segment 0 rebuilt');
    expect(w.released).to.deep.equal(['stale 1 C', 'stale 0 C']);
    expect(m.health('v1')).to.deep.include({ degraded: 0, stale: 0 });
  });

  it('evacuate of a failed container drops its stale legs at once', async () => {
    const w = new World(2, 2).container('A', 'd1', 4).container('B', 'd2', 4);
    w.seg(0, [A(0)]).seg(1, [A(1)]);
    w.stale = [
      { vdiskId: 'v1', seg: 0, containerId: 'C', offset: 0, dirty: false, since: new Date().toISOString() },
      { vdiskId: 'v1', seg: 1, containerId: 'D', offset: 1, dirty: false, since: new Date().toISOString() },
    ];
    const m = manager(w);
    expect(await m.evacuate('C')).to.deep.equal(['v1']);
    await until(() => w.legsOf(0).length === 2 && !m.running('v1'), 2000, 'segment 0 rebuilt');
    expect(w.legsOf(1)).to.deep.equal(['A@1']);
    expect(w.stale.map((s) => s.containerId)).to.deep.equal(['D']);
  });

  it('set-copies up rebuilds every allocated segment; down removes the last legs in one table change', async () => {
    const w = new World(4, 1).container('A', 'd1', 4).container('B', 'd2', 4).container('C', 'd3', 4);
    w.seg(0, [A(0)]).seg(2, [A(2)]);
    const m = manager(w);
    await m.setCopies('v1', 3);
    expect(m.running('v1')).to.equal(true);
    await until(() => !m.running('v1'), 2000, 'rebuild done');
    expect(w.legsOf(0)).to.have.length(3);
    expect(w.legsOf(2)).to.have.length(3);
    expect(m.health('v1')).to.deep.include({ copies: 3, degraded: 0 });
    const before = w.changes;
    const kept = [w.legsOf(0).slice(0, 1), w.legsOf(2).slice(0, 1)];
    await m.setCopies('v1', 1);
    expect(w.changes - before).to.equal(1);
    expect([w.legsOf(0), w.legsOf(2)]).to.deep.equal(kept);
    expect(w.vdisk.copies).to.equal(1);
    expect(m.health('v1')).to.deep.include({ copies: 1, segments: 2, degraded: 0 });
  });

  it('set-copies down stops a running rebuild first', async () => {
    const w = new World(8, 1).container('A', 'd1', 8).container('B', 'd2', 8);
    for (let s = 0; s < 8; s++) w.seg(s, [A(s)]);
    w.hold = true;
    const m = manager(w, { concurrency: 2 });
    await m.setCopies('v1', 2);
    await until(() => w.pending.length === 2, 2000, 'two copies in flight');
    const down = m.setCopies('v1', 1);
    for (const r of w.pending.splice(0)) r();
    w.hold = false;
    await down;
    expect(m.running('v1')).to.equal(false);
    expect([...w.segs.keys()].every((s) => w.legsOf(s).length === 1)).to.equal(true);
  });

  it('copies at most four segments of a vdisk at once', async () => {
    const w = new World(10, 2).container('A', 'd1', 16).container('B', 'd2', 16);
    for (let s = 0; s < 10; s++) w.seg(s, [A(s)]);
    w.hold = true;
    const m = manager(w);
    m.start();
    await until(() => w.pending.length === 4, 2000, 'four copies in flight');
    expect(m.health('v1').rebuilding).to.deep.equal({ done: 0, total: 10, bytes: 0 });
    while (m.running('v1')) {
      for (const r of w.pending.splice(0)) r();
      await new Promise((r) => setImmediate(r));
    }
    expect(w.maxInFlight).to.equal(4);
    expect([...w.segs.keys()].every((s) => w.legsOf(s).length === 2)).to.equal(true);
  });

  it('leaves one-copy vdisks alone', async () => {
    const w = new World(2, 1).container('A', 'd1', 4).container('B', 'd2', 4);
    w.seg(0, [A(0)]).seg(1, [B(1)]);
    const m = manager(w);
    m.start();
    await new Promise((r) => setTimeout(r, 20));
    expect(m.running('v1')).to.equal(false);
    expect(w.log).to.deep.equal([]);
    expect(m.health('v1', 2)).to.deep.include({ copies: 1, segments: 2, degraded: 0, stale: 0 });
  });
});
