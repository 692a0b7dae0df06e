// The agent's end of AgentService.Connect: one long-lived bidirectional
// stream to the controller. Registers on every new stream, sends heartbeats
// at the interval the Welcome names, and reconnects with capped, jittered
// exponential backoff whenever the controller is unreachable or the stream
// breaks. Bad or unknown messages are logged and dropped; nothing the
// controller sends can crash the agent. The rest of the agent sees typed
// events and a `send` that says whether the message left.
import { AgentServiceClient, type AgentStream, type ClientOptions } from '../wire/grpc.js';
import type {
  AgentMessage,
  ContainerRef,
  ControllerError,
  ControllerMessage,
  CopyCommand,
  ExportSet,
  Fault,
  FaultReply,
  Fence,
  MalformedMessage,
  ReleaseReply,
  TableDeltaMsg,
  TableFull,
  TableVersion,
  Welcome,
  ZeroCommand,
} from '../wire/proto-types.js';
import { log } from '../util/log.js';
import { Backoff, type BackoffOptions } from './backoff.js';

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
  fence: Fence;
  controllerError: ControllerError;
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
  fence: 'fence',
  error: 'controllerError',
};

export class ControllerLink {
  readonly #opts: ControllerLinkOptions;
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
  #connects = 0;

  constructor(opts: ControllerLinkOptions) {
    this.#opts = opts;
    this.#backoff = new Backoff(opts.backoff);
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

  sendFault(fault: Fault): boolean {
    return this.send({ body: 'fault', fault });
  }

  async close(): Promise<void> {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#clearTimers();
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
    const client = new AgentServiceClient(this.#opts.controller, { token: this.#opts.token, credentials: this.#opts.credentials });
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
    this.#heartbeat = setInterval(() => {
      this.send({ body: 'heartbeat', heartbeat: { seq: ++this.#heartbeatSeq, heldIos: this.#opts.heldIos?.() ?? 0 } });
    }, interval);
    this.#heartbeat.unref();
    if (w.rejectedContainers.length > 0) {
      log.warn('controller rejected containers', { rejected: w.rejectedContainers });
    }
    log.info('registered with controller', { controller: this.#opts.controller, controllerId: w.controllerId, heartbeatMs: interval });
    this.#emit('welcome', w);
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
