// The appliance end to end: build the image (appliance/build.sh, cached),
// boot it under qemu (TCG) as an all-in-one node with a second virtual disk,
// log in over iSCSI from the host through a forwarded loopback port, write
// data, reboot the guest through its guest agent, read the data again.
//
//   TABULA_APPLIANCE_TEST=1 npx mocha --timeout 0 test/appliance/appliance.appliance.test.ts
//   (npm run test:appliance)
//
// env TABULA_APPLIANCE_TEST_DISK=data       the second disk is the data disk (ext4,
//                                           formatted at first boot; database and
//                                           container file on it) — the default
//                         =container        the second disk is a raw container device
//                                           (labelled at first boot by containers-init)
// env TABULA_APPLIANCE_IMAGE=FILE           use this image instead of building
// env TABULA_APPLIANCE_ACCEL=kvm            faster, where /dev/kvm works
// Needs root (the build), qemu-system-x86_64, qemu-img, qemu-io, iscsi-inq,
// mkfs.vfat and mcopy. Keeps the run directory (console.log) when a step fails.
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { describeRun, runBounded } from '../support/bounded-run.js';
import { freeLoopbackPort, repoRoot } from '../support/process.js';
import { log } from '../../src/util/log.js';
import { ApplianceVm } from './appliance-vm.js';

const MiB = 1024 * 1024;
const BUILD_TIMEOUT_MS = 45 * 60_000;
/** First boot under TCG on a busy two-core machine takes several minutes. */
const BOOT_TIMEOUT_MS = 15 * 60_000;
const IO_TIMEOUT_MS = 5 * 60_000;
const READY = /tabula: ready: all-in-one serving (iscsi:\/\/[^\s,]+)/;
const IQN = 'iqn.2026-11.org.tabula:disk0';
/** Where the second pattern goes: far from the first, inside the 256 MiB disk0. */
const PATTERN_OFFSET = 100 * MiB;
const PATTERN_BYTE = 0x5a;

type DiskRole = 'data' | 'container';

function diskRole(): DiskRole {
  const v = process.env.TABULA_APPLIANCE_TEST_DISK ?? 'data';
  if (v !== 'data' && v !== 'container') throw new Error(`TABULA_APPLIANCE_TEST_DISK=${v}: use data or container`);
  return v;
}

function configFor(role: DiskRole): string {
  const disk = role === 'data' ? 'data-device: /dev/disk/by-id/virtio-tabula-data' : 'containers-init:\n  - device: /dev/disk/by-id/virtio-tabula-container';
  return `# written by the appliance test\nrole: all-in-one\n${disk}\nall-in-one:\n  size: 256MiB\nagent:\n  portals: [0.0.0.0:3260]\n`;
}

async function must(cmd: string, args: string[], timeoutMs = IO_TIMEOUT_MS): Promise<string> {
  const r = await runBounded(cmd, args, { timeoutMs });
  if (r.exitCode !== 0) throw new Error(describeRun(r));
  return r.stdout + r.stderr;
}

/** iscsi-inq until it answers (the portal comes up after the guest boots). */
async function waitForLun(url: string, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < until) {
    const r = await runBounded('iscsi-inq', [url], { timeoutMs: 60_000 });
    if (r.exitCode === 0 && /DIRECT_ACCESS/.test(r.stdout)) return;
    last = describeRun(r);
    await new Promise((res) => setTimeout(res, 3000));
  }
  throw new Error(`LUN ${url} not reachable within ${timeoutMs / 1000} s: ${last}`);
}

/** Reads `length` bytes at 0 with qemu-img dd (a separate initiator from the writer). */
async function readHead(url: string, length: number, file: string): Promise<Buffer> {
  rmSync(file, { force: true });
  await must('qemu-img', ['dd', '-f', 'raw', '-O', 'raw', `if=${url}`, `of=${file}`, 'bs=1M', `count=${length / MiB}`]);
  return readFileSync(file);
}

async function checkPattern(url: string): Promise<void> {
  const out = await must('qemu-io', ['-f', 'raw', '-c', `read -P ${PATTERN_BYTE} ${PATTERN_OFFSET} ${MiB}`, url]);
  expect(out).to.not.match(/Pattern verification failed|error/i);
  expect(out).to.match(/read 1048576\/1048576 bytes/);
}

describe('appliance image: all-in-one node under qemu', function () {
  const enabled = process.env.TABULA_APPLIANCE_TEST === '1';
  let image = process.env.TABULA_APPLIANCE_IMAGE ?? join(repoRoot(), '.cache', 'appliance', 'tabula-appliance.raw');
  const timings: Record<string, number> = {};

  before(async function () {
    if (!enabled) {
      // Twenty minutes of emulation: run only when asked (npm run test:appliance).
      this.skip();
    }
    this.timeout(BUILD_TIMEOUT_MS + 60_000);
    if (process.env.TABULA_APPLIANCE_IMAGE) return;
    if (process.getuid?.() !== 0) throw new Error('building the appliance needs root (or give TABULA_APPLIANCE_IMAGE)');
    const r = await runBounded('bash', [join(repoRoot(), 'appliance', 'build.sh')], { timeoutMs: BUILD_TIMEOUT_MS });
    for (const line of r.stdout.split('\n')) if (/^\s{3}\S.*\d s$|^== |^appliance:/.test(line)) log.info(`appliance build: ${line.trim()}`);
    if (r.exitCode !== 0) throw new Error(`appliance/build.sh failed: ${describeRun(r)}`);
    timings.buildMs = r.durationMs;
    image = join(repoRoot(), '.cache', 'appliance', 'tabula-appliance.raw');
  });

  it('serves a LUN over iSCSI from the host, and its data survives a reboot', async function () {
    this.timeout(BOOT_TIMEOUT_MS * 2 + IO_TIMEOUT_MS * 4);
    const role = diskRole();
    const runDir = mkdtempSync(join(tmpdir(), 'tabula-appliance-'));
    const port = await freeLoopbackPort();
    const url = `iscsi://127.0.0.1:${port}/${IQN}/0`;
    const accel = process.env.TABULA_APPLIANCE_ACCEL === 'kvm' ? 'kvm' : 'tcg';
    const vm = await ApplianceVm.start({
      image,
      runDir,
      config: configFor(role),
      portalPort: port,
      secondDiskSerial: role === 'data' ? 'tabula-data' : 'tabula-container',
      secondDiskBytes: 2048 * MiB,
      timeoutMs: BOOT_TIMEOUT_MS * 2 + IO_TIMEOUT_MS * 4,
      memoryMiB: 1024,
      accel,
    });
    let ok = false;
    try {
      // First boot: seed config, first-boot disk preparation, tabula up.
      const ready1 = await vm.waitForConsole(READY, BOOT_TIMEOUT_MS);
      timings.firstBootMs = ready1.atMs;
      expect(ready1.match[1]).to.equal(`iscsi://0.0.0.0:3260/${IQN}/0`);
      await waitForLun(url, IO_TIMEOUT_MS);

      // The second disk is where the node keeps what it serves.
      const agent = await vm.agent(120_000);
      if (role === 'data') {
        const r = await agent.exec('findmnt -n -o SOURCE /var/lib/tabula; readlink -f /dev/disk/by-id/virtio-tabula-data; blkid -o value -s LABEL /dev/disk/by-id/virtio-tabula-data');
        const [mounted, device, label] = r.stdout.trim().split('\n');
        expect(mounted, `data-dir mount (${r.stdout}${r.stderr})`).to.equal(device);
        expect(label).to.equal('tabula-data');
      } else {
        const r = await agent.exec('ls -l /var/lib/tabula/containers/; tabula container ls --json', 180_000);
        expect(r.exitCode, r.stderr).to.equal(0);
        const list = JSON.parse(r.stdout.slice(r.stdout.indexOf('['))) as { path: string }[];
        expect(list.map((c) => c.path)).to.satisfy((ps: string[]) => ps.some((p) => p.includes('/containers/dev-')));
      }
      agent.close();

      // Write: 4 MiB of random bytes at 0 (qemu-img), a pattern at 100 MiB (qemu-io).
      const data = randomBytes(4 * MiB);
      const dataFile = join(runDir, 'data.bin');
      writeFileSync(dataFile, data);
      await must('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', dataFile, url]);
      await must('qemu-io', ['-f', 'raw', '-c', `write -P ${PATTERN_BYTE} ${PATTERN_OFFSET} ${MiB}`, url]);
      expect((await readHead(url, 4 * MiB, join(runDir, 'read1.bin'))).equals(data), 'read back before reboot').to.equal(true);
      await checkPattern(url);

      // Reboot through the guest agent (what a hypervisor's "reboot" button does).
      const before = vm.lineCount - 1;
      const rebootAt = Date.now() - vm.started;
      const a2 = await vm.agent(60_000);
      a2.shutdown('reboot');
      a2.close();
      await vm.waitForConsole(/reboot: (Restarting system|machine restart)/, 5 * 60_000, before);
      const ready2 = await vm.waitForConsole(READY, BOOT_TIMEOUT_MS, before);
      timings.rebootMs = ready2.atMs - rebootAt;
      await waitForLun(url, IO_TIMEOUT_MS);

      expect((await readHead(url, 4 * MiB, join(runDir, 'read2.bin'))).equals(data), 'read back after reboot').to.equal(true);
      await checkPattern(url);
      ok = true;
    } finally {
      await vm.stop().catch(() => vm.kill());
      const dir = join(repoRoot(), '.cache', 'appliance');
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'last-test-timings.json'), JSON.stringify({ accel, role, ok, ...timings }, null, 2) + '\n');
      log.info(`appliance test (${accel}, second disk as ${role}): ${JSON.stringify(timings)}`);
      if (ok) rmSync(runDir, { recursive: true, force: true });
      else log.error(`appliance test failed: console log and disks kept in ${runDir}`);
    }
  });
});
