// ALUA across agents (docs/architecture.md, "Target ports and ALUA"): a
// controller and two agent processes export one vdisk. REPORT TARGET PORT
// GROUPS through either agent lists both agents' groups with their states
// and distinct relative target ports; INQUIRY VPD 0x83 names the path's own
// port and group; `export add --alua non-optimized` shows on every path;
// when agent b is SIGKILLed, agent a reports b's group unavailable once b's
// lease has run out and a's initiator sees ASYMMETRIC ACCESS STATE CHANGED
// (06/2A/06) exactly once; when b is back, its group is active again.
// Everything is decoded here from the bytes (SPC-4 6.36, 7.8.6), with the
// raw initiator, independently of src/scsi.
import { expect } from 'chai';
import type { ExportInfo } from '../../src/wire/proto-types.js';
import { waitFor } from '../support/process.js';
import { useCluster } from './cluster.js';
import { GOOD, LunSession, describeIo, senseText, type IoResult } from './scsi-client.js';

const VDISK = 'mp';
const ACTIVE_OPTIMIZED = 0x0;
const ACTIVE_NON_OPTIMIZED = 0x1;
const UNAVAILABLE = 0x3;

interface Group {
  id: number;
  state: number;
  pref: boolean;
  supported: number;
  ports: number[];
}

/** REPORT TARGET PORT GROUPS (MAINTENANCE IN, service action 0Ah), length-only or extended header. */
function rtpgCdb(extended: boolean): Buffer {
  const c = Buffer.alloc(12);
  c[0] = 0xa3;
  c[1] = 0x0a | (extended ? 0x20 : 0);
  c.writeUInt32BE(4096, 6);
  return c;
}

function parseRtpg(d: Buffer, extended: boolean): Group[] {
  const end = d.readUInt32BE(0) + 4;
  expect(end, 'RETURN DATA LENGTH + 4').to.equal(d.length);
  let off = 4;
  if (extended) {
    expect(d[4]! & 0x70, 'FORMAT TYPE 1').to.equal(0x10);
    off = 8;
  }
  const groups: Group[] = [];
  while (off < end) {
    const count = d[off + 7]!;
    const ports: number[] = [];
    for (let i = 0; i < count; i++) ports.push(d.readUInt16BE(off + 8 + i * 4 + 2));
    groups.push({ id: d.readUInt16BE(off + 2), state: d[off]! & 0x0f, pref: (d[off]! & 0x80) !== 0, supported: d[off + 1]!, ports });
    off += 8 + count * 4;
  }
  return groups;
}

/** VPD 0x83 designators with association target port: relative target port (type 4) and target port group (type 5). */
async function ownPort(s: LunSession): Promise<{ relativePort: number; group: number }> {
  const r = await s.command(Buffer.from([0x12, 0x01, 0x83, 0x10, 0x00, 0]), { read: 4096 });
  expect(r.status, describeIo(r)).to.equal(GOOD);
  const d = r.data;
  const out = { relativePort: -1, group: -1 };
  for (let off = 4; off + 4 <= d.length; off += 4 + d[off + 3]!) {
    const type = d[off + 1]! & 0x0f;
    const assoc = (d[off + 1]! >> 4) & 0x03;
    if (assoc === 1 && type === 4) out.relativePort = d.readUInt16BE(off + 6);
    if (assoc === 1 && type === 5) out.group = d.readUInt16BE(off + 6);
  }
  return out;
}

/** Unit attentions 06/2A/06 met along the way are counted in `uas`. */
async function rtpg(s: LunSession, uas: { n: number }, extended = false): Promise<Group[]> {
  for (let i = 0; i < 5; i++) {
    const r: IoResult = await s.command(rtpgCdb(extended), { read: 4096 });
    if (r.status === GOOD) return parseRtpg(r.data, extended);
    expect(senseText(r.sense), 'only ASYMMETRIC ACCESS STATE CHANGED may come in the way').to.equal('06/2a/06');
    uas.n++;
  }
  throw new Error('REPORT TARGET PORT GROUPS kept failing');
}

describe('system: ALUA across two agents exporting one vdisk', function () {
  this.timeout(180_000);
  const cluster = useCluster('alua', async (c) => {
    await c.serveVdisk({ vdisk: VDISK, size: '16MiB', containerSize: '64MiB', agents: { a: {}, b: {} } });
  });
  const sessions: LunSession[] = [];
  const open = async (agent: string): Promise<LunSession> => {
    const s = await LunSession.open(cluster().agent(agent).portal, `iqn.2026-11.org.tabula:${VDISK}`);
    sessions.push(s);
    return s;
  };
  after(() => {
    for (const s of sessions.splice(0)) s.close();
  });

  it('RTPG on either path lists both agents as groups, active/optimized, with distinct relative ports; VPD 0x83 names the own one', async function () {
    const none = { n: 0 };
    const viaA = await rtpg(await open('a'), none);
    const viaB = await rtpg(await open('b'), none, true);
    expect(viaB).to.deep.equal(viaA);
    expect(viaA).to.have.lengthOf(2);
    expect(viaA.map((g) => g.state)).to.deep.equal([ACTIVE_OPTIMIZED, ACTIVE_OPTIMIZED]);
    expect(viaA.every((g) => g.pref && (g.supported & 0x8b) === 0x8b)).to.equal(true);
    const ports = viaA.flatMap((g) => g.ports);
    expect(new Set(ports).size).to.equal(ports.length);
    expect(new Set(viaA.map((g) => g.id)).size).to.equal(2);
    for (const [agent, s] of [['a', sessions[0]!], ['b', sessions[1]!]] as const) {
      const own = await ownPort(s);
      const group = viaA.find((g) => g.id === own.group);
      expect(group, `agent ${agent}'s own group ${own.group} in RTPG`).to.not.equal(undefined);
      expect(group!.ports, `agent ${agent}'s relative port`).to.include(own.relativePort);
    }
    expect((await ownPort(sessions[0]!)).group).to.not.equal((await ownPort(sessions[1]!)).group);
  });

  it('export add --alua non-optimized: b is active/non-optimized on both paths and in export ls', async function () {
    const c = cluster();
    const bGroup = (await ownPort(sessions[1]!)).group;
    await c.cliOk(['export', 'rm', VDISK, '--agent', 'b']);
    await c.cliOk(['export', 'add', VDISK, '--agent', 'b', '--alua', 'non-optimized']);
    await c.waitServed(VDISK, ['a', 'b']);
    const uas = { n: 0 };
    const a = await open('a');
    const b = await open('b');
    await waitFor('b non-optimized through a', 30_000, async () => {
      const g = (await rtpg(a, uas)).find((x) => x.id === bGroup);
      return g?.state === ACTIVE_NON_OPTIMIZED ? true : undefined;
    });
    const viaB = await rtpg(b, uas, true);
    expect(viaB.map((g) => [g.id === bGroup ? 'b' : 'a', g.state, g.pref])).to.have.deep.members([
      ['a', ACTIVE_OPTIMIZED, true],
      ['b', ACTIVE_NON_OPTIMIZED, false],
    ]);
    const list = await c.cliJson<ExportInfo[]>(['export', 'ls', '--vdisk', VDISK]);
    expect(list.map((e) => `${e.agent} ${e.alua} ${e.aluaState}`)).to.deep.equal(['a optimized active/optimized', 'b non-optimized active/non-optimized']);
    expect(await c.cliOk(['export', 'ls', '--vdisk', VDISK])).to.match(/\bb\b.*non-optimized\s+active\/non-optimized/);
  });

  it('b killed: a reports b unavailable once its lease has run out, and a sees 06/2A/06 once; b back: active again', async function () {
    const c = cluster();
    const a = await open('a');
    const uas = { n: 0 };
    const before = await rtpg(a, uas);
    const bGroup = before.find((g) => g.state === ACTIVE_NON_OPTIMIZED)!.id;
    expect(uas.n).to.equal(0);
    await c.agent('b').daemon.kill();
    // The lease (8 s) plus the margin (1 s): bounded well below the wait.
    await waitFor('b unavailable through a', 40_000, async () => {
      const g = (await rtpg(a, uas)).find((x) => x.id === bGroup);
      return g?.state === UNAVAILABLE ? true : undefined;
    }, 250);
    const tur = await a.command(Buffer.from([0, 0, 0, 0, 0, 0]), {});
    expect(tur.status, `no second unit attention: ${describeIo(tur)}`).to.equal(GOOD);
    expect(uas.n, 'ASYMMETRIC ACCESS STATE CHANGED seen on a').to.equal(1);
    expect((await a.read(0, 1)).status, 'a still serves').to.equal(GOOD);
    const shown = await c.cliJson<ExportInfo[]>(['export', 'ls', '--vdisk', VDISK]);
    expect(shown.find((e) => e.agent === 'b')?.aluaState).to.equal('unavailable');

    await c.startAgent('b', { containers: [c.containerGlob] });
    await c.waitServed(VDISK, ['a', 'b']);
    await waitFor('b active again through a', 30_000, async () => {
      const g = (await rtpg(a, uas)).find((x) => x.id === bGroup);
      return g?.state === ACTIVE_NON_OPTIMIZED ? true : undefined;
    }, 250);
    expect(uas.n, 'the way back is reported too').to.be.at.least(2);
    const viaB = await rtpg(await open('b'), { n: 0 });
    expect(viaB.map((g) => g.state).sort()).to.deep.equal([ACTIVE_OPTIMIZED, ACTIVE_NON_OPTIMIZED]);
    expect((await ownPort(sessions.at(-1)!)).group, 'b keeps its number across a restart').to.equal(bGroup);
  });
});
