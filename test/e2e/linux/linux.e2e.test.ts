// The Linux kernel's iSCSI initiator (iscsi_tcp + open-iscsi) against our
// target, in a qemu guest under TCG. One guest boot per scenario, each bounded
// in time; a failing scenario keeps the guest console log and the target log
// (for the controller-and-agents scenarios: the cluster dir with every
// daemon's log, the database and the container).
//
//   npx mocha test/e2e/linux/linux.e2e.test.ts
// env TABULA_E2E_TARGET=tgtd     run the `target` scenarios against tgtd (proves the harness; cluster scenarios are skipped)
// env TABULA_E2E_SCENARIOS=a,b   run only these scenarios ("ci": the ones marked for CI in scenarios.ts)
// env TABULA_E2E_CACHE=DIR       guest image cache (default .cache/e2e-linux)
// env TABULA_E2E_KEEP=1          keep the console log and target logs of passing scenarios too
import { mkdtempSync, rmSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import type { RunningTarget } from '../../support/target-process.js';
import { log } from '../../../src/util/log.js';
import { buildGuestImage, ensureQemu, defaultCacheDir, CLUSTER_CONTENT, type GuestImage } from './guest-image.js';
import { runGuest, type GuestRunResult } from './run-guest.js';
import { SCENARIOS, type ClusterScenario, type TargetScenario } from './scenarios.js';
import { ClusterTarget } from './cluster-target.js';
import { e2eTargetKind, e2eTargetStarter } from './targets.js';

interface Timing {
  scenario: string;
  passed: boolean;
  /** qemu start to the guest's /init. */
  bootMs: number | null;
  /** qemu start to qemu exit. */
  guestMs: number;
  /** Target start + guest + target stop. */
  totalMs: number;
  steps: Record<string, number>;
}

function tail(file: string, lines: number): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no console log)';
  }
}

/** env TABULA_E2E_KEEP=1: keep console logs and target/cluster dirs of passing scenarios too. */
const keepAll = process.env.TABULA_E2E_KEEP === '1';

const only = (process.env.TABULA_E2E_SCENARIOS ?? '')
  .split(',')
  .map((s) => s.trim())
  .filter((s) => s !== '');

describe('Linux kernel initiator in a qemu guest (TCG)', function () {
  const kind = e2eTargetKind();
  const start = e2eTargetStarter(kind);
  const timings: Timing[] = [];
  const selected = SCENARIOS.filter((sc) => only.length === 0 || only.includes(sc.name) || (only.includes('ci') && sc.ci === true));
  let image: GuestImage | undefined;
  let clusterImage: GuestImage | undefined;
  let qemu: string;

  before(async function () {
    // First run on a machine: apt-get download (~80 MB) and unpack of the kernel package.
    this.timeout(20 * 60_000);
    const progress = (m: string): void => {
      log.info(`e2e guest: ${m}`);
    };
    qemu = await ensureQemu(progress);
    if (selected.some((sc) => sc.kind === 'target')) image = await buildGuestImage({ progress });
    if (kind === 'tabula' && selected.some((sc) => sc.kind === 'cluster')) clusterImage = await buildGuestImage({ content: CLUSTER_CONTENT, progress });
  });

  const record = (sc: { name: string }, started: number, result: GuestRunResult | undefined): void => {
    if (!result) return;
    const steps: Record<string, number> = {};
    for (const s of result.steps) {
      // A step seen again (the guest may ask the host the same thing twice) gets #2, #3, ...
      let name = s.name;
      for (let i = 2; name in steps; i++) name = `${s.name}#${i}`;
      steps[name] = s.atMs;
    }
    timings.push({ scenario: sc.name, passed: result.passed, bootMs: result.bootMs, guestMs: result.totalMs, totalMs: Date.now() - started, steps });
  };

  const failWith = (sc: { name: string }, r: GuestRunResult, where: string): never =>
    expect.fail(
      `scenario ${sc.name} failed: ${r.reason}\n` +
        `guest console kept in ${r.consoleLog}; ${where}\n` +
        `--- console (tail) ---\n${tail(r.consoleLog, 60)}`,
    );

  after(function () {
    if (timings.length === 0) return;
    const file = join(defaultCacheDir(), 'last-timings.json');
    mkdirSync(defaultCacheDir(), { recursive: true });
    writeFileSync(file, JSON.stringify({ target: kind, kernel: (image ?? clusterImage)?.kernelRelease, timings }, null, 2) + '\n');
    for (const t of timings) {
      log.info(
        `e2e linux ${t.scenario}: ${t.passed ? 'pass' : 'FAIL'}, boot ${t.bootMs ?? '-'} ms, guest ${t.guestMs} ms, total ${t.totalMs} ms`,
        { steps: t.steps },
      );
    }
  });

  const runTarget = async (sc: TargetScenario): Promise<void> => {
    const started = Date.now();
    const runDir = mkdtempSync(join(tmpdir(), `tabula-e2e-linux-${sc.name}-`));
    let target: RunningTarget | undefined;
    let result: GuestRunResult | undefined;
    try {
      target = await start({ ...sc.target, label: `e2e-linux-${sc.name}` });
      result = await runGuest({
        image: image as GuestImage,
        qemu,
        runDir,
        timeoutMs: sc.timeoutMs,
        scenario: {
          ...sc.guest,
          name: sc.name,
          portals: [{ host: target.host, port: target.port }],
          iqn: target.iqn,
          lun: target.lun,
          sizeBytes: target.sizeBytes,
        },
      });
    } finally {
      const passed = result?.passed === true;
      await target?.stop({ keepLogs: !passed || keepAll });
      if (passed && !keepAll) rmSync(runDir, { recursive: true, force: true });
      record(sc, started, result);
    }
    if (!result.passed) failWith(sc, result, `target log in ${target.logFile}`);
  };

  const runCluster = async (sc: ClusterScenario): Promise<void> => {
    const started = Date.now();
    const runDir = mkdtempSync(join(tmpdir(), `tabula-e2e-linux-${sc.name}-`));
    let target: ClusterTarget | undefined;
    let result: GuestRunResult | undefined;
    try {
      target = await ClusterTarget.start(sc.name, sc.cluster);
      const t = target;
      result = await runGuest({
        image: clusterImage as GuestImage,
        qemu,
        runDir,
        timeoutMs: sc.timeoutMs,
        scenario: { ...sc.guest, name: sc.name, portals: t.portals, iqn: t.iqn, lun: 0, sizeBytes: sc.cluster.vdiskSizeBytes },
        onRequest: (words) => t.handle(words),
      });
    } finally {
      const passed = result?.passed === true;
      await target?.stop(!passed || keepAll);
      if (passed && !keepAll) rmSync(runDir, { recursive: true, force: true });
      record(sc, started, result);
    }
    if (!result.passed) failWith(sc, result, `controller and agent logs, database and container in ${target.dir}`);
  };

  for (const sc of selected) {
    it(`${sc.name}: ${sc.title} [${sc.kind === 'cluster' ? 'controller + agents' : kind}]`, async function () {
      // The guest's bound plus target start/stop (a cluster: three tsx processes and the CLI).
      this.timeout(sc.timeoutMs + 180_000);
      if (sc.kind === 'cluster') {
        if (kind !== 'tabula') this.skip();
        await runCluster(sc);
      } else {
        await runTarget(sc);
      }
    });
  }
});
