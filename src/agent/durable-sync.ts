// The agent's half of the durability contract for thin allocations
// (docs/architecture.md, "Durability of thin allocations"). The controller
// commits an allocation lazily: its table version reaches the agent with
// lazy=true, committed but not yet durable against the controller's power
// loss. Before a SYNCHRONIZE CACHE or a FUA write completes, the device asks
// the controller (SyncRequest) to make the lazy versions it holds durable,
// and completes on its answer (SyncReply).
//
// - LazyVersions (one per vdisk) tracks which installed versions came lazy
//   and are not confirmed. A later non-lazy delta confirms its version and
//   every earlier one (same history: the delta starts at the version held).
//   A whole table replaces the history: a lazy version held before it stays
//   unconfirmed (an "orphan") until the controller answers for it, since a
//   table sent after the controller lost that version (power loss) does not
//   vouch for it. Concurrent flushes asking for one version share one request.
//   ok=false (the controller lost the version): the flushes fail, and go on
//   failing while the table holding it is installed. The orphan of the
//   reconciling whole table is settled only by the failure of a SYNCHRONIZE
//   CACHE received once that table is installed and the I/O still in flight
//   on the old one has drained: a write can land in the lost allocation up
//   to then, and a flush received after it must say so. A flush received
//   earlier fails too, but does not vouch for writes that came after it.
//   A FUA write vouches for its own data only: one received after that point
//   went through the new table and does not wait for the orphan.
// - SyncChannel sends the requests over the controller link. Like a fault, a
//   request is held while the controller is away and sent again on the next
//   stream (same id); the device's hold timeout, not the channel, decides
//   when to give up.
import type { AgentMessage, SyncReplyMsg } from '../wire/proto-types.js';
import { log } from '../util/log.js';
import type { LinkEventName, LinkEvents } from './controller-link.js';

/** The controller's answer to a SyncRequest, as a device sees it. */
export interface SyncAnswer {
  /** Every commit of the vdisk up to the version asked for is durable. */
  ok: boolean;
  /** With ok: the vdisk's durable version at the controller (at least the one asked for). */
  durableVersion: number;
  /** Without ok: why (the version was lost with a power loss, the vdisk is gone). */
  reason: string;
}

/**
 * Where a device's durability requests go. `sync` stays pending while the
 * controller is away; it rejects only when `signal` aborts or the agent
 * shuts down.
 */
export interface SyncSink {
  sync(vdiskId: string, version: number, signal: AbortSignal): Promise<SyncAnswer>;
}

/** How a durability request ended for the flushes waiting on it. */
export type SyncOutcome =
  | { readonly kind: 'durable' }
  /** The controller no longer has the version: what was written through its allocations is lost. */
  | { readonly kind: 'lost'; readonly reason: string }
  /** No answer (the agent is shutting down, or the request was given up). */
  | { readonly kind: 'unanswered'; readonly reason: string };

const DURABLE: SyncOutcome = { kind: 'durable' };

/**
 * A lazy version not confirmed this long after it came is asked about in
 * the background (once per vdisk per interval, so a burst of allocations
 * costs one request and one group commit): then a later flush or FUA write
 * need not ask, nor wait out the hold timeout if the controller is away by
 * then. Every exporter of the vdisk learns this way, not only the one whose
 * initiator flushes. Shorter than the controller's durable interval (1 s):
 * the controller makes the version durable when asked, a little early.
 */
export const BACKGROUND_ASK_MS = 100;

/** One request in flight, shared by every flush that needs its version. */
interface Ask {
  readonly version: number;
  readonly outcome: Promise<SyncOutcome>;
  readonly abort: AbortController;
  waiters: number;
  settled: boolean;
}

/** A flush's share of a request: its outcome, and `leave()` once it stops waiting (answered or not). */
export interface SyncWait {
  readonly outcome: Promise<SyncOutcome>;
  leave(): void;
}

export interface LazyVersionsOptions {
  /** Where requests go; without one (a controller that commits nothing lazily) there is nothing to ask. */
  sink?: SyncSink;
  /** The vdisk's name, for logs. */
  name?: string;
  /** The background ask's delay (default BACKGROUND_ASK_MS); 0: none. */
  backgroundAskMs?: number;
}

export class LazyVersions {
  readonly vdiskId: string;
  readonly #sink: SyncSink | undefined;
  readonly #name: string;
  readonly #backgroundMs: number;
  /** Highest version that came lazy (noted before it is installed; 0: none). */
  #lazy = 0;
  /** Every version up to this one is known durable at the controller. */
  #confirmed = 0;
  /** A lazy version held when a whole table replaced the history, not yet answered for (0: none). */
  #orphan = 0;
  /**
   * Flush epochs: bumped when an orphan's reconciling table is installed and
   * drained. A flush notes the epoch when it is received (`epoch`).
   */
  #epoch = 0;
  /** The epoch from which a flush received may settle the orphan (0: its table is not installed yet). */
  #orphanFrom = 0;
  /** The last version the controller said it lost (logged once). */
  #reportedLost = 0;
  /** Requests in flight by version (a new flush joins the one for its version). */
  readonly #asks = new Map<number, Ask>();
  /** The background ask: its timer, or its request in flight. */
  #bgTimer: NodeJS.Timeout | null = null;
  #bgWait: SyncWait | null = null;
  #closed = false;

  constructor(vdiskId: string, opts: LazyVersionsOptions = {}) {
    this.vdiskId = vdiskId;
    this.#sink = opts.sink;
    this.#name = opts.name ?? vdiskId;
    this.#backgroundMs = opts.backgroundAskMs ?? BACKGROUND_ASK_MS;
  }

  /**
   * The version a flush must have confirmed before it completes, with
   * `installed` the device's table version; 0 when none. On the flush and
   * FUA path: field reads and comparisons only.
   */
  due(installed: number, fuaSince = -1): number {
    // A FUA write received after the orphan's table was installed and
    // drained wrote through the new table only: the orphan is not its own.
    if (this.#orphan !== 0 && (this.#orphanFrom === 0 || fuaSince < this.#orphanFrom)) return this.#orphan;
    const v = this.#lazy < installed ? this.#lazy : installed;
    return v > this.#confirmed ? v : 0;
  }

  /** The flush epoch now: a SYNCHRONIZE CACHE or FUA write notes it when received. */
  get epoch(): number {
    return this.#epoch;
  }

  /** Versions known durable (diagnostics and tests). */
  get confirmed(): number {
    return this.#confirmed;
  }

  /** Requests in flight (diagnostics and tests). */
  get asking(): number {
    return this.#asks.size;
  }

  /** A delta that came with lazy=true is about to be applied: noted before, so no I/O under it can miss it. */
  lazyDelta(toVersion: number): void {
    if (toVersion > this.#lazy) this.#lazy = toVersion;
    if (this.#bgTimer === null && this.#bgWait === null) this.#background();
  }

  /** A delta that came with lazy=false was applied: its version and every earlier one are durable. */
  durableDelta(toVersion: number): void {
    if (toVersion > this.#confirmed) this.#confirmed = toVersion;
  }

  /**
   * A whole table is about to be installed over the table at `installed`.
   * A lazy version held and not confirmed becomes an orphan: only the
   * controller's answer for it settles it. A non-lazy table vouches for its
   * own history up to its version.
   */
  wholeTable(version: number, lazy: boolean, installed: number): void {
    const held = this.#lazy < installed ? this.#lazy : installed;
    if (held > this.#confirmed && held > this.#orphan) this.#orphan = held;
    // Writes may go through the table being replaced until it is drained.
    if (this.#orphan !== 0) this.#orphanFrom = 0;
    if (lazy) {
      if (version > this.#lazy) this.#lazy = version;
      if (this.#bgTimer === null && this.#bgWait === null) this.#background();
    } else if (version > this.#confirmed) {
      this.#confirmed = version;
    }
  }

  /**
   * The whole table announced by `wholeTable` is installed and every I/O
   * started under the table it replaced has completed: no write reaches an
   * orphan's allocations any more, so a flush received from now on may
   * settle it.
   */
  tableInstalled(): void {
    if (this.#orphan !== 0 && this.#orphanFrom === 0) this.#orphanFrom = ++this.#epoch;
  }

  /**
   * Asks the controller to make `version` durable, or joins the request in
   * flight for it. The caller must `leave()` when it stops waiting; the
   * request is given up once nobody waits. `receivedAt`: the epoch when the
   * SYNCHRONIZE CACHE was received (default now); a loss it is told of
   * settles the orphan only if that is not before the orphan's table was
   * installed. null: a FUA write, which vouches for its own data only and
   * settles nothing.
   */
  wait(version: number, background = false, receivedAt: number | null = this.#epoch): SyncWait {
    let ask = this.#asks.get(version);
    if (ask === undefined) ask = this.#ask(version);
    ask.waiters++;
    const a = ask;
    let left = false;
    // Settled by the flush that is told of the loss (and reports it), not by
    // the answer itself: a flush that gave up waiting tells no one.
    const settles = !background && receivedAt !== null;
    return {
      outcome: settles
        ? a.outcome.then((o) => {
            if (o.kind === 'lost' && !left) this.#toldLost(a.version, receivedAt);
            return o;
          })
        : a.outcome,
      leave: () => {
        if (left) return;
        left = true;
        if (--a.waiters > 0 || a.settled) return;
        // Nobody waits any more (hold timeouts, device closed): forget it.
        a.settled = true;
        if (this.#asks.get(a.version) === a) this.#asks.delete(a.version);
        a.abort.abort(new Error('no flush waits for it any more'));
      },
    };
  }

  /** Stops the background ask (the export is gone, or the agent stops). */
  close(): void {
    this.#closed = true;
    if (this.#bgTimer !== null) clearTimeout(this.#bgTimer);
    this.#bgTimer = null;
    const w = this.#bgWait;
    this.#bgWait = null;
    w?.leave();
  }

  /** A SYNCHRONIZE CACHE received at epoch `receivedAt` reports the loss of `version`. */
  #toldLost(version: number, receivedAt: number): void {
    if (this.#orphan === version && this.#orphanFrom !== 0 && receivedAt >= this.#orphanFrom) this.#orphan = 0;
  }

  /** Arms the background ask of the newest lazy version (not of an orphan: its loss must reach a flush). */
  #background(): void {
    if (this.#sink === undefined || this.#closed || this.#backgroundMs <= 0) return;
    this.#bgTimer = setTimeout(() => {
      this.#bgTimer = null;
      const v = this.#lazy;
      if (v <= this.#confirmed || this.#closed) return;
      const w = this.wait(v, true);
      this.#bgWait = w;
      void w.outcome.then((o) => {
        if (this.#bgWait !== w) return;
        this.#bgWait = null;
        w.leave();
        // Lost or unanswered: the flushes ask (and are told) themselves.
        if (o.kind === 'durable' && this.#lazy > this.#confirmed) this.#background();
      });
    }, this.#backgroundMs);
    this.#bgTimer.unref();
  }

  #ask(version: number): Ask {
    const abort = new AbortController();
    const sink = this.#sink;
    const asked: Promise<SyncAnswer | Error> =
      sink === undefined
        ? Promise.resolve(new Error('no controller to ask'))
        : sink.sync(this.vdiskId, version, abort.signal).catch((e: unknown) => (e instanceof Error ? e : new Error(String(e))));
    const ask: Ask = { version, abort, waiters: 0, settled: false, outcome: asked.then((r) => this.#answered(ask, r)) };
    this.#asks.set(version, ask);
    return ask;
  }

  #answered(ask: Ask, r: SyncAnswer | Error): SyncOutcome {
    const wasSettled = ask.settled;
    ask.settled = true;
    if (this.#asks.get(ask.version) === ask) this.#asks.delete(ask.version);
    if (r instanceof Error) return { kind: 'unanswered', reason: r.message };
    if (wasSettled) return { kind: 'unanswered', reason: 'given up' };
    const v = ask.version;
    if (r.ok && r.durableVersion < v) {
      // Not what the contract says: do not take it for durability.
      log.warn('controller answered a durability request with an older durable version', { vdisk: this.#name, id: this.vdiskId, version: v, durableVersion: r.durableVersion });
      return { kind: 'unanswered', reason: `controller says durable up to version ${r.durableVersion} only` };
    }
    if (r.ok) {
      if (v > this.#confirmed) this.#confirmed = v;
      // Only an answer for the orphan itself: one for a newer version of the
      // table now held says nothing of a version the controller may have lost.
      if (this.#orphan === v) this.#orphan = 0;
      return DURABLE;
    }
    // A version of the table still held stays unconfirmed: every flush
    // under it fails (writes keep going to the lost allocations) until the
    // controller's reconciling whole table replaces it (then as an orphan,
    // until a flush received after the new table drained is told).
    const reason = r.reason || 'the controller no longer has it';
    if (v !== this.#reportedLost) {
      this.#reportedLost = v;
      log.error('thin allocation lost: table version not durable at the controller (power loss?); failing SYNCHRONIZE CACHE and FUA writes that need it', {
        vdisk: this.#name,
        id: this.vdiskId,
        version: v,
        reason,
      });
    }
    return { kind: 'lost', reason };
  }
}

interface HeldSync {
  readonly msg: AgentMessage;
  readonly resolve: (r: SyncReplyMsg) => void;
  readonly reject: (e: Error) => void;
  readonly signal: AbortSignal;
  readonly onAbort: () => void;
}

/** What the channel uses of the controller link (ControllerLink; tests give it a fake). */
export interface SyncLink {
  on<K extends LinkEventName>(event: K, fn: (arg: LinkEvents[K]) => void): unknown;
  send(msg: AgentMessage): boolean;
}

export class SyncAbortedError extends Error {
  constructor(readonly requestId: number, reason: string) {
    super(`durability request ${requestId} given up: ${reason}`);
    this.name = 'SyncAbortedError';
  }
}

/** SyncRequest/SyncReply over the controller link, held across reconnects like faults. */
export class SyncChannel {
  readonly #link: SyncLink;
  readonly #held = new Map<number, HeldSync>();
  /** Unique for the life of the agent, hence per stream. */
  #nextId = 1;

  constructor(link: SyncLink) {
    this.#link = link;
    link.on('syncReply', (r) => this.#onReply(r));
    link.on('welcome', () => this.#resend());
  }

  /** Requests waiting for their answer. */
  get held(): number {
    return this.#held.size;
  }

  /** Resolves with the controller's answer; rejects with SyncAbortedError when `signal` aborts or the channel closes. */
  request(vdiskId: string, version: number, signal: AbortSignal): Promise<SyncReplyMsg> {
    const requestId = this.#nextId++;
    return new Promise<SyncReplyMsg>((resolve, reject) => {
      if (signal.aborted) {
        reject(new SyncAbortedError(requestId, 'aborted before it was sent'));
        return;
      }
      const onAbort = (): void => {
        if (this.#held.delete(requestId)) reject(new SyncAbortedError(requestId, String((signal.reason as Error | undefined)?.message ?? signal.reason ?? 'aborted')));
      };
      const msg: AgentMessage = { body: 'syncRequest', syncRequest: { requestId, vdiskId, version } };
      this.#held.set(requestId, { msg, resolve, reject, signal, onAbort });
      signal.addEventListener('abort', onAbort, { once: true });
      // Not connected: it goes out with the others after the next Welcome.
      this.#link.send(msg);
    });
  }

  /** Gives up every request (agent shutdown). */
  close(): void {
    const held = [...this.#held];
    this.#held.clear();
    for (const [id, h] of held) {
      h.signal.removeEventListener('abort', h.onAbort);
      h.reject(new SyncAbortedError(id, 'agent shutting down'));
    }
  }

  #onReply(r: SyncReplyMsg): void {
    const h = this.#held.get(r.requestId);
    if (h === undefined) {
      // Late (given up) or for a request of another life of this agent.
      log.debug('sync reply for no pending request', { requestId: r.requestId });
      return;
    }
    this.#held.delete(r.requestId);
    h.signal.removeEventListener('abort', h.onAbort);
    h.resolve(r);
  }

  #resend(): void {
    if (this.#held.size === 0) return;
    log.info('re-sending durability requests after reconnect', { count: this.#held.size });
    for (const h of this.#held.values()) this.#link.send(h.msg);
  }
}

/** The devices' SyncSink over the wire. */
export function wireSyncSink(channel: SyncChannel): SyncSink {
  return {
    async sync(vdiskId: string, version: number, signal: AbortSignal): Promise<SyncAnswer> {
      const r = await channel.request(vdiskId, version, signal);
      return { ok: r.ok, durableVersion: r.durableVersion, reason: r.reason };
    },
  };
}
