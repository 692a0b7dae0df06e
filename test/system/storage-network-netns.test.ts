// The namespace topology itself (test/support/netns.ts), before anything
// runs on it: machines on a network reach each other, a machine on no shared
// network does not, a cut link isolates exactly that machine from that
// network until it is restored, and teardown leaves no namespace and no link
// behind, also when processes still run inside.
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { Topology, listNamespaces, netnsUnavailable, useTopology } from '../support/netns.js';

describe('system: network namespace topology', function () {
  this.timeout(120_000);
  const topology = useTopology({
    machines: ['a', 'b', 'c'],
    networks: { one: ['a', 'b', 'c'], two: ['a', 'b'] },
  });

  it('gives each machine loopback and its addresses only inside its namespace', async function () {
    const t = topology();
    const shown = (await t.execOk('a', ['ip', '-o', 'addr', 'show'], { timeoutMs: 15_000 })).stdout;
    expect(shown).to.match(/\blo\b.*inet 127\.0\.0\.1\/8/);
    expect(shown).to.contain(`inet ${t.addr('a', 'one')}/26`);
    expect(shown).to.contain(`inet ${t.addr('a', 'two')}/26`);
    const root = execFileSync('ip', ['-o', 'addr', 'show'], { encoding: 'utf8' });
    expect(root).not.to.contain(`10.231.${t.run}.`);
    expect(execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })).not.to.match(/\b(one|two)-[abc]\b/);
  });

  it('machines on a shared network reach each other; one on none of them does not', async function () {
    const t = topology();
    expect(await t.reaches('a', 'b', 'one')).to.equal(true);
    expect(await t.reaches('b', 'c', 'one')).to.equal(true);
    expect(await t.reaches('a', 'b', 'two')).to.equal(true);
    // c is not on network two: b's address there is not on any network c has.
    expect(await t.reaches('c', 'b', 'two')).to.equal(false);
  });

  it('a cut link isolates that machine from that network only, until restored', async function () {
    const t = topology();
    await t.cut('b', 'one');
    try {
      expect(await t.reaches('a', 'b', 'one'), 'a to b over the cut link').to.equal(false);
      expect(await t.reaches('b', 'c', 'one'), 'b to c over the cut link').to.equal(false);
      expect(await t.reaches('a', 'c', 'one'), 'a to c, not cut').to.equal(true);
      expect(await t.reaches('a', 'b', 'two'), 'a to b over the other network').to.equal(true);
    } finally {
      await t.restore('b', 'one');
    }
    expect(await t.reaches('a', 'b', 'one')).to.equal(true);
    expect(await t.reaches('c', 'b', 'one')).to.equal(true);
  });

  it('teardown kills what runs inside, removes every namespace and link, and is idempotent', async function () {
    const reason = netnsUnavailable();
    if (reason !== undefined) this.skip();
    const t = await Topology.create({ machines: ['x', 'y'], networks: { net: ['x', 'y'] } });
    // A process that would outlive the test: teardown must kill it first.
    const child = t.spawn('x', ['sleep', '600'], 600_000, ['ignore', 'ignore', 'ignore']);
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    await new Promise((r) => setTimeout(r, 300));
    expect(t.pids('x').length).to.be.at.least(1);
    await t.destroy();
    await gone;
    await t.destroy();
    expect(listNamespaces().filter((ns) => ns.startsWith(t.prefix))).to.deep.equal([]);
    expect(execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })).not.to.match(/\bnet-[xy]\b/);
  });
});
