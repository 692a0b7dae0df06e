// The agent's end of AgentService.Connect: one long-lived bidirectional
// stream to the controller. Registers on every new stream, sends heartbeats
// at the interval the Welcome names, and reconnects with capped, jittered
// exponential backoff whenever the controller is unreachable or the stream
// breaks. Bad or unknown messages are logged and dropped; nothing the
// controller sends can crash the agent. The rest of the agent sees typed
// events and a `send` that says whether the message left.
//
// The link also keeps the controller's lease (AgentLease below): renewed by
// the controller's answers to heartbeats, it tells the devices when segments
// in state zero or no-write may no longer be served from the table held.
import { AgentServiceClient, type AgentStream, type ClientOptions } from '../wire/grpc.js';
import type {
  AgentMessage,
  ContainerRef,
  ContainerSet,
  ControllerError,
  ControllerMessage,
  CopyCommand,
  ExportSet,
  Fault,
  FaultReply,
  Fence,
  LuReply,
  MalformedMessage,
  ReleaseReply,
  Rescan,
  SyncReplyMsg,
  TableDeltaMsg,
  TableFull,
  TableVersion,
  Welcome,
  ZeroCommand,
} from '../wire/proto-types.js';
import { log } from '../util/log.js';
import { Backoff, type BackoffOptions } from './backoff.js';
import type { Lease } from './fault.js';

/** What Register carries besides name and portals; asked for again on every (re)connect. */
export interface LinkRegistration {
  containers: ContainerRef[];
  tables: TableVersion[];
}

export interface ControllerLinkOptions extends ClientOptions {
  /** Controller address, HOST:PORT. */
  controller: string;
  agentName: string;
  /** The agent's iSCSI portals, HOST:PORT. */
  portals: string[];
  registration: () => LinkRegistration | Promise<LinkRegistration>;
  /** I/Os currently held for fault replies, reported in heartbeats. */
  heldIos?: () => number;
  backoff?: BackoffOptions;
  /** A stream with no Welcome this long after Register is given up and retried. */
  welcomeTimeoutMs?: number;
  softwareVersion?: string;
  /** Register.host_id: the host this agent runs on ('' = not given). */
  hostId?: string;
}

/** Events of the link, by name, with their argument. */
export interface LinkEvents {
  /** A stream is up and registered; the controller's ExportSet and tables follow. */
  welcome: Welcome;
  /** The stream ended or could not be set up; a new attempt follows after `retryInMs`. */
  disconnected: { reason: string; retryInMs: number; wasWelcomed: boolean };
  exportSet: ExportSet;
  tableFull: TableFull;
  tableDelta: TableDeltaMsg;
  faultReply: FaultReply;
  copyCommand: CopyCommand;
  zeroCommand: ZeroCommand;
  releaseReply: ReleaseReply;
  luReply: LuReply;
  fence: Fence;
  controllerError: ControllerError;
  /** Scan the container locators again and report (ContainerUpdate). */
  rescan: Rescan;
  /** Which of this agent's containers are shared (reached from more than one host). */
  containerSet: ContainerSet;
  /** The answer to a durability request (src/agent/durable-sync.ts). */
  syncReply: SyncReplyMsg;
}

export type LinkEventName = keyof LinkEvents;
type Listener<K extends LinkEventName> = (arg: LinkEvents[K]) => void;

export type LinkState = 'idle' | 'connecting' | 'registered' | 'backoff' | 'closed';

export const DEFAULT_HEARTBEAT_MS = 5000;
export const DEFAULT_WELCOME_TIMEOUT_MS = 10_000;

/** Message bodies the controller sends, mapped to the event that carries each. */
const EVENT_OF_BODY: Readonly<Record<string, LinkEventName | undefined>> = {
  exportSet: 'exportSet',
  tableFull: 'tableFull',
  tableDelta: 'tableDelta',
  faultReply: 'faultReply',
  copyCommand: 'copyCommand',
  zeroCommand: 'zeroCommand',
  releaseReply: 'releaseReply',
  luReply: 'luReply',
  fence: 'fence',
  error: 'controllerError',
  rescan: 'rescan',
  containerSet: 'containerSet',
  syncReply: 'syncReply',
};

/**
 * The agent's side of the controller's lease (Welcome.lease_ms; design:
 * proto Welcome and HeartbeatReply). The lease runs lease_ms from the send
 * time of the newest heartbeat the controller answered; the controller, which
 * started its own clock when that heartbeat arrived, waits lease_ms plus a
 * margin before changing a table without this agent. Once it may have, only
 * a resync (tables current again) makes the held zero and no-write segments
 * safe to serve.
 *
 *   none      no lease granted (lease_ms 0, or no controller yet): nothing is held on its account
 *   valid     answers keep coming: everything is served
 *   expired   lease_ms since the newest answered heartbeat was sent: zero and no-write I/O is held
 *   resyncing a heartbeat was answered on a registered stream after expiry: every table the
 *             controller sent before that answer has arrived; held until the agent confirms
 *             they are installed and acked (confirm), then valid
 *
 * Times are monotonic (performance.now()), never the wall clock.
 */
export type LeaseState = 'none' | 'valid' | 'expired' | 'resyncing';

export class AgentLease implements Lease {
  #state: LeaseState = 'none';
  #leaseMs = 0;
  /** performance.now() when the newest heartbeat the controller answered was sent. */
  #base = Number.NEGATIVE_INFINITY;
  /** Counts moves into resyncing, so a confirmation meant for an earlier one is ignored. */
  #epoch = 0;
  #timer: NodeJS.Timeout | null = null;
  readonly #renewed = new Set<() => void>();
  readonly #resync = new Set<(epoch: number) => void>();

  get state(): LeaseState {
    this.#tick();
    return this.#state;
  }

  get leaseMs(): number {
    return this.#leaseMs;
  }

  /** Hot path (zero and no-write pieces): reads the clock, so a late timer cannot extend the lease. */
  get expired(): boolean {
    const s = this.#state;
    if (s === 'none') return false;
    return s !== 'valid' || performance.now() >= this.#base + this.#leaseMs;
  }

  onRenewed(fn: () => void): () => void {
    this.#renewed.add(fn);
    return () => this.#renewed.delete(fn);
  }

  /** `fn(epoch)` when a resync starts: the agent checks its tables, then calls confirm(epoch). */
  onResync(fn: (epoch: number) => void): () => void {
    this.#resync.add(fn);
    return () => this.#resync.delete(fn);
  }

  /** A Welcome: lease_ms 0 means the controller grants none (nothing is held on its account). */
  welcomed(leaseMs: number): void {
    this.#tick();
    if (!(leaseMs > 0)) {
      this.#leaseMs = 0;
      this.#move('none');
      return;
    }
    this.#leaseMs = leaseMs;
    // First lease from this controller: tables are unconfirmed until a resync.
    if (this.#state === 'none') this.#move('expired');
    else if (this.#state === 'valid') this.#arm();
  }

  /** The controller answered a heartbeat of the current stream that was sent at `sentAt`. */
  answered(sentAt: number): void {
    if (this.#leaseMs === 0) return;
    // Expire first by the old base: an answer after the lease ran out cannot
    // vouch for the time in between, when the controller may have acted.
    this.#tick();
    if (sentAt > this.#base) this.#base = sentAt;
    switch (this.#state) {
      case 'valid':
        this.#arm();
        return;
      case 'expired':
        this.#epoch++;
        this.#move('resyncing');
        this.#emitResync(this.#epoch);
        return;
      default:
        return;
    }
  }

  /** The agent has installed and acked every table that came before the answer that started resync `epoch`. */
  confirm(epoch: number): boolean {
    if (this.#state !== 'resyncing' || epoch !== this.#epoch) return false;
    if (performance.now() >= this.#base + this.#leaseMs) {
      // Ran out while resyncing: the next answer starts over.
      this.#move('expired');
      return false;
    }
    this.#move('valid');
    for (const fn of [...this.#renewed]) {
      try {
        fn();
      } catch (err) {
        log.error('controller lease: renewal listener failed', { err: (err as Error).message });
      }
    }
    return true;
  }

  /** The stream is gone: a resync in progress must start over on the next one. */
  disconnected(): void {
    this.#tick();
    if (this.#state === 'resyncing') this.#move('expired');
  }

  close(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #tick(): void {
    if (this.#state === 'valid' && performance.now() >= this.#base + this.#leaseMs) this.#move('expired');
  }

  #arm(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#tick();
      if (this.#state === 'valid') this.#arm();
    }, Math.max(0, this.#base + this.#leaseMs - performance.now()) + 1);
    this.#timer.unref();
  }

  /** The one place the state changes. */
  #move(next: LeaseState): void {
    const prev = this.#state;
    if (prev === next) return;
    this.#state = next;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    if (next === 'valid') this.#arm();
    if (next === 'expired' && prev === 'valid') {
      log.warn('controller lease expired: holding I/O to zero and no-write segments until resynced', { leaseMs: this.#leaseMs });
    } else if (next === 'valid') {
      log.info('controller lease renewed: tables resynced, serving every segment', { from: prev });
    } else {
      log.debug('controller lease', { from: prev, to: next });
    }
  }

  #emitResync(epoch: number): void {
    for (const fn of [...this.#resync]) {
      try {
        fn(epoch);
      } catch (err) {
        log.error('controller lease: resync listener failed', { err: (err as Error).message });
      }
    }
  }
}

export class ControllerLink {
  readonly #opts: ControllerLinkOptions;
  /** Presented on every (re)connection; SIGHUP may replace it (setToken). */
  #token: string | undefined;
  readonly #backoff: Backoff;
  readonly #listeners = new Map<LinkEventName, Set<(arg: never) => void>>();
  #state: LinkState = 'idle';
  #client: AgentServiceClient | null = null;
  #stream: AgentStream | null = null;
  #welcome: Welcome | null = null;
  #heartbeat: NodeJS.Timeout | null = null;
  #welcomeTimer: NodeJS.Timeout | null = null;
  #retryTimer: NodeJS.Timeout | null = null;
  #heartbeatSeq = 0;
  /** Send times (performance.now()) of this stream's heartbeats not yet answered, oldest first. */
  #beats: { seq: number; at: number }[] = [];
  #connects = 0;
  /** The agent is stopping: every heartbeat says so (Heartbeat.draining). */
  #draining = false;
  /** The controller's lease; devices read it on the I/O path. */
  readonly lease = new AgentLease();

  constructor(opts: ControllerLinkOptions) {
    this.#opts = opts;
    this.#token = opts.token;
    this.#backoff = new Backoff(opts.backoff);
  }

  /** The token for the next connection (the open stream was authorized already). */
  setToken(token: string | undefined): void {
    this.#token = token;
  }

  get state(): LinkState {
    return this.#state;
  }

  /** True while a registered stream is up (Welcome received). */
  get connected(): boolean {
    return this.#state === 'registered';
  }

  /** The Welcome of the current stream, or null while not registered. */
  get welcome(): Welcome | null {
    return this.#welcome;
  }

  /** Streams opened so far (for diagnostics and tests). */
  get connectAttempts(): number {
    return this.#connects;
  }

  on<K extends LinkEventName>(event: K, fn: Listener<K>): this {
    let set = this.#listeners.get(event);
    if (!set) {
      set = new Set();
      this.#listeners.set(event, set);
    }
    set.add(fn as (arg: never) => void);
    return this;
  }

  off<K extends LinkEventName>(event: K, fn: Listener<K>): this {
    this.#listeners.get(event)?.delete(fn as (arg: never) => void);
    return this;
  }

  /** Starts connecting; reconnects by itself until close(). */
  start(): void {
    if (this.#state !== 'idle') return;
    this.#open();
  }

  /**
   * Sends on the registered stream. False when there is none (the caller
   * keeps what must survive, e.g. faults, and re-sends after `welcome`).
   */
  send(msg: AgentMessage): boolean {
    const stream = this.#stream;
    if (this.#state !== 'registered' || stream === null) return false;
    try {
      stream.write(msg);
      return true;
    } catch (err) {
      // A message that does not serialize is a bug on this side; the stream itself is fine.
      log.error('controller link: cannot send message', { body: msg.body, err: (err as Error).message });
      return false;
    }
  }

  /**
   * The agent is stopping (SIGTERM drain): tells the controller at once and
   * in every heartbeat from now on, so that the other paths to its vdisks
   * report its port groups transitioning.
   */
  setDraining(): void {
    if (this.#draining) return;
    this.#draining = true;
    this.#beat();
  }

  sendFault(fault: Fault): boolean {
    return this.send({ body: 'fault', fault });
  }

  async close(): Promise<void> {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#clearTimers();
    this.lease.close();
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#teardown();
  }

  // ---- connection lifecycle ----

  #open(): void {
    if (this.#state === 'closed') return;
    this.#state = 'connecting';
    this.#connects++;
    // A fresh client per attempt: grpc-js channels keep their own reconnect
    // backoff (up to minutes), which would override ours.
    const client = new AgentServiceClient(this.#opts.controller, { token: this.#token, credentials: this.#opts.credentials });
    let stream: AgentStream;
    try {
      stream = client.connect();
    } catch (err) {
      client.close();
      this.#scheduleRetry(`cannot open stream: ${(err as Error).message}`, false);
      return;
    }
    this.#client = client;
    this.#stream = stream;
    stream.on('data', (m: ControllerMessage | MalformedMessage) => this.#onMessage(stream, m));
    stream.on('error', (err: Error & { code?: number; details?: string }) =>
      this.#broken(stream, `stream error: ${err.details ?? err.message}`),
    );
    stream.on('status', (s: { code: number; details: string }) => this.#broken(stream, `stream ended: status ${s.code} ${s.details}`));
    stream.on('end', () => this.#broken(stream, 'stream ended by the controller'));
    this.#welcomeTimer = setTimeout(
      () => this.#broken(stream, `no Welcome within ${this.#opts.welcomeTimeoutMs ?? DEFAULT_WELCOME_TIMEOUT_MS} ms`),
      this.#opts.welcomeTimeoutMs ?? DEFAULT_WELCOME_TIMEOUT_MS,
    );
    this.#welcomeTimer.unref();
    void this.#register(stream);
  }

  async #register(stream: AgentStream): Promise<void> {
    let reg: LinkRegistration;
    try {
      reg = await this.#opts.registration();
    } catch (err) {
      this.#broken(stream, `cannot build Register: ${(err as Error).message}`);
      return;
    }
    if (stream !== this.#stream) return;
    try {
      stream.write({
        body: 'register',
        register: {
          agentName: this.#opts.agentName,
          portals: this.#opts.portals,
          containers: reg.containers,
          tables: reg.tables,
          softwareVersion: this.#opts.softwareVersion ?? '',
          // Whole tables in run form, in pieces (src/agent/table-assembly.ts).
          tableRuns: true,
          hostId: this.#opts.hostId ?? '',
        },
      } satisfies AgentMessage);
    } catch (err) {
      this.#broken(stream, `cannot send Register: ${(err as Error).message}`);
    }
  }

  #onMessage(stream: AgentStream, m: ControllerMessage | MalformedMessage): void {
    if (stream !== this.#stream) return;
    if (m.body === 'malformed') {
      log.warn('controller link: dropped a message that does not decode', { reason: m.reason });
      return;
    }
    if (m.body === 'welcome') {
      this.#onWelcome(m.welcome);
      return;
    }
    if (m.body === 'heartbeatReply') {
      if (this.#state === 'registered' && m.heartbeatReply !== null && typeof m.heartbeatReply === 'object') this.#onBeatAnswered(m.heartbeatReply.seq);
      return;
    }
    const event = EVENT_OF_BODY[m.body];
    if (event === undefined) {
      log.warn('controller link: dropped a message of unknown kind', { body: String((m as { body: unknown }).body) });
      return;
    }
    if (this.#state !== 'registered' && event !== 'controllerError') {
      log.warn('controller link: dropped a message that came before Welcome', { body: m.body });
      return;
    }
    const arg = (m as unknown as Record<string, unknown>)[m.body];
    if (arg === null || typeof arg !== 'object') {
      log.warn('controller link: dropped a message without a body', { body: m.body });
      return;
    }
    if (event === 'controllerError') {
      const e = arg as ControllerError;
      log.warn('controller reported an error', { message: e.message, fatal: e.fatal });
    }
    this.#emit(event, arg as LinkEvents[typeof event]);
  }

  #onWelcome(w: Welcome): void {
    if (this.#state === 'registered') {
      log.warn('controller link: ignored a second Welcome on the same stream');
      return;
    }
    if (this.#welcomeTimer) clearTimeout(this.#welcomeTimer);
    this.#welcomeTimer = null;
    this.#state = 'registered';
    this.#welcome = w;
    this.#backoff.reset();
    const interval = w.heartbeatIntervalMs > 0 ? w.heartbeatIntervalMs : DEFAULT_HEARTBEAT_MS;
    this.#heartbeat = setInterval(() => this.#beat(), interval);
    this.#heartbeat.unref();
    this.lease.welcomed(w.leaseMs);
    if (w.rejectedContainers.length > 0) {
      log.warn('controller rejected containers', { rejected: w.rejectedContainers });
    }
    log.info('registered with controller', { controller: this.#opts.controller, controllerId: w.controllerId, heartbeatMs: interval, leaseMs: w.leaseMs });
    this.#emit('welcome', w);
    // At once rather than an interval from now: its answer marks the end of
    // the tables sent for Register, which is what renews an expired lease.
    this.#beat();
  }

  #beat(): void {
    const seq = ++this.#heartbeatSeq;
    const at = performance.now();
    const heartbeat = { seq, heldIos: this.#opts.heldIos?.() ?? 0, ...(this.#draining ? { draining: true } : {}) };
    if (!this.send({ body: 'heartbeat', heartbeat })) return;
    if (this.lease.leaseMs === 0) return;
    this.#beats.push({ seq, at });
    // A controller that stopped answering must not make this grow without bound.
    if (this.#beats.length > 64) this.#beats.shift();
  }

  #onBeatAnswered(seq: number): void {
    const i = this.#beats.findIndex((b) => b.seq === seq);
    if (i < 0) return;
    const at = (this.#beats[i] as { at: number }).at;
    // Older unanswered beats are superseded: the lease runs from the newest.
    this.#beats.splice(0, i + 1);
    this.lease.answered(at);
  }

  #broken(stream: AgentStream, reason: string): void {
    if (stream !== this.#stream || this.#state === 'closed') return;
    const wasWelcomed = this.#state === 'registered';
    this.#clearTimers();
    this.#teardown();
    this.#scheduleRetry(reason, wasWelcomed);
  }

  #scheduleRetry(reason: string, wasWelcomed: boolean): void {
    if (this.#state === 'closed') return;
    this.#state = 'backoff';
    const retryInMs = this.#backoff.next();
    log.log(wasWelcomed ? 'warn' : 'info', 'controller link down', { controller: this.#opts.controller, reason, retryInMs });
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#open();
    }, retryInMs);
    this.#retryTimer.unref();
    this.#emit('disconnected', { reason, retryInMs, wasWelcomed });
  }

  #clearTimers(): void {
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    if (this.#welcomeTimer) clearTimeout(this.#welcomeTimer);
    this.#heartbeat = null;
    this.#welcomeTimer = null;
  }

  #teardown(): void {
    const stream = this.#stream;
    const client = this.#client;
    this.#stream = null;
    this.#client = null;
    this.#welcome = null;
    // Answers on another stream say nothing about this one's tables.
    this.#beats = [];
    this.lease.disconnected();
    if (stream) {
      // Late events of a dead stream are ignored by the identity checks above.
      stream.on('error', () => undefined);
      stream.cancel();
    }
    client?.close();
  }

  #emit<K extends LinkEventName>(event: K, arg: LinkEvents[K]): void {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const fn of set) {
      try {
        (fn as Listener<K>)(arg);
      } catch (err) {
        // A handler's bug must not take the stream (and every other vdisk) down with it.
        log.error('controller link: event handler failed', { event, err: (err as Error).stack ?? String(err) });
      }
    }
  }
}
