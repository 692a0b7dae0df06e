// Scrub before reuse: freed container segments are zeroed by an agent
// (ZeroCommand, answered with CopyDone) before the allocator may hand them
// out again, across agents coming and going, failures and restarts.
import { expect } from 'chai';
import { join } from 'node:path';
import { Allocator, ContainerFullError } from '../../../src/controller/allocator.js';
import { checkInvariants } from '../../../src/controller/check.js';
import { startController } from '../../../src/controller/daemon.js';
import { ControllerDb, TableChangeError, type Location } from '../../../src/controller/db.js';
import { Scrubber, type ScrubHost } from '../../../src/controller/scrubber.js';
import { SegmentState } from '../../../src/table/index.js';
import { CA, CB, FakeAgent, MiB, containerRef, sleep, startTestController, tempDir, until } from './helpers.js';

type Ctl = Awaited<ReturnType<typeof startTestController>>;

describe('controller scrubber (fake agents over loopback gRPC)', () => {
  let ctl: Ctl;
  const agents: FakeAgent[] = [];

  async function agent(name: string, containers: string[], opts: { zero?: 'ok' | 'manual' } = {}): Promise<FakeAgent> {
    const a = new FakeAgent(ctl.address, name, { containers: containers.map((c) => containerRef(c, 8)), ...opts });
    agents.push(a);
    await a.register();
    return a;
  }

  const used = (c: string): number => ctl.db.containerSegmentsUsed(c);
  const thick = (name: string, segs: number) => ctl.admin.CreateVdisk({ name, size: segs * MiB, thick: true });

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    await ctl.cleanup();
  });

  it('a removed vdisk\'s space is zeroed in one command and free only after CopyDone; meanwhile allocation says it is being scrubbed', async () => {
    ctl = await startTestController();
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const a = await agent('a1', [CA], { zero: 'manual' });
    thick('d', 4);
    await ctl.admin.RemoveVdisk({ name: 'd' });
    const m = await a.next((x) => x.body === 'zeroCommand');
    const z = m.body === 'zeroCommand' ? m.zeroCommand : undefined;
    expect(z).to.deep.include({ container: CA, offset: 0, length: 4 * MiB });
    expect(a.zeros).to.have.length(1);

    // Not free yet: accounted as allocated, never handed out, not a violation.
    expect(used(CA)).to.equal(4);
    expect(ctl.controller.allocator.freeSegments(CA)).to.equal(4);
    const info = ctl.admin.ListContainers({}).containers.find((c) => c.id === CA);
    expect(info).to.deep.include({ segmentsUsed: 4, allocatedBytes: 4 * MiB, freeBytes: 4 * MiB, sharedBytes: 0, exclusiveBytes: 0 });
    expect(() => thick('big', 6)).to.throw(ContainerFullError, /needs 6 more segments of 1MiB but its 1 eligible container has only 4 free; 4 segments are being scrubbed/);
    expect(ctl.admin.Check({}).ok).to.equal(true);

    a.copyDone(z!.commandId);
    await until(() => used(CA) === 0, 2000, 'scrubbed space free');
    expect(ctl.controller.allocator.freeSegments(CA)).to.equal(8);
    expect(thick('big', 8).segmentsAllocated).to.equal(8);
    expect(ctl.admin.Check({}).ok).to.equal(true);
  });

  it('waits for an agent that reaches the container; one that does not gets nothing', async () => {
    ctl = await startTestController();
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    thick('d', 3);
    await ctl.admin.RemoveVdisk({ name: 'd' });
    ctl.admin.AddContainer({ id: CB, path: '/c/b', size: 9 * MiB, dataOffset: MiB });
    const b = await agent('b', [CB]);
    await sleep(100);
    expect(b.zeros, 'b does not reach the container').to.have.length(0);
    expect(ctl.db.scrubPendingCount(CA)).to.equal(3);
    const a = await agent('a', [CA, CB]);
    await until(() => used(CA) === 0, 2000, 'scrubbed once a reaching agent registered');
    expect(a.zeros.map((x) => [x.container, x.offset, x.length])).to.deep.equal([[CA, 0, 3 * MiB]]);
  });

  it('retries a failed zero with backoff, recording the failure, and frees only once it succeeds', async () => {
    ctl = await startTestController({ scrub: { retryMinMs: 50, retryMaxMs: 100 } });
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const a = await agent('a1', [CA]);
    a.zeroError = 'zero /dev/fake/aaaaaaaa offset 0: EIO';
    thick('d', 2);
    await ctl.admin.RemoveVdisk({ name: 'd' });
    await until(() => a.zeros.length >= 2, 2000, 'a retry');
    expect(used(CA), 'failed zeros free nothing').to.equal(2);
    const events = ctl.db.sql.prepare("SELECT subject, message FROM events WHERE kind = 'scrub'").all() as { subject: string; message: string }[];
    expect(events).to.have.length(1);
    expect(events[0]!.subject).to.equal(CA);
    expect(events[0]!.message).to.match(/scrub of container .* segments 0\+2 on agent a1 failed: zero .*EIO/);
    a.zeroError = null;
    await until(() => used(CA) === 0, 2000, 'freed after a successful retry');
    expect(a.zeros.every((x) => x.container === CA && x.offset === 0 && x.length === 2 * MiB)).to.equal(true);
  });

  it('an agent that disconnects mid-zero: the segments stay pending, out of every agent\'s reach, until it is back and has had the deadline, then are zeroed', async () => {
    // A stream that goes away is not a stopped process: one that resumes
    // still runs the zero command buffered on its old stream, so nobody may
    // zero and free those segments before that command can no longer land.
    ctl = await startTestController({ scrub: { retryMinMs: 20, retryMaxMs: 50 }, commandTimeoutMs: 600 });
    ctl.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const a = await agent('a1', [CA], { zero: 'manual' });
    const other = await agent('a2', [CA]);
    thick('d', 2);
    await ctl.admin.RemoveVdisk({ name: 'd' });
    await a.next((x) => x.body === 'zeroCommand');
    a.close();
    await until(() => ctl.controller.agents.link('a1') === undefined, 2000, 'a1 gone');
    await sleep(1000);
    expect(used(CA)).to.equal(2);
    expect(other.zeros, 'another agent zeroed what a1 may still zero').to.have.length(0);
    const back = await agent('a1', [CA]);
    await until(() => used(CA) === 0, 5000, 'zeroed once a1 is back and its deadline passed');
    expect(back.zeros.length + other.zeros.length).to.equal(1);
  });

  it('pending scrubs survive a controller restart: not free after it, zeroed once an agent registers', async () => {
    const t = tempDir();
    const dbPath = join(t.dir, 'c.db');
    try {
      let h = await startController({ dbPath, listen: '127.0.0.1:0' });
      h.admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
      h.admin.CreateVdisk({ name: 'd', size: 5 * MiB, thick: true });
      await h.admin.RemoveVdisk({ name: 'd' });
      expect(h.db.scrubPendingCount(CA)).to.equal(5);
      await h.close();
      h = await startController({ dbPath, listen: '127.0.0.1:0' });
      ctl = Object.assign(h, { cleanup: async () => undefined });
      expect(h.controller.allocator.freeSegments(CA), 'a restart does not free them').to.equal(3);
      expect(h.controller.scrubber.pending()).to.equal(5);
      expect(h.admin.Check({}).ok).to.equal(true);
      const a = await agent('a1', [CA]);
      await until(() => h.db.containerSegmentsUsed(CA) === 0, 2000, 'scrubbed after restart');
      expect(a.zeros.map((x) => [x.offset, x.length])).to.deep.equal([[0, 5 * MiB]]);
      expect(h.controller.allocator.freeSegments(CA)).to.equal(8);
      await h.close();
    } finally {
      t.cleanup();
    }
  });
});

describe('controller scrubber (queue, with a stand-in host)', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 's.db'));
    db.insertContainer({ id: CA, path: '/a', size: 33 * MiB, dataOffset: MiB, segmentSize: MiB, segmentsTotal: 32, state: 'online' });
  });
  afterEach(() => {
    db.close();
    t.cleanup();
  });

  const at = (...offsets: number[]): Location[] => offsets.map((offset) => ({ containerId: CA, offset }));

  it('coalesces consecutive offsets up to the byte bound and keeps at most maxInFlight commands out', async () => {
    // Waiting in the DB before the controller (re)starts: taken up from there.
    const offsets = [13, 0, 1, 2, 4, 6, 7, 9, 10, 11, 12, 14, 15];
    db.markScrub(at(...offsets));
    const allocator = new Allocator(db);
    const sent: { offset: number; length: number; resolve: (err: string | null) => void }[] = [];
    let out = 0;
    let maxOut = 0;
    const host: ScrubHost = {
      db,
      allocator,
      commands: {
        copyAgent: () => 'a1',
        zero: (_agent, cmd) =>
          new Promise((resolve) => {
            out++;
            maxOut = Math.max(maxOut, out);
            sent.push({
              offset: cmd.offset,
              length: cmd.length,
              resolve: (err) => {
                out--;
                resolve(err);
              },
            });
          }),
      },
    };
    expect(allocator.freeSegments(CA)).to.equal(32 - offsets.length);
    const s = new Scrubber(host, { maxInFlight: 2, maxCommandBytes: 4 * MiB });
    expect(s.pending()).to.equal(offsets.length);
    s.kick();
    for (let done = 0; done < 5; done++) {
      await until(() => sent.length > done, 2000, `command ${done + 1}`);
      await sleep(10);
      sent[done]!.resolve(null);
    }
    await until(() => s.pending() === 0, 2000, 'all scrubbed');
    expect(sent.map((c) => [c.offset / MiB, c.length / MiB])).to.deep.equal([
      [0, 3],
      [4, 1],
      [6, 2],
      [9, 4],
      [13, 3],
    ]);
    expect(maxOut).to.equal(2);
    expect(db.scrubPending()).to.deep.equal([]);
    expect(allocator.freeSegments(CA)).to.equal(32);
    s.stop();
  });

  it('sends nothing for a location the DB no longer has waiting (never zeroes live data)', async () => {
    const allocator = new Allocator(db);
    const sent: number[][] = [];
    const host: ScrubHost = {
      db,
      allocator,
      commands: {
        copyAgent: () => 'a1',
        zero: (_agent, cmd) => {
          sent.push([cmd.offset / MiB, cmd.length / MiB]);
          return Promise.resolve(null);
        },
      },
    };
    const s = new Scrubber(host);
    // 3 is queued but is not marked in the DB.
    s.add([...db.markScrub(at(1, 2)), ...at(3)]);
    await until(() => s.pending() === 0, 2000, 'queue worked off');
    expect(sent).to.deep.equal([[1, 2]]);
    expect(db.scrubPending()).to.deep.equal([]);
    s.stop();
  });

  it('a given-up reservation is scrubbed, not freed, and its location cannot be mapped meanwhile', () => {
    const allocator = new Allocator(db);
    const told: Location[] = [];
    allocator.scrubSink = (locs) => told.push(...locs);
    const v = db.insertVdisk({ id: 'v1', name: 'one', size: 4 * MiB, blockSize: 512, segmentSize: MiB, segmentCount: 4, thin: true, version: 1 });
    const [loc] = allocator.reserve(v, 1) as [Location];
    allocator.unreserve([loc], true);
    expect(told).to.deep.equal([loc]);
    expect(db.containerSegment(loc.containerId, loc.offset)).to.include({ refcount: 0, scrub: true });
    expect(allocator.freeSegments(CA)).to.equal(31);
    expect(() => db.setSegment(v, 0, { state: SegmentState.Normal, location: loc }, 2)).to.throw(TableChangeError, /is waiting to be scrubbed/);
    expect(checkInvariants(db)).to.deep.equal([]);
  });

  it('check flags a table entry that maps a location waiting to be scrubbed', () => {
    db.insertVdisk({ id: 'v1', name: 'one', size: 4 * MiB, blockSize: 512, segmentSize: MiB, segmentCount: 4, thin: true, version: 1 });
    db.markScrub(at(5));
    db.sql.prepare('INSERT INTO segments (vdisk_id, seg, state, container_id, offset) VALUES (?, 3, ?, ?, 5)').run('v1', SegmentState.Normal, CA);
    expect(checkInvariants(db)).to.have.members([
      `container ${CA} offset 5 has reference count 0 but 1 table entries reference it`,
      `vdisk one segment 3 references container ${CA} offset 5, which is waiting to be scrubbed`,
    ]);
  });
});
