// N sessions to one target as one ScsiTransport, for throughput past what one
// TCP connection (and one target thread per connection) carries: each command
// goes to the session with the fewest commands outstanding among those up.
// Each session has its own ISID and reconnects on its own; the pool is up
// while any session is.

import { randomIsid } from './connect.js';
import { ReconnectingSession, type ReconnectingOptions, type StateListener } from './reconnecting.js';
import type { ScsiRequest, ScsiResult, ScsiTransport, TransportState } from './transport.js';

export class IscsiSessionPool implements ScsiTransport {
  private readonly busy: number[];
  private readonly listeners = new Set<StateListener>();
  private last: TransportState;

  /** Logs in `count` sessions (distinct ISIDs); if any login fails, closes the others and throws. */
  static async connect(opts: ReconnectingOptions, count: number): Promise<IscsiSessionPool> {
    const n = Math.max(1, Math.floor(count));
    const sessions: ReconnectingSession[] = [];
    try {
      for (let i = 0; i < n; i++) sessions.push(await ReconnectingSession.connect({ ...opts, isid: i === 0 && opts.isid !== undefined ? opts.isid : randomIsid() }));
    } catch (e) {
      await Promise.all(sessions.map((s) => s.close()));
      throw e;
    }
    return new IscsiSessionPool(sessions);
  }

  constructor(readonly sessions: readonly ReconnectingSession[]) {
    if (sessions.length === 0) throw new RangeError('a session pool needs at least one session');
    this.busy = sessions.map(() => 0);
    this.last = this.state;
    for (const s of sessions) s.onStateChange(() => this.changed());
  }

  /** 'up' while any session is up, then 'connecting', then 'down'; 'closed' once all are. */
  get state(): TransportState {
    const states = this.sessions.map((s) => s.state);
    for (const st of ['up', 'connecting', 'down'] as const) if (states.includes(st)) return st;
    return 'closed';
  }

  /** Called when the pool's state changes; returns an unsubscribe function. */
  onStateChange(fn: StateListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  async execute(req: ScsiRequest): Promise<ScsiResult> {
    let pick = 0;
    for (let i = 1; i < this.sessions.length; i++) {
      const up = this.sessions[i]!.state === 'up';
      const pickUp = this.sessions[pick]!.state === 'up';
      if ((up && !pickUp) || (up === pickUp && this.busy[i]! < this.busy[pick]!)) pick = i;
    }
    this.busy[pick]!++;
    try {
      // A session that is down holds the command until it is back (or its hold runs out).
      return await this.sessions[pick]!.execute(req);
    } finally {
      this.busy[pick]!--;
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.sessions.map((s) => s.close()));
  }

  private changed(): void {
    const st = this.state;
    if (st === this.last) return;
    this.last = st;
    for (const fn of [...this.listeners]) fn(st);
  }
}
