import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const CHILD = fileURLToPath(new URL('./fixtures/signal-child.ts', import.meta.url));

describe('daemon: runUntilSignal', () => {
  it('a second SIGTERM during the stop does not kill the process half-way (timeout(1) signals the child, then its group)', async function () {
    this.timeout(30_000);
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const killer = setTimeout(() => child.kill('SIGKILL'), 25_000);
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', () => {
          if (out.includes('ready')) resolve();
        });
        child.once('exit', () => reject(new Error(`exited before it was ready: ${out}`)));
      });
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
        child.once('exit', (code, signal) => resolve({ code, signal })),
      );
      child.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 100));
      child.kill('SIGTERM');
      const { code, signal } = await exited;
      expect({ code, signal, stopped: out.includes('stopped') }).to.deep.equal({ code: 0, signal: null, stopped: true });
    } finally {
      clearTimeout(killer);
    }
  });
});
