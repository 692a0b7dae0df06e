// Containers of a running system (issue 15): a container added while two
// agents run reaches both without a restart (container add -> Rescan ->
// ContainerUpdate) and a thin vdisk allocates from it at once; SIGHUP makes
// an agent rescan (and report a container gone as unreachable); agents
// report their host, and a container reached from two hosts is shared (both
// agents reopen it with O_DIRECT) while one reached from one host is not.
// `agent ls` and `container ls` show hosts and reachability.
import { expect } from 'chai';
import { mkdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from '../support/process.js';
import { requireTools } from '../support/tools.js';
import type { AgentInfo, ContainerInfo } from '../../src/wire/proto-types.js';
import { useCluster, type Cluster } from './cluster.js';
import { readP, writeP } from './clients.js';
import { STATE, check, segments, table } from './table.js';

const MiB = 1 << 20;
const VDISK = 'dyn';

async function containers(c: Cluster): Promise<ContainerInfo[]> {
  return c.cliJson<ContainerInfo[]>(['container', 'ls']);
}

async function agents(c: Cluster): Promise<AgentInfo[]> {
  return c.cliJson<AgentInfo[]>(['agent', 'ls']);
}

/** `container init` of a file outside any agent's locators until the test moves it in. */
async function initFile(c: Cluster, sub: string, file: string, size: string): Promise<{ id: string; path: string }> {
  mkdirSync(join(c.dir, sub), { recursive: true });
  const path = join(c.dir, sub, file);
  const init = JSON.parse(await c.cliOk(['container', 'init', path, '--size', size, '--json'], { admin: false })) as { id: string };
  return { id: init.id, path };
}

describe('system: containers added to a running system, hosts and shared containers', function () {
  this.timeout(240_000);
  let c0 = '';
  let h0 = '';
  let pids: Record<string, number> = {};
  const cluster = useCluster('dynamic-containers', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    await c.startController();
    // c0: the only container at first, filled by a thick vdisk, so the thin
    // vdisk has nowhere to allocate until a container is added.
    c0 = await c.addContainer('c0.img', '16MiB');
    const total = (await containers(c)).find((x) => x.id === c0)?.segmentsTotal ?? 0;
    await c.cliOk(['vdisk', 'create', 'fill', '--size', `${total}MiB`, '--thick']);
    // h0: reached by agents a and c, which run on one host.
    const h = await initFile(c, 'host-a', 'h0.img', '16MiB');
    h0 = h.id;
    await c.cliOk(['container', 'add', h.path]);
    const rescan = ['--rescan-interval', '0']; // only container add and SIGHUP rescan
    await Promise.all([
      c.startAgent('a', { containers: [c.containerGlob, join(c.dir, 'host-a', '*.img')], hostId: 'host-a', args: rescan }),
      c.startAgent('b', { containers: [c.containerGlob], hostId: 'host-b', args: rescan }),
      c.startAgent('c', { containers: [join(c.dir, 'host-a', '*.img')], hostId: 'host-a', args: rescan }),
    ]);
    await c.cliOk(['vdisk', 'create', VDISK, '--size', '8MiB']);
    for (const a of ['a', 'b']) await c.cliOk(['export', 'add', VDISK, '--agent', a]);
    await c.waitServed(VDISK, ['a', 'b']);
    pids = Object.fromEntries(['a', 'b', 'c'].map((n) => [n, c.agent(n).daemon.processPid]));
  });

  it('agents report their host; a container reached from two hosts is shared and opened O_DIRECT by both, one reached from one host is not', async function () {
    const c = cluster();
    await waitFor('agents online with hosts', 60_000, async () => {
      const list = await agents(c);
      return list.length === 3 && list.every((a) => a.online) ? true : undefined;
    });
    const list = await agents(c);
    expect(list.map((a) => [a.name, a.host])).to.deep.equal([
      ['a', 'host-a'],
      ['b', 'host-b'],
      ['c', 'host-a'],
    ]);
    // Numbered in the order they first registered (they started together).
    expect(list.map((a) => a.number).sort()).to.deep.equal([1, 2, 3]);
    const bNumber = list.find((a) => a.name === 'b')?.number ?? 0;
    const byId = new Map((await containers(c)).map((x) => [x.id, x]));
    expect(byId.get(c0)).to.deep.include({ agents: ['a', 'b'], shared: true, unreachable: [] });
    expect(byId.get(h0)).to.deep.include({ agents: ['a', 'c'], shared: false });
    for (const n of ['a', 'b']) {
      await waitFor(`agent ${n} reopens c0 with O_DIRECT`, 30_000, async () =>
        c.agent(n).daemon.log().includes('shared container reopened with O_DIRECT') && c.agent(n).daemon.log().includes(c0) ? true : undefined,
      );
    }
    expect(c.agent('c').daemon.log()).to.not.include('shared container reopened with O_DIRECT');
    // What an operator reads.
    const text = await c.cliOk(['agent', 'ls']);
    expect(text).to.match(/^NAME\s+NUMBER\s+HOST\s+STATUS/);
    expect(text).to.match(new RegExp(`^b\\s+${bNumber}\\s+host-b\\s+online\\s+\\S+\\s+${c.agent('b').portal.replace(/\./g, '\\.')}\\s+${c0.slice(0, 8)}$`, 'm'));
  });

  it('container add while both agents run: both claim it without a restart, and the thin vdisk allocates from it', async function () {
    const c = cluster();
    // Nowhere to allocate yet: c0 is full, and h0 is not reached by agent b.
    expect((await containers(c)).find((x) => x.id === c0)?.freeBytes).to.equal(0);
    const c1 = await c.addContainer('c1.img', '64MiB');
    await waitFor('both agents claim c1', 60_000, async () => {
      const info = (await containers(c)).find((x) => x.id === c1);
      return info !== undefined && info.agents.join(',') === 'a,b' ? true : undefined;
    });
    // Written through agent a (its first write allocates on c1), read back through agent b.
    await writeP(c.url('a', VDISK), 0x5a, 2 * MiB + 4096, 128 * 1024);
    await readP(c.url('b', VDISK), 0x5a, 2 * MiB + 4096, 128 * 1024);
    const seg = segments(await table(c, VDISK))[2];
    expect(seg).to.deep.include({ state: STATE.normal, container: c1 });
    // Nothing restarted.
    for (const n of ['a', 'b']) {
      expect(c.agent(n).daemon.processPid).to.equal(pids[n]);
      expect(c.agent(n).daemon.log()).to.include('rescanning containers');
    }
    const ok = await check(c);
    expect(ok.ok, ok.text).to.equal(true);
  });

  it('SIGHUP: the agent rescans, claims a container registered meanwhile, and reports one that went away as unreachable', async function () {
    const c = cluster();
    // Registered while its file is where no agent looks: no agent claims it.
    const f = await initFile(c, 'later', 'c2.img', '16MiB');
    await c.cliOk(['container', 'add', f.path]);
    await new Promise((r) => setTimeout(r, 1000));
    expect((await containers(c)).find((x) => x.id === f.id)?.agents).to.deep.equal([]);
    // Moved under the agents' glob: only the agent told to rescan sees it.
    renameSync(f.path, join(c.dir, 'containers', 'c2.img'));
    c.agent('a').daemon.signal('SIGHUP');
    await waitFor('agent a claims c2 after SIGHUP', 60_000, async () => {
      const info = (await containers(c)).find((x) => x.id === f.id);
      return info?.agents.join(',') === 'a' ? true : undefined;
    });
    // Gone from under the agent: unreachable, not dropped.
    renameSync(join(c.dir, 'containers', 'c2.img'), join(c.dir, 'later', 'c2.gone'));
    c.agent('a').daemon.signal('SIGHUP');
    await waitFor('agent a reports c2 unreachable', 60_000, async () => {
      const info = (await containers(c)).find((x) => x.id === f.id);
      return info !== undefined && info.agents.join(',') === 'a' && (info.unreachable ?? []).length === 1 ? true : undefined;
    });
    const text = await c.cliOk(['container', 'ls']);
    expect(text).to.match(new RegExp(`^${f.id}\\s.*\\sa\\(unreachable\\)$`, 'm'));
    const a = (await agents(c)).find((x) => x.name === 'a');
    expect(a?.unreachable?.[0]).to.match(new RegExp(`^${f.id}: not found by the last scan`));
    expect(c.agent('a').daemon.processPid).to.equal(pids.a);
  });
});
