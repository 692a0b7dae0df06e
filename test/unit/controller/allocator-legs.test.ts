import { expect } from 'chai';
import { join } from 'node:path';
import { Allocator, ContainerFullError } from '../../../src/controller/allocator.js';
import { ControllerDb, type Location } from '../../../src/controller/db.js';
import { agentDomain, containerDomains, effectiveDomain } from '../../../src/controller/domains.js';
import { CA, CB, CC, MiB, tempDir } from './helpers.js';

const CD = 'dddddddd-0000-4000-8000-00000000000d';

describe('controller allocator: legs in distinct failure domains', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  const add = (id: string, segs: number, domain = '', path = `/${id}`) =>
    db.insertContainer({ id, path, size: (segs + 1) * MiB, dataOffset: MiB, segmentSize: MiB, segmentsTotal: segs, state: 'online', domain });
  const vdisk = (name: string, n: number) =>
    db.insertVdisk({ id: `id-${name}`, name, size: n * MiB, blockSize: 512, segmentSize: MiB, segmentCount: n, thin: true, version: 1, copies: 2 });
  const domains = (entry: readonly Location[]) => entry.map((l) => containerDomains(db).get(l.containerId));

  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 'a.db'));
  });
  afterEach(() => {
    db.close();
    t.cleanup();
  });

  it('derives domains: set name, iscsi:// portal host, the claiming agent host or name, else the container', () => {
    add(CA, 4, 'rack1');
    add(CB, 4, '', 'iscsi://10.0.0.7:3260/iqn.2026-11.org.example:st1/0');
    add(CC, 4);
    add(CD, 4);
    db.registerAgent('a2', [], [{ id: CC, path: '/c' }], '');
    db.registerAgent('a1', [], [{ id: CC, path: '/c' }], 'host-1');
    expect(Object.fromEntries(containerDomains(db))).to.deep.equal({
      [CA]: 'rack1',
      [CB]: 'iscsi:10.0.0.7',
      [CC]: 'host:host-1',
      [CD]: `container:${CD}`,
    });
    expect(effectiveDomain(db.container(CC)!, db)).to.equal('host:host-1');
    // The agent's locator names the storage node when the registered path does not.
    db.registerAgent('a3', [], [{ id: CD, path: 'iscsi://[fd00::3]:3260/iqn.2026-11.org.example:st3/1' }], 'host-3');
    expect(effectiveDomain(db.container(CD)!, db)).to.equal('iscsi:fd00::3');
    // An agent's own domain is that of its local containers.
    expect(agentDomain(db.agent('a1')!)).to.equal('host:host-1');
    expect(agentDomain(db.agent('a2')!)).to.equal('host:a2');
  });

  it('gives each entry its legs in distinct domains, never two in one domain, and runs for consecutive entries', () => {
    add(CA, 10, 'd1');
    add(CB, 10, 'd1');
    add(CC, 10, 'd2');
    const a = new Allocator(db);
    const entries = a.allocateLegs(vdisk('m', 8), 8, 2);
    expect(entries).to.have.length(8);
    for (const e of entries) expect(new Set(domains(e)).size).to.equal(2);
    // d2 has one container: its legs are one run.
    const inCC = entries.flatMap((e) => e.filter((l) => l.containerId === CC).map((l) => l.offset));
    expect(inCC).to.deep.equal([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(a.freeSegments(CC)).to.equal(2);
  });

  it('gives every entry all its legs whenever the domains can (three equal domains, two legs, 1.5 domains of entries)', () => {
    add(CA, 10, 'd1');
    add(CB, 10, 'd2');
    add(CC, 10, 'd3');
    const a = new Allocator(db);
    const entries = a.allocateLegs(vdisk('m', 15), 15, 2);
    for (const e of entries) {
      expect(e).to.have.length(2);
      expect(new Set(domains(e)).size).to.equal(2);
    }
    expect([CA, CB, CC].map((c) => a.freeSegments(c))).to.deep.equal([0, 0, 0]);
  });

  it('prefers the emptiest domains', () => {
    add(CA, 10, 'd1');
    add(CB, 4, 'd2');
    add(CC, 20, 'd3');
    const a = new Allocator(db);
    const [e] = a.allocateLegs(vdisk('m', 1), 1, 2);
    expect(domains(e!)).to.deep.equal(['d3', 'd1']);
  });

  it('gives fewer legs (degraded) when domains run out, and throws ContainerFullError, taking nothing, when none has room', () => {
    add(CA, 2, 'd1');
    add(CB, 2, 'd1');
    const a = new Allocator(db);
    const v = vdisk('m', 4);
    const entries = a.allocateLegs(v, 3, 2);
    expect(entries.map((e) => e.length)).to.deep.equal([1, 1, 1]);
    expect(() => a.allocateLegs(v, 2, 2)).to.throw(ContainerFullError, /vdisk m needs 2 more segments.*only 1 free/);
    expect(a.freeSegments(CA) + a.freeSegments(CB)).to.equal(1);
  });

  it('keeps one location per entry before giving any entry a second leg', () => {
    add(CA, 3, 'd1');
    add(CB, 3, 'd2');
    const a = new Allocator(db);
    const entries = a.allocateLegs(vdisk('m', 5), 5, 2);
    expect(entries).to.have.length(5);
    expect(entries.reduce((n, e) => n + e.length, 0)).to.equal(6);
    for (const e of entries) expect(new Set(domains(e)).size).to.equal(e.length);
  });

  it('leaves out failed and draining containers and the domains avoided', () => {
    add(CA, 4, 'd1');
    add(CB, 4, 'd2');
    add(CC, 4, 'd3');
    add(CD, 4, 'd4');
    db.setContainerState(CC, 'failed');
    db.setContainerState(CD, 'draining');
    const a = new Allocator(db);
    const v = vdisk('m', 2);
    const [e] = a.allocateLegs(v, 1, 3);
    expect(domains(e!).sort()).to.deep.equal(['d1', 'd2']);
    const [f] = a.allocateLegs(v, 1, 2, (d) => d === 'd1');
    expect(domains(f!)).to.deep.equal(['d2']);
    expect(() => a.allocateLegs(v, 1, 2, (d) => d === 'd1' || d === 'd2')).to.throw(ContainerFullError, /failure domain not avoided/);
    expect([...a.domainsWithRoom(v)].sort()).to.deep.equal([
      ['d1', 3],
      ['d2', 2],
    ]);
  });
});
