import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, validateConfig } from '../../../src/config/index.js';
import { storageLuns, storageTargetOptions } from '../../../src/daemon/appliance-storage.js';
import { restartNeeded } from '../../../src/daemon/run.js';

const ctx = { hostname: 'Store_1' };

function problems(raw: unknown): string[] {
  try {
    validateConfig(raw, 't', ctx);
  } catch (e) {
    expect(e).to.be.instanceOf(ConfigError);
    return [...(e as ConfigError).problems];
  }
  throw new Error('expected the configuration to be refused');
}

describe('daemon: the storage role', () => {
  let dir = '';
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-storage-role-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('validates storage.* with defaults: portal on every address, an IQN from the host name, 512-byte blocks', () => {
    const c = validateConfig({ role: 'storage', storage: { luns: ['/dev/vdb', { path: '/srv/lun1.img', size: '1GiB' }] } }, 't', ctx);
    expect(c.storage).to.deep.equal({
      luns: [
        { path: '/dev/vdb', size: undefined },
        { path: '/srv/lun1.img', size: 1024 ** 3 },
      ],
      portal: '0.0.0.0:3260',
      iqn: 'iqn.2026-11.org.tabula:storage.store-1',
      blockSize: 512,
    });
    // A storage node runs no controller: no token is needed for its (unused) controller.listen.
    expect(c.role).to.equal('storage');
  });

  it('refuses a storage node without disks, a bad IQN or block size, relative paths and containers-init', () => {
    expect(problems({ role: 'storage' })).to.deep.equal(['storage.luns: required when role is storage (the data disks to serve, e.g. /dev/disk/by-id/...)']);
    expect(
      problems({
        role: 'storage',
        'containers-init': ['/dev/vdb'],
        storage: { luns: ['rel.img', { size: '1GiB' }], iqn: 'storage', 'block-size': 1024, portl: 1 },
      }),
    ).to.deep.equal([
      'storage.portl: unknown key (did you mean storage.portal?)',
      "storage.luns[0].path: 'rel.img' must be an absolute path",
      'storage.luns[1].path: required (a block device, a file or a glob of them)',
      "storage.iqn: 'storage' is not an iSCSI name (iqn.YYYY-MM.domain...)",
      'storage.block-size: expected 512 or 4096, got 1024',
      'containers-init: a storage node serves its disks raw; agents label them over iSCSI (tabula container init iscsi://...)',
    ]);
  });

  it('LUN order: entries as listed, a glob by its matches sorted; a glob matching nothing or a missing device is an error', async () => {
    for (const n of ['d2.img', 'd10.img', 'd1.img']) writeFileSync(join(dir, n), Buffer.alloc(4096));
    const luns = await storageLuns({ luns: [{ path: join(dir, 'x.img'), size: 1 << 20 }, { path: join(dir, 'd*.img') }], portal: '0.0.0.0:3260', iqn: 'iqn.2026-11.x:y', blockSize: 512 }, 0);
    expect(luns.map((l) => l.file)).to.deep.equal([join(dir, 'x.img'), join(dir, 'd1.img'), join(dir, 'd10.img'), join(dir, 'd2.img')]);
    expect(luns[0]?.size).to.equal(1 << 20);
    const cfg = { portal: '0.0.0.0:3260', iqn: 'iqn.2026-11.x:y', blockSize: 512 as const };
    await storageLuns({ ...cfg, luns: [{ path: join(dir, 'none*') }] }, 0).then(
      () => expect.fail('expected an error'),
      (e: Error) => expect(e.message).to.match(/matches nothing/),
    );
    await storageLuns({ ...cfg, luns: [{ path: join(dir, 'missing') }] }, 0).then(
      () => expect.fail('expected an error'),
      (e: Error) => expect(e.message).to.match(/missing does not exist/),
    );
  });

  it('the target takes security.chap and security.allowed-initiators as an agent does', async () => {
    writeFileSync(join(dir, 'a.img'), Buffer.alloc(4096));
    const c = validateConfig(
      {
        role: 'storage',
        storage: { luns: [join(dir, 'a.img')], portal: '10.0.0.5:3261', iqn: 'iqn.2026-11.org.example:st1', 'block-size': 4096 },
        security: { chap: { user: 'agents', secret: 'twelve-chars!', 'mutual-user': 'st1', 'mutual-secret': 'another-secret' }, 'allowed-initiators': ['iqn.2026-11.org.example:agent-a'] },
      },
      't',
      ctx,
    );
    expect(await storageTargetOptions(c, 0)).to.deep.equal({
      luns: [{ file: join(dir, 'a.img'), size: undefined }],
      blockSize: 4096,
      readOnly: false,
      iqn: 'iqn.2026-11.org.example:st1',
      host: '10.0.0.5',
      port: 3261,
      chap: { user: 'agents', secret: 'twelve-chars!' },
      mutualChap: { user: 'st1', secret: 'another-secret' },
      allowedInitiators: ['iqn.2026-11.org.example:agent-a'],
    });
  });

  it('tabula-role storage: only the storage unit starts on a storage node', () => {
    const script = join(process.cwd(), 'appliance', 'rootfs', 'usr', 'local', 'sbin', 'tabula-role');
    const f = join(dir, 'tabula.yaml');
    writeFileSync(f, 'role: storage\nstorage:\n  luns: [/dev/vdb]\n');
    const is = (role: string): boolean => {
      try {
        execFileSync('sh', [script, role], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', TABULA_CONFIG: f }, stdio: 'ignore' });
        return true;
      } catch {
        return false;
      }
    };
    expect(['storage', 'all-in-one', 'agent', 'controller'].map(is)).to.deep.equal([true, false, false, false]);
  });

  it('a changed disk list or portal takes a restart', () => {
    const a = validateConfig({ role: 'storage', storage: { luns: ['/dev/vdb'] } }, 't', ctx);
    const b = validateConfig({ role: 'storage', storage: { luns: ['/dev/vdb', '/dev/vdc'] }, 'log-level': 'debug' }, 't', ctx);
    expect(restartNeeded('storage', a, b)).to.deep.equal(['storage']);
  });
});
