import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeController } from './fake-controller.js';
import { CONTAINER_ID, makeContainer } from './rig.js';

const RUNNER = new URL('./cli-runner.ts', import.meta.url).pathname;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `tabula agent ARGS`; `whenOut` is called on each stdout chunk and may send signals. Killed after `ms`. */
function run(args: string[], ms: number, whenOut?: (out: string, kill: (s: NodeJS.Signals) => void) => void): Promise<Run> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, ['--import', 'tsx', RUNNER, 'agent', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => p.kill('SIGKILL'), ms);
    p.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
      whenOut?.(stdout, (s) => p.kill(s));
    });
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    p.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

describe('tabula agent (command line)', function () {
  this.timeout(30_000);
  let dir: string;
  let ctl: FakeController;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-agentcli-'));
    await makeContainer(dir);
    ctl = await FakeController.start();
  });

  afterEach(async () => {
    await ctl.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('prints one ready line, registers, and exits 0 on SIGTERM', async () => {
    let registered = false;
    const accepted = ctl.accept({}, 20_000).then((a) => {
      registered = a.register.agentName === 'cli-1' && a.register.containers.some((c) => c.id === CONTAINER_ID);
    });
    const r = await run(
      ['--controller', ctl.address, '--name', 'cli-1', '--portal', '127.0.0.1:0', '--containers', join(dir, '*.img'), '--hold-timeout', '2'],
      25_000,
      (out, kill) => {
        if (out.includes('\n')) void accepted.then(() => kill('SIGTERM'));
      },
    );
    expect(r.stdout).to.match(/^agent cli-1 serving on 127\.0\.0\.1:\d+\n$/);
    expect(registered).to.equal(true);
    expect(r.code).to.equal(0);
  });

  it('exits non-zero with a one-line reason for missing or bad arguments', async () => {
    const missing = await run(['--name', 'x'], 20_000);
    expect(missing.code).to.not.equal(0);
    expect(missing.stderr.trim().split('\n')).to.deep.equal(['tabula: missing --controller HOST:PORT']);
    const badHold = await run(['--controller', ctl.address, '--name', 'x', '--portal', '127.0.0.1:0', '--containers', 'x', '--hold-timeout', '-1'], 20_000);
    expect(badHold.code).to.not.equal(0);
    expect(badHold.stderr).to.match(/--hold-timeout -1 out of range/);
    const badPortal = await run(['--controller', ctl.address, '--name', 'x', '--portal', 'nonsense:port', '--containers', 'x'], 20_000);
    expect(badPortal.code).to.not.equal(0);
    expect(badPortal.stderr).to.match(/bad address 'nonsense:port'/);
  });
});
