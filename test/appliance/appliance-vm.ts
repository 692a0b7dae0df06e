// Boots the appliance image under qemu as a host would run it: the image as
// the first disk (through a throwaway qcow2 overlay, so the built image stays
// pristine), a second blank virtual disk, a seed disk (FAT, label TABULA-SEED)
// carrying tabula.yaml, user-mode networking with only the iSCSI portal
// forwarded to a host loopback port, and the guest agent's virtio-serial port
// on a unix socket. The serial console is kept in console.log.
import { createWriteStream, mkdirSync, writeFileSync, closeSync, openSync, ftruncateSync, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { ChildProcess } from 'node:child_process';
import { describeRun, killGroup, runBounded, spawnBounded } from '../support/bounded-run.js';
import { GuestAgent } from './guest-agent.js';

export interface ApplianceVmOptions {
  /** The built raw image (left untouched). */
  image: string;
  runDir: string;
  /** tabula.yaml for the seed disk. */
  config: string;
  /** Host loopback port forwarded to the guest's 3260. */
  portalPort: number;
  /** Serial of the second disk: the guest sees /dev/disk/by-id/virtio-<serial>. */
  secondDiskSerial: string;
  secondDiskBytes: number;
  /** Whole run bound: qemu is killed after it. */
  timeoutMs: number;
  memoryMiB?: number;
  /** tcg (default, works anywhere) or kvm. */
  accel?: 'tcg' | 'kvm';
  qemu?: string;
}

export interface ConsoleMatch {
  line: string;
  match: RegExpExecArray;
  /** ms since qemu started. */
  atMs: number;
  /** Index of the line, to search after it next time. */
  index: number;
}

async function must(cmd: string, args: string[], timeoutMs = 120_000): Promise<void> {
  const r = await runBounded(cmd, args, { timeoutMs });
  if (r.exitCode !== 0) throw new Error(`appliance vm: ${describeRun(r)}`);
}

export class ApplianceVm {
  readonly consoleLog: string;
  readonly agentSocket: string;
  readonly started = Date.now();
  private readonly lines: { text: string; atMs: number }[] = [];
  private waiters: (() => void)[] = [];
  private exited: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private readonly exitPromise: Promise<void>;
  private stderr = '';

  private constructor(
    private readonly child: ChildProcess,
    runDir: string,
    private readonly out: WriteStream,
  ) {
    this.consoleLog = join(runDir, 'console.log');
    this.agentSocket = join(runDir, 'qga.sock');
    child.stderr?.on('data', (c: Buffer) => {
      this.stderr += c.toString('utf8');
      out.write(c);
    });
    const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream, crlfDelay: Infinity });
    rl.on('line', (raw) => {
      // Console lines carry ANSI colour codes and carriage returns from systemd's status display.
      const text = raw.replace(/\r/g, '').replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
      out.write(text + '\n');
      this.lines.push({ text, atMs: Date.now() - this.started });
      this.wake();
    });
    this.exitPromise = new Promise((resolve) => {
      child.once('close', (code, signal) => {
        this.exited = { code, signal };
        this.wake();
        resolve();
      });
      child.once('error', (e) => {
        this.stderr += `cannot start qemu: ${e.message}\n`;
        this.exited = { code: null, signal: null };
        this.wake();
        resolve();
      });
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  static async start(o: ApplianceVmOptions): Promise<ApplianceVm> {
    mkdirSync(o.runDir, { recursive: true });
    const overlay = join(o.runDir, 'root.qcow2');
    await must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', o.image, '-F', 'raw', overlay]);
    const second = join(o.runDir, 'second.raw');
    const fd = openSync(second, 'w');
    ftruncateSync(fd, o.secondDiskBytes);
    closeSync(fd);
    const seed = join(o.runDir, 'seed.vfat');
    const yaml = join(o.runDir, 'tabula.yaml');
    writeFileSync(yaml, o.config);
    await must('mkfs.vfat', ['-n', 'TABULA-SEED', '-C', seed, '1024']);
    await must('mcopy', ['-i', seed, yaml, '::/tabula.yaml']);

    const accel = o.accel ?? 'tcg';
    const args = [
      '-machine', `pc,accel=${accel}`,
      '-cpu', accel === 'kvm' ? 'host' : 'max',
      '-smp', '2',
      '-m', String(o.memoryMiB ?? 1024),
      '-nodefaults', '-no-user-config',
      '-display', 'none',
      '-serial', 'stdio',
      '-monitor', 'none',
      '-drive', `file=${overlay},if=none,id=root,format=qcow2`,
      '-device', 'virtio-blk-pci,drive=root,bootindex=0',
      '-drive', `file=${second},if=none,id=second,format=raw,cache=none,aio=threads`,
      '-device', `virtio-blk-pci,drive=second,serial=${o.secondDiskSerial}`,
      '-drive', `file=${seed},if=none,id=seed,format=raw,readonly=on`,
      '-device', 'virtio-blk-pci,drive=seed,serial=tabula-seed',
      // restrict=on: the guest reaches nothing outside; only the portal comes in.
      '-netdev', `user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:${o.portalPort}-:3260`,
      '-device', 'virtio-net-pci,netdev=n0,romfile=',
      '-chardev', `socket,id=qga,path=${join(o.runDir, 'qga.sock')},server=on,wait=off`,
      '-device', 'virtio-serial-pci',
      '-device', 'virtserialport,chardev=qga,name=org.qemu.guest_agent.0',
    ];
    const qemu = o.qemu ?? 'qemu-system-x86_64';
    writeFileSync(join(o.runDir, 'command.txt'), [qemu, ...args].join(' ') + '\n');
    const out = createWriteStream(join(o.runDir, 'console.log'));
    const child = spawnBounded(qemu, args, o.timeoutMs, ['ignore', 'pipe', 'pipe']);
    return new ApplianceVm(child, o.runDir, out);
  }

  /** First console line after `after` matching re; rejects at the deadline or when qemu exits. */
  async waitForConsole(re: RegExp, timeoutMs: number, after = -1): Promise<ConsoleMatch> {
    const until = Date.now() + timeoutMs;
    let next = after + 1;
    for (;;) {
      for (; next < this.lines.length; next++) {
        const l = this.lines[next]!;
        const m = re.exec(l.text);
        if (m) return { line: l.text, match: m, atMs: l.atMs, index: next };
      }
      if (this.exited) throw new Error(`qemu exited (${this.exited.signal ?? `code ${this.exited.code}`}) before the console showed ${re}${this.stderr ? `: ${this.stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}`);
      const left = until - Date.now();
      if (left <= 0) throw new Error(`the console did not show ${re} within ${timeoutMs / 1000} s`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 5000));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  get lineCount(): number {
    return this.lines.length;
  }

  async agent(timeoutMs: number): Promise<GuestAgent> {
    const a = await GuestAgent.connect(this.agentSocket);
    try {
      await a.sync(timeoutMs);
      return a;
    } catch (e) {
      a.close();
      throw e;
    }
  }

  /** Power down through the guest agent; kill qemu if it does not stop in time. */
  async stop(graceMs = 120_000): Promise<void> {
    if (!this.exited) {
      try {
        const a = await this.agent(20_000);
        a.shutdown('powerdown');
        a.close();
      } catch {
        // no agent: the kill below
      }
      const t = setTimeout(() => killGroup(this.child.pid as number, 'SIGKILL'), graceMs);
      await this.exitPromise;
      clearTimeout(t);
    }
    await new Promise<void>((r) => this.out.end(r));
  }

  kill(): void {
    if (!this.exited) killGroup(this.child.pid as number, 'SIGKILL');
  }
}
