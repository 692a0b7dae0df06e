// The Linux kernel's iSCSI initiator (iscsi_tcp + open-iscsi) against our
// target, in a qemu guest under TCG. One guest boot per scenario, each bounded
// in time; a failing scenario keeps the guest console log and the target log.
//
//   npx mocha test/e2e/linux/linux.e2e.test.ts
// env TABULA_E2E_TARGET=tgtd     run against tgtd (proves the harness); default: Tabula
// env TABULA_E2E_SCENARIOS=a,b   run only these scenarios
// env TABULA_E2E_CACHE=DIR       guest image cache (default .cache/e2e-linux)
import { mkdtempSync, rmSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import type { RunningTarget } from '../../support/target-process.js';
import { log } from '../../../src/util/log.js';
import { buildGuestImage, ensureQemu, defaultCacheDir, type GuestImage } from './guest-image.js';
import { runGuest, type GuestRunResult } from './run-guest.js';
import { SCENARIOS } from './scenarios.js';
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

const only = (process.env.TABULA_E2E_SCENARIOS ?? '')
  .split(',')
  .map((s) => s.trim())
  .filter((s) => s !== '');

describe('Linux kernel initiator in a qemu guest (TCG)', function () {
  const kind = e2eTargetKind();
  const start = e2eTargetStarter(kind);
  const timings: Timing[] = [];
  let image: GuestImage;
  let qemu: string;

  before(async function () {
    // First run on a machine: apt-get download (~75 MB) and unpack of the kernel package.
    this.timeout(20 * 60_000);
    const progress = (m: string): void => {
      log.info(`e2e guest: ${m}`);
    };
    qemu = await ensureQemu(progress);
    image = await buildGuestImage({ progress });
  });

  after(function () {
    if (timings.length === 0) return;
    const file = join(defaultCacheDir(), 'last-timings.json');
    mkdirSync(defaultCacheDir(), { recursive: true });
    writeFileSync(file, JSON.stringify({ target: kind, kernel: image.kernelRelease, timings }, null, 2) + '\n');
    for (const t of timings) {
      log.info(
        `e2e linux ${t.scenario}: ${t.passed ? 'pass' : 'FAIL'}, boot ${t.bootMs ?? '-'} ms, guest ${t.guestMs} ms, total ${t.totalMs} ms`,
        { steps: t.steps },
      );
    }
  });

  for (const sc of SCENARIOS) {
    if (only.length > 0 && !only.includes(sc.name)) continue;
    it(`${sc.name}: ${sc.title} [${kind}]`, async function () {
      this.timeout(sc.timeoutMs + 90_000);
      const started = Date.now();
      const runDir = mkdtempSync(join(tmpdir(), `tabula-e2e-linux-${sc.name}-`));
      let target: RunningTarget | undefined;
      let result: GuestRunResult | undefined;
      try {
        target = await start({ ...sc.target, label: `e2e-linux-${sc.name}` });
        result = await runGuest({
          image,
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
        await target?.stop({ keepLogs: !passed });
        if (passed) rmSync(runDir, { recursive: true, force: true });
        if (result) {
          const steps: Record<string, number> = {};
          for (const s of result.steps) steps[s.name] = s.atMs;
          timings.push({ scenario: sc.name, passed, bootMs: result.bootMs, guestMs: result.totalMs, totalMs: Date.now() - started, steps });
        }
      }
      const r = result;
      if (!r.passed) {
        expect.fail(
          `scenario ${sc.name} failed: ${r.reason}\n` +
            `guest console kept in ${r.consoleLog}; target log in ${target.logFile}\n` +
            `--- console (tail) ---\n${tail(r.consoleLog, 60)}`,
        );
      }
    });
  }
});
