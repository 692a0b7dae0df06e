import { expect } from 'chai';
import { mkdtempSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentContainers, type IscsiScanResult } from '../../../src/agent/containers.js';
import { defaultHostId } from '../../../src/agent/agent.js';
import type { LegHints } from '../../../src/agent/vdisk-device.js';
import type { ContainerDriver } from '../../../src/container/driver.js';
import { openContainer, type FileDriverOptions } from '../../../src/container/file-driver.js';
import { initContainer } from '../../../src/container/init.js';
import { FakeController } from './fake-controller.js';
import { CONTAINER_ID, SEG, startRig, until, type Rig } from './rig.js';

const C2 = 'c0c0c0c0-0000-4000-8000-000000000002';
const L1 = 'c0c0c0c0-0000-4000-8000-0000000000a1';
const URL = 'iscsi://10.0.0.1:3260';

/** A stand-in for an iSCSI LUN driver: only what AgentContainers looks at. */
function lun(id: string, state: string = 'up'): ContainerDriver & { state: string; closed: boolean } {
  const d = {
    kind: 'iscsi',
    id,
    path: `${URL}/iqn.2026-11.org.example:st1/0`,
    label: { id, size: 8 << 20, dataOffset: 1 << 20, segmentSize: SEG } as ContainerDriver['label'],
    dataSize: 7 << 20,
    state,
    closed: false,
    read: async () => Buffer.alloc(0),
    readInto: async () => undefined,
    write: async () => undefined,
    flush: async () => undefined,
    discard: async () => undefined,
    writeZeroes: async () => undefined,
    close: async () => {
      d.closed = true;
    },
  };
  return d;
}

describe('agent/AgentContainers', () => {
  let dir: string;
  let cs: AgentContainers | undefined;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-ac-'));
  });
  afterEach(async () => {
    await cs?.close();
    cs = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  it('scans iscsi:// locators with the iSCSI scanner and globs with the file scan, keeping one driver per container', async () => {
    await initContainer(join(dir, 'a.img'), { size: 4 << 20, id: CONTAINER_ID, segmentSize: SEG });
    const scans: string[] = [];
    const made: ReturnType<typeof lun>[] = [];
    cs = new AgentContainers([join(dir, '*.img'), URL], {
      iscsi: { initiatorName: 'iqn.x' },
      scanIscsi: async (locator, opts): Promise<IscsiScanResult> => {
        scans.push(`${locator} ${String(opts.initiatorName)}`);
        const d = lun(L1);
        made.push(d);
        return { found: [d], problems: [] };
      },
    });
    const first = await cs.refresh();
    expect(first.map((r) => [r.id, r.kind, r.reachable])).to.deep.equal([
      [CONTAINER_ID, 'file', true],
      [L1, 'iscsi', true],
    ]);
    await cs.refresh();
    expect(scans).to.deep.equal([`${URL} iqn.x`, `${URL} iqn.x`]);
    // The second scan's driver of the same LUN was closed; the first one stays in use.
    expect(made.map((d) => d.closed)).to.deep.equal([false, true]);
    expect(cs.get(L1)).to.equal(made[0]);
  });

  it('reports a container unreachable (never drops it) when a scan cannot see it or its session is down, and reachable when it is back', async () => {
    const path = join(dir, 'a.img');
    await initContainer(path, { size: 4 << 20, id: CONTAINER_ID, segmentSize: SEG });
    let portalDown = false;
    const l = lun(L1);
    cs = new AgentContainers([join(dir, '*.img'), URL], {
      scanIscsi: async () => {
        if (portalDown) throw new Error('connect ECONNREFUSED 10.0.0.1:3260');
        return { found: [l], problems: [] };
      },
    });
    await cs.refresh();
    renameSync(path, join(dir, 'a.gone'));
    portalDown = true;
    // The portal cannot be scanned, but the LUN's own session is up: its word counts.
    expect((await cs.refresh()).map((r) => [r.id, r.reachable])).to.deep.equal([
      [CONTAINER_ID, false],
      [L1, true],
    ]);
    l.state = 'down';
    const away = await cs.refresh();
    expect(away.map((r) => [r.id, r.reachable])).to.deep.equal([
      [CONTAINER_ID, false],
      [L1, false],
    ]);
    expect(away[0]?.error).to.match(/not found by the last scan/);
    expect(away[1]?.error).to.equal('iSCSI session down');
    expect(cs.get(CONTAINER_ID)).to.not.equal(undefined);
    renameSync(join(dir, 'a.gone'), path);
    portalDown = false;
    l.state = 'up';
    expect((await cs.refresh()).map((r) => r.reachable)).to.deep.equal([true, true]);
    // The session's own state counts between scans.
    l.state = 'down';
    expect(cs.refs().map((r) => [r.reachable, r.error])).to.deep.equal([
      [true, ''],
      [false, 'iSCSI session down'],
    ]);
  });

  it('reopens a shared file container with O_DIRECT, once; iSCSI LUNs and private containers are left alone', async () => {
    await initContainer(join(dir, 'a.img'), { size: 4 << 20, id: CONTAINER_ID, segmentSize: SEG });
    await initContainer(join(dir, 'b.img'), { size: 4 << 20, id: C2, segmentSize: SEG });
    const opens: string[] = [];
    cs = new AgentContainers([join(dir, '*.img'), URL], {
      scanIscsi: async () => ({ found: [lun(L1)], problems: [] }),
      open: (p: string, o: FileDriverOptions) => {
        opens.push(`${p.slice(dir.length + 1)}${o.direct === true ? ' direct' : ''}`);
        return openContainer(p, o);
      },
    });
    await cs.refresh();
    const before = cs.get(CONTAINER_ID);
    await cs.setShared([
      { id: CONTAINER_ID, shared: true },
      { id: C2, shared: false },
      { id: L1, shared: true },
    ]);
    await cs.setShared([{ id: CONTAINER_ID, shared: true }]);
    expect(opens).to.deep.equal(['a.img', 'b.img', 'a.img direct']);
    expect([cs.direct(CONTAINER_ID), cs.direct(C2), cs.direct(L1)]).to.deep.equal([true, false, false]);
    expect(cs.get(CONTAINER_ID)).to.not.equal(before);
    // Really O_DIRECT where the file system allows it (tmpfs does not: the driver falls back).
    expect((cs.get(CONTAINER_ID) as { direct?: boolean }).direct).to.be.a('boolean');
    // Known shared before it is first opened: opened direct at once.
    await initContainer(join(dir, 'c.img'), { size: 4 << 20, id: 'c0c0c0c0-0000-4000-8000-000000000003', segmentSize: SEG });
    await cs.setShared([{ id: 'c0c0c0c0-0000-4000-8000-000000000003', shared: true }]);
    await cs.refresh();
    expect(opens.slice(3)).to.deep.equal(['c.img direct']);
  });

  it('says which containers are near (ContainerSet) and which are reachable now, for mirrored reads', async () => {
    await initContainer(join(dir, 'a.img'), { size: 4 << 20, id: CONTAINER_ID, segmentSize: SEG });
    const l = lun(L1);
    cs = new AgentContainers([join(dir, '*.img'), URL], { scanIscsi: async () => ({ found: [l], problems: [] }) });
    // What the agent hands its devices as their resolver gives them both hints.
    const hints: Required<LegHints> = cs;
    await cs.refresh();
    expect([hints.near(CONTAINER_ID), cs.near(L1)]).to.deep.equal([false, false]);
    await cs.setShared([
      { id: CONTAINER_ID, shared: false, near: true },
      { id: L1, shared: false },
    ]);
    expect([cs.near(CONTAINER_ID), cs.near(L1)]).to.deep.equal([true, false]);
    expect([cs.reachable(CONTAINER_ID), cs.reachable(L1), cs.reachable(C2)]).to.deep.equal([true, true, false]);
    // The session's state counts at once, between scans.
    l.state = 'down';
    expect(cs.reachable(L1)).to.equal(false);
    // Reconnecting: no I/O now either (refs() still says reachable: no flapping report).
    l.state = 'connecting';
    expect(cs.reachable(L1)).to.equal(false);
    expect(cs.refs().find((r) => r.id === L1)?.reachable).to.equal(true);
    l.state = 'up';
    expect(cs.reachable(L1)).to.equal(true);
    // A later ContainerSet replaces the near set.
    await cs.setShared([{ id: L1, shared: false, near: true }]);
    expect([cs.near(CONTAINER_ID), cs.near(L1)]).to.deep.equal([false, true]);
  });

  it('a LUN-form locator is not scanned again while its LUN is open (no session churn); a portal is', async () => {
    const lunUrl = `${URL}/iqn.2026-11.org.example:st1/0`;
    const scans: string[] = [];
    cs = new AgentContainers([lunUrl, URL], {
      scanIscsi: async (locator) => {
        scans.push(locator);
        return { found: [lun(locator === URL ? L1 : 'c0c0c0c0-0000-4000-8000-0000000000a2')], problems: [] };
      },
    });
    await cs.refresh();
    await cs.refresh();
    expect(scans).to.deep.equal([lunUrl, URL, URL]);
    expect(cs.refs().map((r) => r.reachable)).to.deep.equal([true, true]);
  });

  it('host id: /etc/machine-id, else the host name', () => {
    expect(defaultHostId(() => 'abc123\n')).to.equal('abc123');
    expect(defaultHostId(() => {
      throw new Error('ENOENT');
    })).to.be.a('string').and.not.equal('');
  });
});

describe('agent: rescan and container reports', function () {
  this.timeout(20_000);
  let ctl: FakeController;
  let rig: Rig;
  afterEach(async () => {
    await rig?.close();
    await ctl?.stop();
  });

  it('answers Rescan with a ContainerUpdate listing a container added since Register, and sends its host id', async () => {
    ctl = await FakeController.start();
    rig = await startRig(ctl.address, { hostId: 'host-a', rescanIntervalMs: 0 });
    const { register, stream } = await ctl.accept();
    expect(register.hostId).to.equal('host-a');
    expect(register.containers.map((c) => c.id)).to.deep.equal([CONTAINER_ID]);
    await initContainer(join(rig.dir, 'new.img'), { size: 4 << 20, id: C2, segmentSize: SEG });
    stream.send({ body: 'rescan', rescan: { reason: 'container added' } });
    const u = await stream.take('containerUpdate');
    expect(u.containerUpdate.containers.map((c) => c.id).sort()).to.deep.equal([CONTAINER_ID, C2]);
    // SIGHUP's path: the same rescan, reported only when something changed.
    renameSync(join(rig.dir, 'new.img'), join(rig.dir, 'new.gone'));
    await rig.agent.rescan('SIGHUP');
    const gone = await stream.take('containerUpdate');
    expect(gone.containerUpdate.containers.find((c) => c.id === C2)).to.deep.include({ reachable: false });
  });

  it('registers again without waiting for a scan stuck on a storage node that is away; the scan completes once the node answers', async () => {
    ctl = await FakeController.start();
    let stuck = true;
    const waiting: (() => void)[] = [];
    let scans = 0;
    rig = await startRig(ctl.address, {
      rescanIntervalMs: 0,
      containers: [URL],
      containerOptions: {
        // The first scan answers; later ones hang until released (a node that does not answer).
        scanIscsi: async () => {
          if (scans++ > 0 && stuck) await new Promise<void>((r) => waiting.push(r));
          return { found: [lun(L1)], problems: [] };
        },
      },
    });
    const first = await ctl.accept();
    expect(first.register.containers.map((c) => c.id)).to.deep.equal([L1]);
    first.stream.end();
    const again = await ctl.accept({}, 15_000);
    expect(again.register.containers.map((c) => c.id)).to.deep.equal([L1]);
    expect(waiting.length).to.be.greaterThan(0);
    stuck = false;
    for (const r of waiting.splice(0)) r();
    // The node answers again: scans complete, the stream stays up.
    expect((await rig.agent.rescan('test')).map((c) => c.id)).to.deep.equal([L1]);
    expect(again.stream.ended).to.equal(false);
  });

  it('rescans by itself every rescan interval', async () => {
    ctl = await FakeController.start();
    rig = await startRig(ctl.address, { rescanIntervalMs: 200 });
    const { stream } = await ctl.accept();
    await initContainer(join(rig.dir, 'late.img'), { size: 4 << 20, id: C2, segmentSize: SEG });
    const u = await stream.take('containerUpdate', 10_000);
    expect(u.containerUpdate.containers.map((c) => c.id).sort()).to.deep.equal([CONTAINER_ID, C2]);
    await until(() => rig.agent.containers.get(C2) !== undefined, 1000, 'opened');
  });
});
