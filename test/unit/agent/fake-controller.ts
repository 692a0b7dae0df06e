// A controller stand-in for agent tests: a real grpc-js server speaking
// AgentService.Connect on loopback, recording what each agent stream sends
// and sending whatever a test tells it to (including raw bytes that are not
// a ControllerMessage). Every wait is bounded.
import * as grpc from '@grpc/grpc-js';
import { agentServiceDefinition } from '../../../src/wire/grpc.js';
import type { AgentMessage, ControllerMessage, MalformedMessage, Welcome } from '../../../src/wire/proto-types.js';

type Body = AgentMessage['body'];
type Of<B extends Body> = Extract<AgentMessage, { body: B }>;

export class FakeStream {
  readonly received: (AgentMessage | MalformedMessage)[] = [];
  #unread: (AgentMessage | MalformedMessage)[] = [];
  #wake: (() => void) | null = null;
  ended = false;

  constructor(readonly call: grpc.ServerDuplexStream<AgentMessage | MalformedMessage, ControllerMessage | Buffer>) {
    call.on('data', (m: AgentMessage | MalformedMessage) => {
      this.received.push(m);
      this.#unread.push(m);
      this.#wake?.();
    });
    const end = (): void => {
      this.ended = true;
      this.#wake?.();
    };
    call.on('end', end);
    call.on('error', end);
    call.on('cancelled', end);
    call.on('close', end);
  }

  /** The next unread message with this body (others stay unread); throws after `ms`. */
  async take<B extends Body>(body: B, ms = 5000): Promise<Of<B>> {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.#unread.findIndex((m) => m.body === body);
      if (i >= 0) return this.#unread.splice(i, 1)[0] as Of<B>;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${body} from the agent within ${ms} ms (unread: ${this.#unread.map((m) => m.body).join(', ') || 'none'})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(t);
          this.#wake = null;
          resolve();
        };
      });
    }
  }

  /** True if no message with this body arrives within `ms`. */
  async none(body: Body, ms: number): Promise<boolean> {
    try {
      await this.take(body, ms);
      return false;
    } catch {
      return true;
    }
  }

  send(m: ControllerMessage | Buffer): void {
    this.call.write(m);
  }

  welcome(w: Partial<Welcome> = {}): void {
    this.send({
      body: 'welcome',
      welcome: {
        controllerId: 'fake-controller',
        agentName: '',
        heartbeatIntervalMs: 200,
        ackTimeoutMs: 5000,
        holdTimeoutMs: 3000,
        rejectedContainers: [],
        leaseMs: 0,
        ...w,
      },
    });
  }

  /** Ends the stream from the controller side (status OK). */
  end(): void {
    this.call.end();
  }
}

export class FakeController {
  readonly streams: FakeStream[] = [];
  #server: grpc.Server;
  #waiters: (() => void)[] = [];
  #taken = 0;

  private constructor(
    server: grpc.Server,
    readonly port: number,
  ) {
    this.#server = server;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  static async start(port = 0): Promise<FakeController> {
    const server = new grpc.Server();
    const def = { ...agentServiceDefinition() };
    const connect = def.Connect as grpc.MethodDefinition<AgentMessage, ControllerMessage>;
    // Raw Buffers go out as they are: lets a test send bytes that are no ControllerMessage.
    def.Connect = { ...connect, responseSerialize: (v: ControllerMessage | Buffer) => (Buffer.isBuffer(v) ? v : connect.responseSerialize(v)) } as grpc.MethodDefinition<unknown, unknown>;
    let self: FakeController | undefined;
    server.addService(def, {
      Connect: (call: grpc.ServerDuplexStream<AgentMessage | MalformedMessage, ControllerMessage | Buffer>) => {
        if (self === undefined) return;
        self.streams.push(new FakeStream(call));
        for (const w of self.#waiters.splice(0)) w();
      },
    });
    const bound = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    self = new FakeController(server, bound);
    return self;
  }

  /** The next stream not yet returned by nextStream (in connection order); throws after `ms`. */
  async nextStream(ms = 5000): Promise<FakeStream> {
    const deadline = Date.now() + ms;
    while (this.streams.length <= this.#taken) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no agent stream within ${ms} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.streams[this.#taken++] as FakeStream;
  }

  /** A stream that has registered, welcomed (the usual start of every test). */
  async accept(w: Partial<Welcome> = {}, ms = 5000): Promise<{ stream: FakeStream; register: Extract<AgentMessage, { body: 'register' }>['register'] }> {
    const stream = await this.nextStream(ms);
    const reg = await stream.take('register', ms);
    stream.welcome(w);
    return { stream, register: reg.register };
  }

  /** Like a SIGKILL of the controller: every stream dies, the port closes. */
  async stop(): Promise<void> {
    this.#server.forceShutdown();
  }
}
