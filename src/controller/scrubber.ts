// Scrub before reuse: every freed container segment is zeroed by an agent
// before it goes back to the free map, so no vdisk (a new thick one, or
// the unwritten part of a thin vdisk's first write) reads another's old
// data. The DB holds what waits (container_segments rows marked scrub),
// so a restarted controller neither forgets nor frees them unzeroed; this
// keeps a queue of them in memory and works it off:
//
// - consecutive offsets of one container go out as one ZeroCommand (up to
//   a byte bound per command), to a connected agent that reaches the
//   container, with a bounded number of commands in flight;
// - CopyDone ok: the rows leave the DB in one transaction, the locations
//   go to the allocator's free map;
// - failure: back in the queue, that container retried after a capped
//   exponential backoff;
// - no agent reaches the container: they wait for the next registration;
// - no answer within the command's deadline (agent-commands.ts): the slot
//   goes to other work, and the segments wait for that agent's late answer
//   (or its disconnection) before they are freed or sent again.

import { log } from '../util/log.js';
import type { Allocator } from './allocator.js';
import type { ControllerDb, Location } from './db.js';
import { isOverdue, type AgentCommands } from './agent-commands.js';

/** What the scrubber needs of the controller. */
export interface ScrubHost {
  readonly db: ControllerDb;
  readonly allocator: Allocator;
  /**
   * copyAgent: a connected agent that reaches every one of `containers`, or null.
   * zero: sends a ZeroCommand; resolves with null once the agent reports it done and durable, else the error.
   */
  readonly commands: Pick<AgentCommands, 'copyAgent' | 'zero'>;
}

export interface ScrubberOptions {
  /** ZeroCommands in flight at once, over all agents (default 4). */
  maxInFlight?: number;
  /** Bytes one ZeroCommand covers at most; at least one segment (default 64 MiB). */
  maxCommandBytes?: number;
  /** First retry delay after a failure (default 500 ms), doubling up to retryMaxMs (default 30 s). */
  retryMinMs?: number;
  retryMaxMs?: number;
}

/** Offsets of one container waiting to be sent; `head` skips those already taken. */
interface Queue {
  offsets: number[];
  head: number;
  sorted: boolean;
}

interface Backoff {
  failures: number;
  /** Date.now() before which the container is not tried again. */
  until: number;
}

export class Scrubber {
  readonly #host: ScrubHost;
  readonly #maxInFlight: number;
  readonly #maxCommandBytes: number;
  readonly #retryMinMs: number;
  readonly #retryMaxMs: number;
  readonly #queues = new Map<string, Queue>();
  /** Segments of each container in commands now out. */
  readonly #sent = new Map<string, number>();
  readonly #backoff = new Map<string, Backoff>();
  #inFlight = 0;
  #scheduled: NodeJS.Immediate | null = null;
  #retryTimer: NodeJS.Timeout | null = null;
  #retryDue = 0;
  #stopped = false;

  constructor(host: ScrubHost, opts: ScrubberOptions = {}) {
    this.#host = host;
    this.#maxInFlight = Math.max(1, opts.maxInFlight ?? 4);
    this.#maxCommandBytes = opts.maxCommandBytes ?? 64 << 20;
    this.#retryMinMs = opts.retryMinMs ?? 500;
    this.#retryMaxMs = opts.retryMaxMs ?? 30_000;
    // Whatever an earlier run left waiting (its order is already sorted).
    const pending = host.db.scrubPending();
    this.#enqueue(pending, true);
    if (pending.length > 0) log.info(`${pending.length} freed container segments wait to be scrubbed`);
  }

  /** Queues locations just marked scrub in the DB and starts on them. */
  add(locs: readonly Location[]): void {
    if (locs.length === 0) return;
    this.#enqueue(locs, false);
    this.kick();
  }

  /** Looks for work soon (new locations, an agent registered, a backoff ended). */
  kick(): void {
    if (this.#stopped || this.#scheduled !== null) return;
    this.#scheduled = setImmediate(() => {
      this.#scheduled = null;
      this.#pass();
    });
  }

  /** Segments waiting (queued or being zeroed), of one container or of all. */
  pending(containerId?: string): number {
    if (containerId !== undefined) return queued(this.#queues.get(containerId)) + (this.#sent.get(containerId) ?? 0);
    let n = 0;
    for (const q of this.#queues.values()) n += queued(q);
    for (const k of this.#sent.values()) n += k;
    return n;
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  /** Stops sending (controller shutdown); what waits stays in the DB for the next start. */
  stop(): void {
    this.#stopped = true;
    if (this.#scheduled !== null) clearImmediate(this.#scheduled);
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer);
    this.#scheduled = null;
    this.#retryTimer = null;
  }

  #enqueue(locs: readonly Location[], sorted: boolean): void {
    for (const l of locs) {
      let q = this.#queues.get(l.containerId);
      if (q === undefined) {
        q = { offsets: [], head: 0, sorted: true };
        this.#queues.set(l.containerId, q);
      }
      q.offsets.push(l.offset);
      if (!sorted) q.sorted = false;
    }
  }

  #pass(): void {
    if (this.#stopped) return;
    const now = Date.now();
    let nextRetry = Number.POSITIVE_INFINITY;
    for (const [containerId, q] of [...this.#queues].sort(([a], [b]) => (a < b ? -1 : 1))) {
      if (this.#inFlight >= this.#maxInFlight) break;
      if (queued(q) === 0) {
        this.#queues.delete(containerId);
        continue;
      }
      const b = this.#backoff.get(containerId);
      if (b !== undefined && b.until > now) {
        nextRetry = Math.min(nextRetry, b.until);
        continue;
      }
      const c = this.#host.db.container(containerId);
      if (!c) {
        // Gone from the DB (its rows with it): nothing left to zero.
        this.#queues.delete(containerId);
        continue;
      }
      const agent = this.#host.commands.copyAgent([containerId]);
      if (agent === null) continue; // waits for an agent that reaches it to register
      const perCommand = Math.max(1, Math.floor(this.#maxCommandBytes / c.segmentSize));
      while (this.#inFlight < this.#maxInFlight && queued(q) > 0) {
        const run = takeRun(q, perCommand);
        // Zeroing is destructive: send only what the DB still says waits for it.
        const still = this.#host.db.scrubPendingIn(containerId, run.first, run.count);
        if (still.length !== run.count) {
          log.error(`scrub of container ${containerId} segments ${run.first}+${run.count}: only ${still.length} still wait for it; the others are skipped`);
          this.#enqueue(
            still.map((o) => ({ containerId, offset: o })),
            false,
          );
          continue;
        }
        this.#send(agent, containerId, c.segmentSize, run.first, run.count);
      }
    }
    if (nextRetry !== Number.POSITIVE_INFINITY) this.#retryAt(nextRetry);
  }

  #send(agent: string, containerId: string, segmentSize: number, first: number, count: number): void {
    this.#inFlight++;
    this.#sent.set(containerId, (this.#sent.get(containerId) ?? 0) + count);
    const what = `scrub of container ${containerId} segments ${first}+${count}`;
    log.debug(`${what}: agent ${agent} zeroes them`);
    let slot = true;
    const freeSlot = (): void => {
      if (!slot) return;
      slot = false;
      this.#inFlight--;
    };
    const end = (err: string | null): void => {
      freeSlot();
      const left = (this.#sent.get(containerId) ?? count) - count;
      if (left > 0) this.#sent.set(containerId, left);
      else this.#sent.delete(containerId);
      if (this.#stopped) return; // still marked in the DB: the next start takes them up
      if (err === null) this.#scrubbed(containerId, first, count);
      else this.#failed(what, agent, containerId, first, count, err);
      this.kick();
    };
    const done = (err: string | null): void => {
      if (!isOverdue(err)) return end(err);
      // The agent may still zero them when it resumes: not sent again (another
      // agent could free them first, and the late zeroing would hit live data)
      // until it answers or is gone (`late`); other work takes the slot.
      freeSlot();
      log.warn(`${what}: ${err}; they wait for agent ${agent}`);
      this.kick();
    };
    // Through a promise, so a send that throws counts as a failed attempt too.
    Promise.resolve()
      .then(() => this.#host.commands.zero(agent, { container: containerId, offset: first * segmentSize, length: count * segmentSize }, { late: end }))
      .then(done, (e: Error) => done(e.message));
  }

  #scrubbed(containerId: string, first: number, count: number): void {
    this.#backoff.delete(containerId);
    let freed: Location[];
    try {
      freed = this.#host.db.finishScrub(containerId, first, count);
    } catch (e) {
      // The rows stay marked; the next start of the controller takes them up.
      log.error(`scrub of container ${containerId} segments ${first}+${count} done, but recording it failed: ${(e as Error).message}`);
      return;
    }
    this.#host.allocator.free(freed);
    log.debug(`scrubbed ${freed.length} segments of container ${containerId} at ${first}; free again`);
  }

  #failed(what: string, agent: string, containerId: string, first: number, count: number, err: string): void {
    const offsets: number[] = [];
    for (let i = 0; i < count; i++) offsets.push(first + i);
    this.#enqueue(
      offsets.map((o) => ({ containerId, offset: o })),
      false,
    );
    const prev = this.#backoff.get(containerId);
    const failures = (prev?.failures ?? 0) + 1;
    const delay = Math.min(this.#retryMaxMs, this.#retryMinMs * 2 ** Math.min(failures - 1, 30));
    this.#backoff.set(containerId, { failures, until: Date.now() + delay });
    log.warn(`${what} on agent ${agent} failed (attempt ${failures}; again in ${delay} ms): ${err}`);
    if (failures === 1) this.#host.db.event('scrub', containerId, `${what} on agent ${agent} failed: ${err}`);
    this.#retryAt(Date.now() + delay);
  }

  #retryAt(when: number): void {
    if (this.#stopped || (this.#retryTimer !== null && this.#retryDue <= when)) return;
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer);
    this.#retryDue = when;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.kick();
    }, Math.max(0, when - Date.now()));
    this.#retryTimer.unref();
  }
}

function queued(q: Queue | undefined): number {
  return q === undefined ? 0 : q.offsets.length - q.head;
}

/** Takes the first run of consecutive offsets (at most `max`) off a queue. */
function takeRun(q: Queue, max: number): { first: number; count: number } {
  if (!q.sorted) {
    // Sorted once per batch of additions, not per command.
    q.offsets = q.offsets.slice(q.head).sort((a, b) => a - b);
    q.head = 0;
    q.sorted = true;
  }
  const first = q.offsets[q.head] as number;
  let count = 1;
  let i = q.head + 1;
  for (; i < q.offsets.length; i++) {
    const o = q.offsets[i] as number;
    if (o === first + count - 1) continue; // a duplicate: one zeroing covers it
    if (o !== first + count || count === max) break;
    count++;
  }
  q.head = i;
  if (q.head > 1024 && q.head * 2 > q.offsets.length) {
    // Drop the taken prefix now and then, not on every command.
    q.offsets = q.offsets.slice(q.head);
    q.head = 0;
  }
  return { first, count };
}
