import { expect } from 'chai';
import { mkdtempSync, writeFileSync, rmSync, readlinkSync, readdirSync, symlinkSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { isBlank, linkContainers, mountedAt } from '../../../src/daemon/prepare.js';

describe('daemon: node preparation', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-prepare-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('a disk is blank only when its first MiB is zeros', () => {
    const f = join(dir, 'disk');
    writeFileSync(f, Buffer.alloc(2 << 20));
    expect(isBlank(f)).to.equal(true);
    const withSuperblock = Buffer.alloc(2 << 20);
    withSuperblock[1024 + 56] = 0x53; // where ext4 keeps its magic
    writeFileSync(f, withSuperblock);
    expect(isBlank(f)).to.equal(false);
    const late = Buffer.alloc(2 << 20);
    late[(1 << 20) + 5] = 1; // beyond the probe
    writeFileSync(f, late);
    expect(isBlank(f)).to.equal(true);
  });

  it('links containers by id and removes only its own stale links', () => {
    const c = join(dir, 'containers');
    mkdirSync(c);
    symlinkSync('/dev/old', join(c, 'dev-gone'));
    symlinkSync('/dev/vdz', join(c, 'dev-aaa'));
    symlinkSync('/srv/x.img', join(c, 'admin-link'));
    writeFileSync(join(c, 'container-0.img'), '');
    const paths = linkContainers(c, [
      { device: '/dev/vdb', id: 'aaa', labelled: false },
      { device: '/dev/vdc', id: 'bbb', labelled: true },
    ]);
    expect(paths).to.deep.equal([join(c, 'dev-aaa'), join(c, 'dev-bbb')]);
    expect(readdirSync(c).sort()).to.deep.equal(['admin-link', 'container-0.img', 'dev-aaa', 'dev-bbb']);
    expect(readlinkSync(join(c, 'dev-aaa'))).to.equal('/dev/vdb');
    expect(readlinkSync(join(c, 'dev-bbb'))).to.equal('/dev/vdc');
  });

  it('finds what is mounted at a directory from mountinfo', () => {
    const mi = join(dir, 'mountinfo');
    writeFileSync(
      mi,
      '22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda2 rw\n' +
        '40 22 254:16 / /var/lib/tabula rw,relatime shared:20 - ext4 /dev/vdb rw\n',
    );
    expect(mountedAt('/var/lib/tabula', mi)).to.equal('/dev/vdb');
    expect(mountedAt('/srv', mi)).to.equal(null);
  });

  it('tabula-role: the unit condition reads the role from TABULA_ROLE or the file', () => {
    const script = join(process.cwd(), 'appliance', 'rootfs', 'usr', 'local', 'sbin', 'tabula-role');
    const f = join(dir, 'tabula.yaml');
    const is = (role: string, env: Record<string, string>): boolean => {
      try {
        execFileSync('sh', [script, role], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', TABULA_CONFIG: f, ...env }, stdio: 'ignore' });
        return true;
      } catch {
        return false;
      }
    };
    writeFileSync(f, '# a comment\nrole: "agent"   # the role\ncontroller:\n  role: controller\n');
    expect(is('agent', {})).to.equal(true);
    expect(is('controller', {})).to.equal(false);
    expect(is('controller', { TABULA_ROLE: 'controller' })).to.equal(true);
    rmSync(f);
    expect(is('all-in-one', {})).to.equal(true);
  });
});
