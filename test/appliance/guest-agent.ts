// A small client for the QEMU guest agent (qemu-ga, in the appliance image)
// over the host side of its virtio-serial port, a unix socket. The test runs
// commands in the guest and reboots it through it: no ssh, no login.
// Protocol: one JSON object per line each way; `guest-sync` with a random id
// discards whatever an earlier, abandoned exchange left in the channel.
import { connect, type Socket } from 'node:net';
import { randomInt } from 'node:crypto';

interface Reply {
  return?: unknown;
  error?: { class: string; desc: string };
}

export interface ExecResult {
  exitCode: number | null;
  stdout: string;
  stderr: string;
}

export class GuestAgent {
  private buffered = '';
  private waiting: ((line: string) => void) | null = null;
  private closed = false;

  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      this.buffered += chunk;
      this.deliver();
    });
    sock.on('close', () => {
      this.closed = true;
    });
    sock.on('error', () => undefined);
  }

  static connect(path: string, timeoutMs = 10_000): Promise<GuestAgent> {
    return new Promise((resolve, reject) => {
      const s = connect(path);
      const t = setTimeout(() => {
        s.destroy();
        reject(new Error(`guest agent socket ${path}: no connection within ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(t);
        resolve(new GuestAgent(s));
      });
      s.once('error', (e) => {
        clearTimeout(t);
        reject(new Error(`guest agent socket ${path}: ${e.message}`));
      });
    });
  }

  private deliver(): void {
    const i = this.buffered.indexOf('\n');
    if (i < 0 || !this.waiting) return;
    const line = this.buffered.slice(0, i);
    this.buffered = this.buffered.slice(i + 1);
    const w = this.waiting;
    this.waiting = null;
    w(line);
  }

  private nextLine(timeoutMs: number, what: string): Promise<string> {
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(new Error(`guest agent: channel closed waiting for ${what}`));
        return;
      }
      const t = setTimeout(() => {
        this.waiting = null;
        reject(new Error(`guest agent: no answer to ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting = (line) => {
        clearTimeout(t);
        resolve(line);
      };
      this.deliver();
    });
  }

  private send(execute: string, args?: Record<string, unknown>): void {
    this.sock.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + '\n');
  }

  /** Drops stale replies; true once the agent answered (it starts late in boot). */
  async sync(timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    // What is written before the agent opened its port may be lost: ask again every few seconds.
    for (;;) {
      const id = randomInt(1, 2 ** 31);
      this.send('guest-sync', { id });
      const tryUntil = Math.min(until, Date.now() + 5000);
      try {
        for (;;) {
          const line = await this.nextLine(Math.max(1, tryUntil - Date.now()), 'guest-sync');
          try {
            if ((JSON.parse(line) as Reply).return === id) return;
          } catch {
            // a partial line from before the sync: skip it
          }
        }
      } catch (e) {
        if (Date.now() >= until || this.closed) throw e;
      }
    }
  }

  async call(execute: string, args: Record<string, unknown> | undefined, timeoutMs = 30_000): Promise<unknown> {
    this.send(execute, args);
    const r = JSON.parse(await this.nextLine(timeoutMs, execute)) as Reply;
    if (r.error) throw new Error(`guest agent ${execute}: ${r.error.class}: ${r.error.desc}`);
    return r.return;
  }

  /** Runs `sh -c script` in the guest and waits for it (bounded). */
  async exec(script: string, timeoutMs = 120_000): Promise<ExecResult> {
    const started = await this.call('guest-exec', { path: '/bin/sh', arg: ['-c', script], 'capture-output': true });
    const pid = (started as { pid: number }).pid;
    const until = Date.now() + timeoutMs;
    for (;;) {
      const st = (await this.call('guest-exec-status', { pid })) as {
        exited: boolean;
        exitcode?: number;
        'out-data'?: string;
        'err-data'?: string;
      };
      if (st.exited) {
        return {
          exitCode: st.exitcode ?? null,
          stdout: Buffer.from(st['out-data'] ?? '', 'base64').toString('utf8'),
          stderr: Buffer.from(st['err-data'] ?? '', 'base64').toString('utf8'),
        };
      }
      if (Date.now() > until) throw new Error(`guest command did not finish within ${timeoutMs} ms: ${script}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  /** guest-shutdown never answers when it works (the guest goes down). */
  shutdown(mode: 'powerdown' | 'reboot'): void {
    this.send('guest-shutdown', { mode });
  }

  close(): void {
    this.sock.destroy();
  }
}
