// scanIscsiLocator, container init/add of a locator, and the client options,
// over in-process targets (the real SCSI stack behind a loop connector).
import { expect } from 'chai';
import { MemoryBlockDevice } from '../../../src/blockdev/memory-device.js';
import { ScsiTargetDevice } from '../../../src/scsi/target-device.js';
import { clientOptionsFromEnv, defaultInitiatorName, resolveClientOptions } from '../../../src/container/iscsi-client.js';
import { ContainerInitError, initContainer } from '../../../src/container/init.js';
import { readIscsiLabel, scanIscsiLocator } from '../../../src/container/iscsi-scan.js';
import { decodeReportLuns, decodeSense } from '../../../src/container/iscsi-commands.js';
import { loopConnector } from './iscsi-rig.js';

const MiB = 1 << 20;
const T1 = 'iqn.2026-11.org.tabula:st1';
const T2 = 'iqn.2026-11.org.tabula:st2';

function target(name: string, luns: number[], blocks = 8192): ScsiTargetDevice {
  const t = new ScsiTargetDevice({ name, portGroups: [{ id: 1, relativePortIds: [1] }] });
  for (const l of luns) t.addLun(l, new MemoryBlockDevice(blocks, { thin: true }), { lunId: `${name}/${l}` });
  return t;
}

describe('iSCSI containers: scan, init, add', () => {
  it('init labels one LUN, add reads its label back, the secret never shown', async () => {
    const connector = loopConnector({ 'st1:3260': [target(T1, [0, 1])] });
    const locator = `iscsi://alice%s3cret@st1/${T1}/1`;
    const r = await initContainer(locator, { iscsi: { connector } });
    expect(r.medium).to.equal('iscsi');
    expect(r.label.size).to.equal(8192 * 512);
    const found = await readIscsiLabel(locator, { connector });
    expect(found).to.include({ id: r.label.id, medium: 'iscsi', path: `iscsi://alice@st1:3260/${T1}/1`, size: 8192 * 512 });
    // Every session was closed again.
    expect(connector.transports.every((t) => t.state === 'closed')).to.equal(true);
    try {
      await initContainer(locator, { size: 4 * MiB, iscsi: { connector } });
      expect.fail('relabelled');
    } catch (e) {
      expect((e as ContainerInitError).kind).to.equal('labelled');
      expect((e as Error).message).to.not.include('s3cret');
    }
  });

  it('init of a portal locator or an unreachable portal fails with one clear line', async () => {
    const connector = loopConnector({ 'st1:3260': [target(T1, [0])] });
    for (const [loc, why] of [
      ['iscsi://st1', /name one LUN/],
      ['iscsi://st9/iqn.2026-11.org.tabula:st1/0', /unreachable|ECONNREFUSED/],
      [`iscsi://st1/${T2}/0`, /not found/],
      ['iscsi://st1/nope/0', /not an iSCSI target name/],
    ] as const) {
      try {
        await initContainer(loc, { iscsi: { connector } });
        expect.fail(`initialised ${loc}`);
      } catch (e) {
        expect(e, loc).to.be.instanceOf(ContainerInitError);
        expect((e as Error).message, loc).to.match(why);
      }
    }
  });

  it('a portal locator finds the labelled LUNs of every target and reports the rest', async () => {
    const t1 = target(T1, [0, 1, 2]);
    const t2 = target(T2, [0, 3]);
    const connector = loopConnector({ 'st1:3260': [t1, t2] });
    const a = await initContainer(`iscsi://st1/${T1}/0`, { iscsi: { connector } });
    const b = await initContainer(`iscsi://st1/${T1}/2`, { iscsi: { connector } });
    const c = await initContainer(`iscsi://st1/${T2}/3`, { iscsi: { connector } });
    const r = await scanIscsiLocator('iscsi://st1:3260', { connector });
    expect(r.found.map((d) => d.id).sort()).to.deep.equal([a.label.id, b.label.id, c.label.id].sort());
    expect(r.found.map((d) => d.path).sort()).to.deep.equal([`iscsi://st1:3260/${T1}/0`, `iscsi://st1:3260/${T1}/2`, `iscsi://st1:3260/${T2}/3`]);
    expect(r.problems.map((p) => [p.path, p.kind])).to.deep.equal([
      [`iscsi://st1:3260/${T1}/1`, 'unlabelled'],
      [`iscsi://st1:3260/${T2}/0`, 'unlabelled'],
    ]);
    // The drivers work, and the LUNs of one target share one session that ends with the last driver.
    const d = r.found.find((x) => x.id === b.label.id)!;
    await d.write(0, Buffer.alloc(4096, 7));
    expect((await d.read(0, 4096)).equals(Buffer.alloc(4096, 7))).to.equal(true);
    const sessions = connector.transports.slice(-2);
    for (const x of r.found) await x.close();
    expect(sessions.every((t) => t.state === 'closed')).to.equal(true);
  });

  it('skips a LUN that is no block device (tgtd keeps LUN 0 for its controller) unless it is named alone', async () => {
    // LUN 0 answers INQUIRY as a storage array controller (type 0Ch), as tgtd's does.
    const controller = (req: { lun: number; cdb: Buffer }) => {
      if (req.lun !== 0 || req.cdb[0] !== 0x12 || (req.cdb[1]! & 1) !== 0) return undefined;
      const d = Buffer.alloc(96);
      d[0] = 0x0c;
      return { status: 0, data: d };
    };
    const connector = loopConnector({ 'st1:3260': [target(T1, [0, 1])] }, { intercept: controller });
    const a = await initContainer(`iscsi://st1/${T1}/1`, { iscsi: { connector } });
    const r = await scanIscsiLocator('iscsi://st1', { connector });
    expect(r.found.map((d) => d.id)).to.deep.equal([a.label.id]);
    expect(r.problems).to.deep.equal([]);
    const alone = await scanIscsiLocator(`iscsi://st1/${T1}/0`, { connector });
    expect(alone.problems.map((p) => p.kind)).to.deep.equal(['unreadable']);
    expect(alone.problems[0]!.message).to.match(/not a block device/);
    for (const d of r.found) await d.close();
  });

  it('a target locator scans that target only; a LUN locator opens that LUN', async () => {
    const connector = loopConnector({ 'st1:3260': [target(T1, [0, 1]), target(T2, [0])] });
    const a = await initContainer(`iscsi://st1/${T1}/1`, { iscsi: { connector } });
    await initContainer(`iscsi://st1/${T2}/0`, { iscsi: { connector } });
    const byTarget = await scanIscsiLocator(`iscsi://st1/${T1}`, { connector });
    expect(byTarget.found.map((d) => d.id)).to.deep.equal([a.label.id]);
    expect(byTarget.problems.map((p) => p.kind)).to.deep.equal(['unlabelled']);
    const one = await scanIscsiLocator(`iscsi://st1/${T1}/1`, { connector });
    expect(one.found.map((d) => d.id)).to.deep.equal([a.label.id]);
    expect(one.problems).to.deep.equal([]);
    for (const d of [...byTarget.found, ...one.found]) await d.close();
  });

  it('an unreachable portal or target is an "unreachable" problem, a bad locator "unreadable"', async () => {
    const connector = loopConnector({ 'st1:3260': [target(T1, [0])] }, { down: new Set(['st1:3260']) });
    const r = await scanIscsiLocator('iscsi://bob%pw@st1', { connector });
    expect(r.found).to.deep.equal([]);
    expect(r.problems).to.have.length(1);
    expect(r.problems[0]).to.include({ path: 'iscsi://bob@st1', kind: 'unreachable' });
    expect(r.problems[0]!.message).to.not.include('pw@');
    const t = await scanIscsiLocator(`iscsi://st1/${T1}/0`, { connector });
    expect(t.problems.map((p) => [p.kind, p.path])).to.deep.equal([['unreachable', `iscsi://st1:3260/${T1}/0`]]);
    const bad = await scanIscsiLocator('iscsi://st1/x/0', { connector });
    expect(bad.problems.map((p) => p.kind)).to.deep.equal(['unreadable']);
  });

  it('a container id met twice is reported once as a duplicate', async () => {
    const dev = new MemoryBlockDevice(8192, { thin: true });
    const t = new ScsiTargetDevice({ name: T1, portGroups: [{ id: 1, relativePortIds: [1] }] });
    t.addLun(0, dev, { lunId: 'a' });
    t.addLun(1, dev, { lunId: 'b' });
    const connector = loopConnector({ 'st1:3260': [t] });
    await initContainer(`iscsi://st1/${T1}/0`, { iscsi: { connector } });
    const r = await scanIscsiLocator(`iscsi://st1/${T1}`, { connector });
    expect(r.found).to.have.length(1);
    expect(r.problems.map((p) => p.kind)).to.deep.equal(['duplicate']);
    await r.found[0]!.close();
  });

  describe('client options', () => {
    it('names the initiator after the host and keeps the command timeout below the hold', () => {
      expect(defaultInitiatorName('Host_A.example')).to.equal('iqn.2024-01.io.tabula:agent.host-a.example');
      const o = resolveClientOptions({ holdMs: 4000 });
      expect(o.commandTimeoutMs).to.equal(2000);
      expect(o.queueDepth).to.equal(32);
      expect(resolveClientOptions({}).commandTimeoutMs).to.equal(5000);
    });

    it('reads TABULA_ISCSI_* for admin commands, naming the variable that is wrong', () => {
      expect(
        clientOptionsFromEnv({
          TABULA_ISCSI_INITIATOR_NAME: 'iqn.2024-01.io.tabula:admin',
          TABULA_ISCSI_MUTUAL_CHAP_USER: 'tgt',
          TABULA_ISCSI_MUTUAL_CHAP_SECRET: 'tgtsecret1234',
          TABULA_ISCSI_DIGEST: 'CRC32C',
          TABULA_ISCSI_QUEUE_DEPTH: '8',
          TABULA_ISCSI_COMMAND_TIMEOUT: '2.5',
        }),
      ).to.deep.equal({
        initiatorName: 'iqn.2024-01.io.tabula:admin',
        mutualChap: { user: 'tgt', secret: 'tgtsecret1234' },
        headerDigest: 'CRC32C',
        dataDigest: 'CRC32C',
        queueDepth: 8,
        commandTimeoutMs: 2500,
      });
      expect(() => clientOptionsFromEnv({ TABULA_ISCSI_DIGEST: 'md5' })).to.throw(/TABULA_ISCSI_DIGEST/);
      expect(() => clientOptionsFromEnv({ TABULA_ISCSI_QUEUE_DEPTH: '0' })).to.throw(/TABULA_ISCSI_QUEUE_DEPTH/);
      expect(() => clientOptionsFromEnv({ TABULA_ISCSI_MUTUAL_CHAP_USER: 'x' })).to.throw(/go together/);
    });
  });

  describe('decoders', () => {
    it('reads fixed and descriptor sense, with the information field', () => {
      const fixed = Buffer.alloc(18);
      fixed[0] = 0xf0;
      fixed[2] = 0x03;
      fixed.writeUInt32BE(1234, 3);
      fixed[12] = 0x11;
      expect(decodeSense(fixed)).to.deep.equal({ key: 3, asc: 0x11, ascq: 0, info: 1234 });
      const desc = Buffer.alloc(20);
      desc[0] = 0x72;
      desc[1] = 0x03;
      desc[2] = 0x0c;
      desc[7] = 12;
      desc[8] = 0x00;
      desc[9] = 0x0a;
      desc[10] = 0x80;
      desc.writeBigUInt64BE(5n, 12);
      expect(decodeSense(desc)).to.deep.equal({ key: 3, asc: 0x0c, ascq: 0, info: 5 });
      expect(decodeSense(Buffer.from([0x00, 0x00]))).to.equal(undefined);
    });

    it('reads REPORT LUNS in peripheral and flat addressing', () => {
      const d = Buffer.alloc(8 + 24);
      d.writeUInt32BE(24, 0);
      d[9] = 3; // peripheral, LUN 3
      d[16] = 0x40 | 0x01;
      d[17] = 0x02; // flat, LUN 258
      d[24] = 0x80; // logical unit addressing: skipped
      expect(decodeReportLuns(d)).to.deep.equal([3, 258]);
    });
  });
});
