import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const CHILD = fileURLToPath(new URL('./fixtures/signal-child.ts', import.meta.url));

describe('daemon: runUntilSignal', () => {
  it('a second SIGTERM during the stop does not kill the process half-way (timeout(1) signals the child, then its group)', async function () {
    this.timeout(60_000);
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const waiters: { word: string; resolve: () => void }[] = [];
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      for (const w of waiters.splice(0)) {
        if (out.includes(w.word)) w.resolve();
        else waiters.push(w);
      }
    });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    const said = (word: string): Promise<void> =>
      Promise.race([
        new Promise<void>((resolve) => (out.includes(word) ? resolve() : waiters.push({ word, resolve }))),
        exited.then(({ code, signal }) => {
          if (!out.includes(word)) throw new Error(`exited (${signal ?? code}) before it said "${word}": ${out}${err}`);
        }),
      ]);
    const killer = setTimeout(() => child.kill('SIGKILL'), 55_000);
    try {
      await said('ready');
      child.kill('SIGTERM');
      await said('stopping');
      // The second signal arrives while the stop is still running; the
      // child is idle (waiting for its cue), so it handles the signal well
      // within the pause before the cue.
      child.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 1000));
      child.stdin.write('go\n');
      const { code, signal } = await exited;
      expect({ code, signal, stopped: out.includes('stopped') }).to.deep.equal({ code: 0, signal: null, stopped: true });
    } finally {
      clearTimeout(killer);
    }
  });
});
