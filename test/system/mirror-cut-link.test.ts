// A mirrored vdisk's copy behind a cut link: the storage node does not die
// (no TCP reset reaches the agents), it goes silent. On the namespace
// topology (storage-network.ts MIRROR_TOPOLOGY) a 2-copy vdisk with its
// copies on st1 (tgtd) and st2 (`tabula target`) is under a depth-16 writer
// of sequence-numbered, checksummed blocks on host A and a reader on host B
// when st2's storage link is cut. No I/O error at either initiator, no I/O
// slower than the hold timeout plus about a second: each backend command's
// hold counts from when it was sent, so the command timeout, the ABORT TASK
// that goes unanswered and the reconnection all fit in it. Every block whose
// write completed GOOD reads back right. The iSCSI command timeout is set
// close to the hold on purpose: the abort after it gets only what is left.
import { expect } from 'chai';
import { join } from 'node:path';
import { sleep, waitFor } from '../support/process.js';
import { requireTools } from '../support/tools.js';
import type { JsonTable } from './table.js';
import { MIRROR_TOPOLOGY, useStorageNetwork, type Host, type StorageNetwork } from './storage-network.js';
import { legsBySegment, startMirrorIo, type MirrorIo } from './mirror.js';
import type { MirrorIoSummary } from './mirror-io.js';

const MiB = 1 << 20;
const LUN_MIB = 128;
const MIRROR = 'cutmirror';
const MIRROR_MIB = 32;
/** The agents' hold of faulted I/O and of I/O to an unreachable storage node (and the controller's). */
const HOLD_S = 5;
/** Just below the hold (the agent refuses more): an abort waited for in full after it would stall past the bound. */
const ISCSI_COMMAND_TIMEOUT_S = 4;
/** The bound on a stall: the hold plus about a second (one more for a loaded test machine). */
const STALL_BOUND_MS = HOLD_S * 1000 + 2000;
const HOSTS: readonly Host[] = ['ha', 'hb'];

interface ContainerJson {
  id: string;
  agents: string[];
  unreachable?: string[];
}

function say(text: string): void {
  process.stderr.write(`      ${text}\n`);
}

function describeIo(s: MirrorIoSummary): string {
  return `${s.mode}: ${s.ios} I/Os, ${(s.bytes / MiB).toFixed(1)} MiB, max latency ${s.maxLatencyMs} ms, slow ${JSON.stringify(s.slow.slice(0, 8))}`;
}

describe('system: a mirrored vdisk across a cut storage link', function () {
  this.timeout(300_000);
  const ids = { st1: '', st2: '' };
  let stateFile = '';

  async function addLun(n: StorageNetwork, url: string): Promise<string> {
    const init = await n.cliJson<{ id: string }>(['container', 'init', url], { admin: false });
    await n.cliOk(['container', 'add', url]);
    return init.id;
  }

  async function legs(n: StorageNetwork): Promise<string[][]> {
    return legsBySegment(await n.cliJson<JsonTable>(['vdisk', 'table', MIRROR, '--full-ids']));
  }

  const network = useStorageNetwork(
    'mirror-cut-link',
    async (n) => {
      requireTools(['timeout', 'ip', 'qemu-io', 'tgtd', 'tgtadm']);
      await n.tgtd.addLun(LUN_MIB * MiB);
      n.target.addFile(LUN_MIB * MiB);
      await Promise.all([n.tgtd.start(), n.target.start(), n.startController({ holdTimeoutS: HOLD_S })]);
      ids.st1 = await addLun(n, n.tgtd.url(0));
      ids.st2 = await addLun(n, n.target.url(0));
      const locators = [`iscsi://${n.tgtd.portal}`, `iscsi://${n.target.portal}`];
      const extra = ['--rescan-interval', '2', '--iscsi-command-timeout', String(ISCSI_COMMAND_TIMEOUT_S)];
      await Promise.all(HOSTS.map((h) => n.startAgent(h, { containers: locators, hostId: `host-${h}`, holdTimeoutS: HOLD_S, extra })));
      await waitFor('both agents reach both LUNs', 90_000, async () => {
        const list = await n.cliJson<ContainerJson[]>(['container', 'ls']);
        return list.length === 2 && list.every((c) => HOSTS.every((h) => c.agents.includes(h)) && (c.unreachable ?? []).length === 0) ? true : undefined;
      }, 1000);
      stateFile = join(n.dir, 'cut.state');
    },
    MIRROR_TOPOLOGY,
  );

  it("st2's storage link cut under a depth-16 writer on host A and a reader on host B: no error, no stall over the hold + ~1 s, every GOOD block reads back", async function () {
    const n = network();
    await n.cliOk(['vdisk', 'create', MIRROR, '--size', `${MIRROR_MIB}MiB`, '--copies', '2', '--thick']);
    for (const [seg, l] of (await legs(n)).entries()) expect(l.sort(), `legs of segment ${seg}`).to.deep.equal([ids.st1, ids.st2].sort());
    for (const h of HOSTS) await n.cliOk(['export', 'add', MIRROR, '--agent', h]);
    await Promise.all(HOSTS.map((h) => n.waitServed(h, MIRROR)));

    const writer: MirrorIo = startMirrorIo(n, 'ha', 'write', MIRROR, MIRROR_MIB * MiB, [stateFile, '16', '600']);
    const reader: MirrorIo = startMirrorIo(n, 'hb', 'read', MIRROR, MIRROR_MIB * MiB, ['4', '600']);
    let summaries: [MirrorIoSummary, MirrorIoSummary] | undefined;
    try {
      await writer.waitIos(500);
      await reader.waitIos(100);
      await n.t.cut('st2', 'san2');
      const cut = Date.now();
      try {
        await waitFor(`${MIRROR} has no leg on st2`, 60_000, async () => ((await legs(n)).every((l) => !l.includes(ids.st2)) ? true : undefined), 500);
        say(`st2's legs removed ${Date.now() - cut} ms after the cut`);
        // Well past the hold, and with I/O going on after it.
        await sleep(Math.max(0, cut + (HOLD_S + 3) * 1000 - Date.now()));
        await writer.waitIos(writer.ios + 300);
        await reader.waitIos(reader.ios + 50);
      } finally {
        summaries = await Promise.all([writer.stop(), reader.stop()]);
        await n.t.restore('st2', 'san2');
      }
    } finally {
      if (summaries === undefined) await Promise.all([writer.stop(), reader.stop()]).catch(() => undefined);
    }
    const [w, r] = summaries;
    say(`across st2's cut link: writer on ha ${describeIo(w)}`);
    say(`across st2's cut link: reader on hb ${describeIo(r)}`);
    expect(w.errors, `writer on ha (${w.errorCount} errors)`).to.deep.equal([]);
    expect(r.errors, `reader on hb (${r.errorCount} errors)`).to.deep.equal([]);
    expect(w.maxLatencyMs, `longest write (bound: hold ${HOLD_S} s + ~1 s)`).to.be.at.most(STALL_BOUND_MS);
    expect(r.maxLatencyMs, `longest read (bound: hold ${HOLD_S} s + ~1 s)`).to.be.at.most(STALL_BOUND_MS);
    for (const h of HOSTS) {
      const v = await startMirrorIo(n, h, 'verify', MIRROR, MIRROR_MIB * MiB, [stateFile]).done(240_000);
      say(`${MIRROR} through ${h}: ${describeIo(v)}; ${v.written} of ${v.blocks} blocks written`);
      expect(v.errors, `${MIRROR} read back through ${h} (${v.errorCount} bad)`).to.deep.equal([]);
    }
  });
});
