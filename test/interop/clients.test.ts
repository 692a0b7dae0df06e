// Real iSCSI initiators against the target under test (Tabula by default,
// TABULA_INTEROP_TARGET=tgtd for the reference target): libiscsi's utilities
// for discovery, INQUIRY/VPD and READ CAPACITY(16), and qemu's iscsi block
// driver copying a 2 GiB sparse random image and reading it back, plain, with
// CRC32C header digests, and with CHAP.
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTarget, targetKindFromEnv, urlWithChap, type RunningTarget, type ChapCredentials } from '../support/target-process.js';
import { runBounded, describeRun } from '../support/bounded-run.js';
import { requireTools, runOk } from '../support/tools.js';
import { writeRandomImage } from '../support/random-image.js';
import {
  parseIscsiLs,
  parseKeyValues,
  field,
  numField,
  parseSupportedVpd,
  parseSerial,
  parseDesignators,
  parseReadCapacity16,
} from '../support/client-output.js';
import { log } from '../../src/util/log.js';

const GiB = 1024 ** 3;
const IMAGE_SIZE = 2 * GiB;
const kind = targetKindFromEnv();
/** Per client command; a 2 GiB copy over loopback takes well under this. */
const COPY_TIMEOUT = 300_000;
const QUICK_TIMEOUT = 30_000;
/** Login Response status class 2 (initiator error), detail 1 or 2, as libiscsi prints it. */
const LOGIN_REFUSED = /(Authentication|Authorization) failure\(51[34]\)/;

/** Start a target for one describe block and stop it after, keeping logs if a test failed. */
function useTarget(opts: { sizeBytes: number; label: string; chap?: ChapCredentials; mutualChap?: ChapCredentials }): () => RunningTarget {
  let target: RunningTarget | undefined;
  let failed = false;
  before(async function () {
    this.timeout(60_000);
    requireTools(['timeout', 'iscsi-ls', 'iscsi-inq', 'iscsi-readcapacity16', 'qemu-img']);
    target = await startTarget({ ...opts, kind });
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });
  after(async function () {
    this.timeout(30_000);
    if (target === undefined) return;
    await target.stop({ keepLogs: failed });
    if (failed) log.warn(`interop: ${kind} target logs kept in ${target.dir}`);
  });
  return () => {
    if (target === undefined) throw new Error('target not started');
    return target;
  };
}

async function inq(url: string, args: string[] = []): Promise<string> {
  return (await runOk('iscsi-inq', [...args, url], { timeoutMs: QUICK_TIMEOUT })).stdout;
}

/** iscsi-inq reads the page code as a decimal integer (popt), so pass 131, not 0x83. */
const vpd = (url: string, page: number): Promise<string> => inq(url, ['-e', '1', '-c', String(page)]);

/** qemu --image-opts for the iscsi driver, with extra options such as header-digest=crc32c. */
function iscsiOpts(t: RunningTarget, extra: string[] = []): string {
  return ['driver=iscsi', 'transport=tcp', `portal=${t.portal}`, `target=${t.iqn}`, `lun=${t.lun}`, ...extra].join(',');
}

/** Login parameters the target answered with, from libiscsi's debug log (LIBISCSI_DEBUG >= 6). */
function loginReply(stderr: string, key: string): string[] {
  const re = new RegExp(`TargetLoginReply: ${key}=(\\S+)`, 'g');
  return [...stderr.matchAll(re)].map((m) => m[1] as string);
}

describe(`interop: iSCSI clients against ${kind}`, function () {
  this.timeout(COPY_TIMEOUT * 2);

  describe('discovery, INQUIRY and READ CAPACITY', function () {
    const target = useTarget({ sizeBytes: IMAGE_SIZE, label: 'clients' });

    it('iscsi-ls discovers the target on its portal and lists the LUN', async function () {
      const t = target();
      const r = await runOk('iscsi-ls', ['-s', `iscsi://${t.portal}`], { timeoutMs: QUICK_TIMEOUT });
      const ls = parseIscsiLs(r.stdout);
      const mine = ls.targets.filter((x) => x.name === t.iqn);
      expect(mine, r.stdout).to.have.length.greaterThan(0);
      expect(mine.map((x) => x.portal)).to.include(t.portal);
      const lun = ls.luns.find((l) => l.lun === t.lun);
      expect(lun, r.stdout).to.not.equal(undefined);
      expect(lun?.type).to.equal('DIRECT_ACCESS');
    });

    it('iscsi-inq standard INQUIRY describes a connected, non-removable disk', async function () {
      const m = parseKeyValues(await inq(target().url));
      expect(field(m, 'Peripheral Qualifier')).to.equal('CONNECTED');
      expect(field(m, 'Peripheral Device Type')).to.equal('DIRECT_ACCESS');
      expect(numField(m, 'Removable')).to.equal(0);
      expect(numField(m, 'Version')).to.be.at.least(5); // SPC-3 or later
      expect(numField(m, 'ReponseDataFormat')).to.equal(2); // sic: libiscsi's spelling
      expect(numField(m, 'CmdQue')).to.equal(1);
      expect(field(m, 'Vendor')).to.not.equal('');
      expect(field(m, 'Product')).to.not.equal('');
    });

    it('VPD 0x00 lists the mandatory and block pages in ascending order', async function () {
      const pages = parseSupportedVpd(await vpd(target().url, 0x00));
      expect(pages).to.include.members([0x00, 0x80, 0x83, 0xb0, 0xb2]);
      expect(pages).to.deep.equal([...pages].sort((a, b) => a - b));
    });

    it('VPD 0x80 returns a non-empty unit serial number', async function () {
      expect(parseSerial(await vpd(target().url, 0x80))).to.match(/^\S.*$/);
    });

    it('VPD 0x83 identifies the logical unit with an NAA, EUI-64 or SCSI name designator', async function () {
      const text = await vpd(target().url, 0x83);
      const ds = parseDesignators(text);
      expect(ds, text).to.have.length.greaterThan(0);
      // association 0 = the logical unit; types 2 = EUI-64, 3 = NAA, 8 = SCSI name string
      const lu = ds.filter((d) => d.association === 0 && [2, 3, 8].includes(d.type));
      expect(lu, text).to.have.length.greaterThan(0);
    });

    it('VPD 0xb0 block limits allow UNMAP and are consistent', async function () {
      const m = parseKeyValues(await vpd(target().url, 0xb0));
      expect(numField(m, 'maximum unmap lba count')).to.be.greaterThan(0);
      expect(numField(m, 'maximum unmap block descriptor count')).to.be.greaterThan(0);
      const maxLen = numField(m, 'maximum transfer length');
      const optLen = numField(m, 'optimal transfer length');
      if (maxLen !== 0 && optLen !== 0) expect(optLen).to.be.at.most(maxLen);
      expect(numField(m, 'maximum compare and write length')).to.be.at.most(255);
    });

    it('VPD 0xb2 reports a thin-provisioned LUN with UNMAP', async function () {
      const m = parseKeyValues(await vpd(target().url, 0xb2));
      expect(numField(m, 'lbpu')).to.equal(1);
      expect(numField(m, 'provisioning type')).to.equal(2); // thin
    });

    it('iscsi-readcapacity16 reports the size, 512-byte blocks and LBPME', async function () {
      const t = target();
      const r = await runOk('iscsi-readcapacity16', [t.url], { timeoutMs: QUICK_TIMEOUT });
      const cap = parseReadCapacity16(r.stdout);
      expect(cap.blockLength).to.equal(512);
      expect(cap.lastLba).to.equal(t.sizeBytes / 512 - 1);
      expect(cap.totalBytes).to.equal(t.sizeBytes);
      expect(cap.lbpme).to.equal(1);
      // LBPRZ in READ CAPACITY(16) and VPD 0xb2 must agree.
      const b2 = parseKeyValues(await vpd(t.url, 0xb2));
      expect(cap.lbprz).to.equal(numField(b2, 'lbprz'));
    });
  });

  describe('qemu-img copies 2 GiB sparse random images byte for byte', function () {
    const target = useTarget({ sizeBytes: IMAGE_SIZE, label: 'qemu' });
    let dir = '';
    let image1 = '';
    let image2 = '';

    before(async function () {
      this.timeout(120_000);
      dir = mkdtempSync(join(tmpdir(), 'tabula-interop-images-'));
      image1 = join(dir, 'seed1.img');
      image2 = join(dir, 'seed2.img');
      // Two seeds give different hole layouts: copying image 2 over image 1
      // checks that holes in the source become zeros over old data.
      await writeRandomImage(image1, IMAGE_SIZE, 1);
      await writeRandomImage(image2, IMAGE_SIZE, 2);
    });
    after(function () {
      if (dir !== '') rmSync(dir, { recursive: true, force: true });
    });

    it('plain: qemu-img convert onto the LUN, then qemu-img compare', async function () {
      const t = target();
      await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image1, t.url], { timeoutMs: COPY_TIMEOUT });
      const cmp = await runBounded('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image1, t.url], { timeoutMs: COPY_TIMEOUT });
      expect(cmp.exitCode, describeRun(cmp)).to.equal(0); // 1 = contents differ, 2 = error
    });

    it('CRC32C header digest: negotiated, copied over the previous image, compared', async function () {
      const t = target();
      const opts = iscsiOpts(t, ['header-digest=crc32c']);
      const env = { ...process.env, LIBISCSI_DEBUG: '6' };
      const conv = await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '--target-image-opts', image2, opts], { timeoutMs: COPY_TIMEOUT, env });
      // header-digest=crc32c offers only CRC32C; libiscsi would still carry
      // on if the target answered None, so check what was agreed.
      expect(loginReply(conv.stderr, 'HeaderDigest'), conv.stderr.slice(0, 4000)).to.deep.equal(['CRC32C']);
      // libiscsi 1.19 always offers DataDigest=None: data digests cannot be tested with it.
      expect(loginReply(conv.stderr, 'DataDigest')).to.deep.equal(['None']);
      const cmp = await runBounded('qemu-img', ['compare', '--image-opts', `driver=file,filename=${image2}`, opts], { timeoutMs: COPY_TIMEOUT, env });
      expect(loginReply(cmp.stderr, 'HeaderDigest')).to.deep.equal(['CRC32C']);
      expect(cmp.exitCode, describeRun(cmp)).to.equal(0);
    });
  });

  describe('CHAP', function () {
    const chap: ChapCredentials = { user: 'interop-initiator', secret: 'initiator-secret-0123' };
    const target = useTarget({ sizeBytes: IMAGE_SIZE, label: 'chap', chap });
    let dir = '';
    let image = '';

    before(async function () {
      this.timeout(120_000);
      dir = mkdtempSync(join(tmpdir(), 'tabula-interop-images-'));
      image = join(dir, 'seed3.img');
      await writeRandomImage(image, IMAGE_SIZE, 3);
    });
    after(function () {
      if (dir !== '') rmSync(dir, { recursive: true, force: true });
    });

    it('qemu-img with credentials in the URL copies and compares an image', async function () {
      const url = urlWithChap(target(), chap);
      await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image, url], { timeoutMs: COPY_TIMEOUT });
      const cmp = await runBounded('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, url], { timeoutMs: COPY_TIMEOUT });
      expect(cmp.exitCode, describeRun(cmp)).to.equal(0);
    });

    it('a wrong secret is refused at login', async function () {
      const t = target();
      const bad = urlWithChap(t, { user: chap.user, secret: 'wrong-secret-000000' });
      for (const [cmd, args] of [
        ['iscsi-inq', [bad]],
        ['qemu-img', ['info', bad]],
      ] as const) {
        const r = await runBounded(cmd, args, { timeoutMs: QUICK_TIMEOUT });
        expect(r.timedOut, describeRun(r)).to.equal(false);
        expect(r.exitCode, describeRun(r)).to.not.equal(0);
        expect(r.stdout + r.stderr).to.match(LOGIN_REFUSED);
      }
    });

    it('a wrong user name and a login without credentials are refused', async function () {
      const t = target();
      for (const url of [urlWithChap(t, { user: 'someone-else', secret: chap.secret }), t.url]) {
        const r = await runBounded('iscsi-inq', [url], { timeoutMs: QUICK_TIMEOUT });
        expect(r.timedOut, describeRun(r)).to.equal(false);
        expect(r.exitCode, describeRun(r)).to.not.equal(0);
        expect(r.stdout + r.stderr).to.match(LOGIN_REFUSED);
      }
    });
  });

  describe('mutual CHAP', function () {
    const chap: ChapCredentials = { user: 'interop-initiator', secret: 'initiator-secret-0123' };
    const mutualChap: ChapCredentials = { user: 'interop-target', secret: 'target-secret-456789' };
    const target = useTarget({ sizeBytes: 64 << 20, label: 'mutual', chap, mutualChap });

    // libiscsi takes the secret the target must prove from URL arguments.
    const mutualUrl = (t: RunningTarget, secret: string): string =>
      `${urlWithChap(t, chap)}?target_user=${mutualChap.user}&target_password=${secret}`;

    it('the target proves its secret and the initiator logs in', async function () {
      const m = parseKeyValues(await inq(mutualUrl(target(), mutualChap.secret)));
      expect(field(m, 'Peripheral Device Type')).to.equal('DIRECT_ACCESS');
    });

    it('the initiator refuses a target that does not know the expected secret', async function () {
      const r = await runBounded('iscsi-inq', [mutualUrl(target(), 'not-the-target-secret')], { timeoutMs: QUICK_TIMEOUT });
      expect(r.timedOut, describeRun(r)).to.equal(false);
      expect(r.exitCode, describeRun(r)).to.not.equal(0);
      // libiscsi's words for a CHAP_R that does not match the target secret.
      expect(r.stdout + r.stderr).to.match(/Invalid CHAP_R/);
    });
  });
});
