// The storage-network topology with real targets and clients, no iSCSI
// containers involved: hosts reach both storage nodes (tgtd on st1,
// `tabula target` on st2) only over their storage networks, a cut link
// isolates one host from one storage node and heals when restored, and an
// agent on host A serves a vdisk to a client on host B across the
// management network. (The "Must show" runs on the same topology in
// storage-network-must-show.test.ts.)
import { expect } from 'chai';
import { join } from 'node:path';
import { writeRandomImage } from '../support/random-image.js';
import { requireTools } from '../support/tools.js';
import { waitFor } from '../support/process.js';
import { useStorageNetwork } from './storage-network.js';

const MiB = 1 << 20;
const LUN_MIB = 32;
const VDISK = 'across';

describe('system: storage network topology (two storage nodes, two hosts, a controller, each in a namespace)', function () {
  this.timeout(300_000);
  const network = useStorageNetwork('topology', async (n) => {
    requireTools(['timeout', 'ip', 'qemu-img', 'qemu-io', 'iscsi-inq', 'tgtd', 'tgtadm']);
    await n.tgtd.addLun(LUN_MIB * MiB);
    n.target.addFile(LUN_MIB * MiB);
    await Promise.all([n.tgtd.start(), n.target.start(), n.startController()]);
  });

  it('each host reaches both storage nodes over its storage networks; the controller host reaches the agents over management', async function () {
    const n = network();
    for (const host of ['ha', 'hb']) {
      for (const url of [n.tgtd.url(0), n.target.url(0)]) {
        const inq = await n.clientOk(host, ['iscsi-inq', url]);
        expect(inq.stdout, `${url} from ${host}`).to.match(/Peripheral Qualifier:\s*CONNECTED/);
        expect(inq.stdout, `${url} from ${host}`).to.match(/Peripheral Device Type:\s*DIRECT_ACCESS/);
      }
    }
    // Storage nodes are on their own networks only: st1 and st2 do not see each other.
    expect(await n.t.reaches('st1', 'st2', 'san2')).to.equal(false);
    expect(await n.t.reaches('ha', 'hb', 'mgmt')).to.equal(true);
  });

  it('qemu-img on host A writes both storage nodes; host B reads back the same bytes', async function () {
    const n = network();
    const image = join(n.dir, 'image.raw');
    await writeRandomImage(image, LUN_MIB * MiB, 15);
    for (const url of [n.tgtd.url(0), n.target.url(0)]) {
      await n.copyTo('ha', image, url);
      const r = await n.compare('hb', image, url);
      expect(r.same, `${url} from hb: ${r.text}`).to.equal(true);
    }
  });

  it('a cut link between host B and storage node 1 isolates exactly that pair until restored', async function () {
    const n = network();
    await n.t.cut('hb', 'san1');
    try {
      expect(await n.readable('hb', n.tgtd.url(0), { timeoutMs: 20_000 }), 'hb to st1 over the cut link').to.equal(false);
      expect(await n.readable('hb', n.target.url(0)), 'hb to st2').to.equal(true);
      expect(await n.readable('ha', n.tgtd.url(0)), 'ha to st1').to.equal(true);
    } finally {
      await n.t.restore('hb', 'san1');
    }
    await waitFor('hb reads st1 again', 60_000, async () => ((await n.readable('hb', n.tgtd.url(0))) ? true : undefined));
  });

  it("an agent on host A, over a container in A's own directory, serves a vdisk that a client on host B writes and reads", async function () {
    const n = network();
    const file = join(n.dir, 'ha', 'c0.img');
    await n.cliOk(['container', 'init', file, '--size', '128MiB'], { machine: 'ha', admin: false });
    // The admin runs on host A: it reads the label there and tells the controller over management.
    await n.cliOk(['container', 'add', file], { machine: 'ha' });
    await n.startAgent('ha', { containers: [join(n.dir, 'ha', '*.img')] });
    await n.cliOk(['vdisk', 'create', VDISK, '--size', '16MiB']);
    await n.cliOk(['export', 'add', VDISK, '--agent', 'ha']);
    const url = n.agentUrl('ha', VDISK);
    await n.waitServed('hb', VDISK, { via: 'ha' });
    const image = join(n.dir, 'vdisk.raw');
    await writeRandomImage(image, 16 * MiB, 16);
    await n.copyTo('hb', image, url);
    for (const host of ['hb', 'ha']) {
      const r = await n.compare(host, image, url);
      expect(r.same, `from ${host}: ${r.text}`).to.equal(true);
    }
    // A depth-16 writer on host B: what it was told is GOOD reads back from host A.
    const reference = join(n.dir, 'writer.raw');
    await n.clientOk('hb', ['cp', '--sparse=always', image, reference]);
    const w = n.startWriter('hb', VDISK, 16 * MiB, reference, { via: 'ha' });
    await w.waitWrites(200);
    const summary = await w.stop();
    expect(summary.errors).to.deep.equal([]);
    const after = await n.compare('ha', reference, url);
    expect(after.same, after.text).to.equal(true);
    // Nothing on host A holds a file of another machine open.
    expect(n.foreignFilesOpen('ha')).to.deep.equal([]);
    const ck = await n.cli(['check']);
    expect(ck.exitCode, ck.stdout + ck.stderr).to.equal(0);
  });
});
