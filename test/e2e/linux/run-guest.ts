// Boot the end-to-end guest under qemu (TCG: software emulation, no KVM),
// give it one scenario, and read the verdict from its serial console.
//
// Networking is qemu's user-mode stack with restrict=on: the guest can open
// connections only to the guestfwd addresses 10.0.2.100, 10.0.2.101, ... (port
// 3260), each relayed by slirp-relay.mjs to one portal on the host's loopback.
// The scenario travels in a small cpio archive appended to the base initramfs
// (with /init and the workload), so nothing about it is on the kernel command line.
//
// Scenarios that need the host to act in the middle (kill an agent, take a
// snapshot, report a vdisk's allocation) get a second serial port, the guest's
// /dev/ttyS1, joined to a unix socket on the host: the guest writes one
// request line and waits for "OK ..." or "ERR ..." (see host_request in
// guest/workload.sh). Nothing else can reach the host from the guest.
import { createWriteStream, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { gzipSync } from 'node:zlib';
import { spawnBounded, killGroup } from '../../support/bounded-run.js';
import type { ChapCredentials } from '../../support/target-process.js';
import { CpioWriter } from './cpio.js';
import type { GuestImage } from './guest-image.js';

const HERE = dirname(fileURLToPath(import.meta.url));

/** First guest-side portal address; portal i is 10.0.2.(100+i):3260. */
const GUEST_PORTAL_BASE = 100;
const GUEST_PORTAL_PORT = 3260;

export interface HostPortal {
  /** Always a loopback address. */
  host: string;
  port: number;
}

/** Workloads defined in guest/workload.sh as workload_<name>. */
export type GuestWorkload = 'basic' | 'multipath' | 'fstrim' | 'snapshot' | 'alua' | 'persist' | 'storage_outage' | 'mirror_outage';

/**
 * Carries out one request of the guest (its words split on blanks) and
 * resolves with the text of the OK answer; a rejection is answered ERR.
 */
export type HostRequestHandler = (words: string[]) => Promise<string>;

export interface GuestScenario {
  /** Printed in the guest's PASS/FAIL line; letters, digits, '-' and '_'. */
  name: string;
  workload: GuestWorkload;
  /** Portals on the host's loopback; the guest sees them as 10.0.2.100:3260, 10.0.2.101:3260, ... */
  portals: HostPortal[];
  iqn: string;
  lun: number;
  /** LUN size in bytes (a multiple of 1 MiB); the guest checks the disk has exactly this size. */
  sizeBytes: number;
  chap?: ChapCredentials;
  mutualChap?: ChapCredentials;
  /** SendTargets discovery authenticates with the CHAP credentials too. */
  discoveryChap?: boolean;
  /** Ask for CRC32C header and data digests (and check they were negotiated). */
  digests?: boolean;
  /** First check that logins with wrong credentials are refused. */
  negativeAuth?: boolean;
  /** More scenario variables for the workload; names start with TABULA_. */
  env?: Record<string, string>;
}

export interface GuestRunOptions {
  image: GuestImage;
  scenario: GuestScenario;
  /** Directory for console.log, the per-run initrd and the qemu command line. */
  runDir: string;
  /** Hard bound on the whole guest run; qemu is killed after it. */
  timeoutMs: number;
  qemu?: string;
  memoryMiB?: number;
  /** Answers the guest's requests on /dev/ttyS1; without it the guest has no second serial port. */
  onRequest?: HostRequestHandler;
}

export interface GuestStep {
  name: string;
  /** Milliseconds since qemu started, when the host saw the line. */
  atMs: number;
}

export interface GuestRunResult {
  passed: boolean;
  /** The FAIL reason, or why there was no verdict (timeout, qemu exit). */
  reason: string;
  consoleLog: string;
  /** When /init started (the guest printed BOOTED), ms after qemu started; null if never. */
  bootMs: number | null;
  /** From qemu start to qemu exit (or kill). */
  totalMs: number;
  steps: GuestStep[];
  timedOut: boolean;
}

function shellQuote(v: string): string {
  return `'${v.replace(/'/g, `'\\''`)}'`;
}

/** The guest-side address of portal i. */
export function guestPortal(i: number): string {
  return `10.0.2.${GUEST_PORTAL_BASE + i}:${GUEST_PORTAL_PORT}`;
}

/** /tabula/scenario.env: shell assignments read by the guest's /init. */
export function scenarioEnv(s: GuestScenario): string {
  if (!/^[A-Za-z0-9_-]+$/.test(s.name)) throw new Error(`scenario name ${JSON.stringify(s.name)}: use letters, digits, - and _`);
  if (s.sizeBytes % (1 << 20) !== 0) throw new Error(`scenario ${s.name}: size ${s.sizeBytes} is not a multiple of 1 MiB`);
  if (s.mutualChap && !s.chap) throw new Error(`scenario ${s.name}: mutual CHAP needs one-way CHAP too`);
  const vars: Record<string, string> = {
    TABULA_SCENARIO: s.name,
    TABULA_WORKLOAD: s.workload,
    TABULA_PORTALS: s.portals.map((_, i) => guestPortal(i)).join(' '),
    TABULA_IQN: s.iqn,
    TABULA_LUN: String(s.lun),
    TABULA_SIZE: String(s.sizeBytes),
    TABULA_CHAP_USER: s.chap?.user ?? '',
    TABULA_CHAP_SECRET: s.chap?.secret ?? '',
    TABULA_MUTUAL_USER: s.mutualChap?.user ?? '',
    TABULA_MUTUAL_SECRET: s.mutualChap?.secret ?? '',
    TABULA_DISCOVERY_CHAP: s.discoveryChap ? '1' : '0',
    TABULA_DIGEST: s.digests ? 'CRC32C' : 'None',
    TABULA_NEGATIVE_AUTH: s.negativeAuth ? '1' : '0',
  };
  for (const [k, v] of Object.entries(s.env ?? {})) {
    if (!/^TABULA_[A-Z0-9_]+$/.test(k) || k in vars) throw new Error(`scenario ${s.name}: bad or duplicate variable ${k}`);
    vars[k] = v;
  }
  return Object.entries(vars).map(([k, v]) => `${k}=${shellQuote(v)}`).join('\n') + '\n';
}

/** Base initramfs + gzip cpio with /init, the workload and the scenario (the kernel unpacks both in turn). */
function writeRunInitrd(image: GuestImage, scenario: GuestScenario, file: string): void {
  const overlay = new CpioWriter()
    .file('init', readFileSync(join(HERE, 'guest', 'init.sh')), 0o755)
    .file('tabula/workload.sh', readFileSync(join(HERE, 'guest', 'workload.sh')), 0o644)
    .file('tabula/scenario.env', Buffer.from(scenarioEnv(scenario)), 0o600)
    .finish();
  writeFileSync(file, Buffer.concat([readFileSync(image.initrd), gzipSync(overlay)]));
}

/** The qemu command line (without the program name). */
export function qemuArgs(image: GuestImage, initrd: string, scenario: GuestScenario, memoryMiB: number, controlSocket?: string): string[] {
  const relay = join(HERE, 'slirp-relay.mjs');
  const fwds = scenario.portals.map((p, i) => {
    if (!/^127\./.test(p.host)) throw new Error(`portal ${p.host}:${p.port} is not on loopback`);
    // guestfwd's cmd: is split like a shell would; commas must be doubled for qemu's option parser.
    const cmd = `${shellQuote(process.execPath)} --no-warnings ${shellQuote(relay)} ${p.host} ${p.port}`.replace(/,/g, ',,');
    return `guestfwd=tcp:${guestPortal(i)}-cmd:${cmd}`;
  });
  return [
    '-machine', 'pc,accel=tcg',
    '-cpu', 'max',
    '-smp', '1',
    '-m', String(memoryMiB),
    '-nodefaults',
    '-no-user-config',
    '-display', 'none',
    '-serial', 'stdio',
    // ttyS1: the request channel (a unix socket qemu listens on; wait=off: the guest boots before we connect).
    ...(controlSocket !== undefined ? ['-chardev', `socket,id=ctl,path=${controlSocket.replace(/,/g, ',,')},server=on,wait=off`, '-serial', 'chardev:ctl'] : []),
    '-monitor', 'none',
    '-no-reboot',
    '-kernel', image.kernel,
    '-initrd', initrd,
    // panic=-1 + -no-reboot: a guest panic ends qemu at once instead of hanging.
    '-append', 'console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init',
    '-netdev', ['user', 'id=n0', 'restrict=on', 'net=10.0.2.0/24', ...fwds].join(','),
    // No option ROM: the guest boots with -kernel, never from the network.
    '-device', 'virtio-net-pci,netdev=n0,romfile=',
  ];
}

const VERDICT = /^TABULA-E2E (PASS|FAIL) ([A-Za-z0-9_-]+)(?:: (.*))?$/;

/** Connects to qemu's request socket (retrying until qemu has made it) and serves the guest's requests one line at a time. */
async function serveRequests(
  path: string,
  handler: HostRequestHandler,
  note: (line: string) => void,
  alive: () => boolean,
): Promise<Socket | null> {
  const deadline = Date.now() + 60_000;
  let sock: Socket | null = null;
  while (sock === null && alive() && Date.now() < deadline) {
    if (existsSync(path)) {
      sock = await new Promise<Socket | null>((resolve) => {
        const s = connect(path);
        s.once('connect', () => resolve(s));
        s.once('error', () => resolve(null));
      });
    }
    if (sock === null) await new Promise((r) => setTimeout(r, 100));
  }
  if (sock === null) {
    note(`# host: could not connect to the request socket ${path}`);
    return null;
  }
  const s = sock;
  s.on('error', () => undefined);
  const lines = createInterface({ input: s, crlfDelay: Infinity });
  // One request at a time, in order: the guest waits for each answer.
  let queue = Promise.resolve();
  lines.on('line', (raw) => {
    const line = raw.replace(/\r$/, '').trim();
    if (line === '') return;
    queue = queue.then(async () => {
      note(`# host: request: ${line}`);
      let answer: string;
      try {
        answer = `OK ${await handler(line.split(/\s+/))}`;
      } catch (err) {
        answer = `ERR ${(err as Error).message.replace(/\s+/g, ' ')}`;
      }
      note(`# host: answer: ${answer}`);
      if (!s.destroyed) s.write(answer.replace(/\n/g, ' ') + '\n');
    });
  });
  return s;
}
const STEP = /^TABULA-E2E (BOOTED|STEP (\S+))/;

/** Boot the guest for one scenario and wait for its verdict, its poweroff, or the time limit. */
export async function runGuest(opts: GuestRunOptions): Promise<GuestRunResult> {
  mkdirSync(opts.runDir, { recursive: true });
  const initrd = join(opts.runDir, 'initrd.img');
  writeRunInitrd(opts.image, opts.scenario, initrd);
  const qemu = opts.qemu ?? 'qemu-system-x86_64';
  const controlSocket = opts.onRequest !== undefined ? join(opts.runDir, 'ctl.sock') : undefined;
  const args = qemuArgs(opts.image, initrd, opts.scenario, opts.memoryMiB ?? 512, controlSocket);
  writeFileSync(join(opts.runDir, 'command.txt'), [qemu, ...args].map(shellQuote).join(' ') + '\n');
  const consoleLog = join(opts.runDir, 'console.log');
  const out = createWriteStream(consoleLog);

  const started = Date.now();
  const child = spawnBounded(qemu, args, opts.timeoutMs, ['ignore', 'pipe', 'pipe']);
  const steps: GuestStep[] = [];
  let bootMs: number | null = null;
  let verdict: { passed: boolean; reason: string } | null = null;
  let timedOut = false;
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    stderr += c.toString('utf8');
    out.write(c);
  });
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream, crlfDelay: Infinity });
  let control: Promise<Socket | null> = Promise.resolve(null);
  if (controlSocket !== undefined && opts.onRequest !== undefined) {
    const handler = opts.onRequest;
    control = serveRequests(
      controlSocket,
      handler,
      (line) => {
        out.write(line + '\n');
        const req = /^# host: request: (\S+)/.exec(line);
        if (req) steps.push({ name: `host-${req[1]}`, atMs: Date.now() - started });
      },
      () => child.exitCode === null && child.signalCode === null,
    );
  }
  let afterVerdict: NodeJS.Timeout | undefined;
  lines.on('line', (raw) => {
    const line = raw.replace(/\r$/, '');
    out.write(line + '\n');
    const at = Date.now() - started;
    const s = STEP.exec(line);
    if (s) {
      if (s[1] === 'BOOTED') bootMs = at;
      else steps.push({ name: s[2], atMs: at });
      return;
    }
    const v = VERDICT.exec(line);
    if (v && verdict === null) {
      verdict =
        v[2] !== opts.scenario.name
          ? { passed: false, reason: `verdict for scenario ${v[2]}, expected ${opts.scenario.name}` }
          : { passed: v[1] === 'PASS', reason: v[3] ?? '' };
      // The guest powers off right after its verdict (the FAIL path prints diagnostics first).
      afterVerdict = setTimeout(() => killGroup(child.pid as number, 'SIGKILL'), 30_000);
    }
  });
  // spawnBounded's `timeout` stops qemu at the limit; this is the backstop if that fails.
  const hard = setTimeout(() => {
    timedOut = true;
    killGroup(child.pid as number, 'SIGKILL');
  }, opts.timeoutMs + 10_000);
  const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('error', (err) => {
      stderr += `cannot start ${qemu}: ${err.message}\n`;
      resolve({ code: null, signal: null });
    });
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  clearTimeout(hard);
  if (afterVerdict) clearTimeout(afterVerdict);
  (await control)?.destroy();
  const totalMs = Date.now() - started;
  await new Promise<void>((r) => out.end(r));
  // `timeout` exits 124 when it stopped qemu at the limit.
  if (exit.code === 124 || exit.code === 137) timedOut = true;
  const v = verdict as { passed: boolean; reason: string } | null;
  if (v !== null) return { ...v, consoleLog, bootMs, totalMs, steps, timedOut: false };
  const how = timedOut
    ? `no verdict within ${opts.timeoutMs} ms (qemu killed)`
    : `qemu exited (${exit.signal ?? `code ${exit.code}`}) without a verdict${stderr.trim() ? `: ${stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}`;
  const last = steps.length > 0 ? `; last step: ${steps[steps.length - 1].name}` : bootMs === null ? '; the guest never reached /init' : '';
  return { passed: false, reason: how + last, consoleLog, bootMs, totalMs, steps, timedOut };
}
