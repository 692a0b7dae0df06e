// A stand-in controller that speaks AgentService over real gRPC, for the
// table-load measurement: creating a 16 TiB vdisk through the real
// controller means 16 M SQLite rows, so the agent side is measured against
// this stub instead. It sends Welcome, ExportSet and TableFull messages the
// bench chooses (TableFull pre-encoded, see table-wire.ts) and reports
// Register and TableAck. Everything else the agent says is ignored.
import * as grpc from '@grpc/grpc-js';
import { agentServiceDefinition } from '../../src/wire/grpc.js';
import type { AgentMessage, ContainerRef, ControllerMessage, Export, MalformedMessage } from '../../src/wire/proto-types.js';

type Stream = grpc.ServerDuplexStream<AgentMessage | MalformedMessage, ControllerMessage | Buffer>;

interface AckWaiter {
  vdiskId: string;
  version: number;
  resolve: (at: number) => void;
  reject: (e: Error) => void;
}

export class StubController {
  readonly #server = new grpc.Server({ 'grpc.max_send_message_length': -1, 'grpc.max_receive_message_length': -1 });
  #stream: Stream | null = null;
  #containers: ContainerRef[] = [];
  #registered: ((c: ContainerRef[]) => void)[] = [];
  #acks: AckWaiter[] = [];
  /** Encoded TableFull per vdisk, re-sent when the agent asks (TableRequest). */
  readonly #tables = new Map<string, Buffer[]>();
  address = '';
  /** Why the last stream ended, if it did. */
  lastEnd = '';

  async start(): Promise<void> {
    const def = agentServiceDefinition();
    const connect = def.Connect!;
    // Pre-encoded messages pass through as they are.
    const service: grpc.ServiceDefinition = {
      Connect: { ...connect, responseSerialize: (v: unknown) => (Buffer.isBuffer(v) ? v : connect.responseSerialize(v)) },
    };
    this.#server.addService(service, { Connect: (call: Stream) => this.#onConnect(call) });
    const port = await new Promise<number>((resolve, reject) =>
      this.#server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    this.address = `127.0.0.1:${port}`;
  }

  /** Resolves with the agent's containers at its next Register (or now, if it is registered and `fresh` is false). */
  registered(fresh = false): Promise<ContainerRef[]> {
    if (!fresh && this.#stream !== null) return Promise.resolve(this.#containers);
    return new Promise((resolve) => this.#registered.push(resolve));
  }

  send(m: ControllerMessage | Buffer): void {
    if (this.#stream === null) throw new Error('stub controller: no agent stream');
    this.#stream.write(m);
  }

  exportSet(exports: Export[]): void {
    this.send({ body: 'exportSet', exportSet: { exports } });
  }

  /** Sends an encoded TableFull and resolves with the time (ms since the epoch) its ack arrives. */
  tableFull(vdiskId: string, version: number, encoded: Buffer | Buffer[], timeoutMs: number): Promise<number> {
    const pieces = Array.isArray(encoded) ? encoded : [encoded];
    this.#tables.set(vdiskId, pieces);
    const acked = this.waitAck(vdiskId, version, timeoutMs);
    for (const p of pieces) this.send(p);
    return acked;
  }

  forget(vdiskId: string): void {
    this.#tables.delete(vdiskId);
  }

  waitAck(vdiskId: string, version: number, timeoutMs: number): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#acks = this.#acks.filter((w) => w !== waiter);
        reject(new Error(`no ack of vdisk ${vdiskId} version ${version} within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter: AckWaiter = {
        vdiskId,
        version,
        resolve: (at) => {
          clearTimeout(timer);
          resolve(at);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.#acks.push(waiter);
    });
  }

  #onConnect(call: Stream): void {
    call.on('data', (m: AgentMessage | MalformedMessage) => {
      if (m.body === 'register') {
        this.#stream = call;
        this.#containers = m.register.containers;
        call.write({
          body: 'welcome',
          welcome: { controllerId: 'bench-stub', agentName: m.register.agentName, heartbeatIntervalMs: 5000, ackTimeoutMs: 60_000, holdTimeoutMs: 10_000, rejectedContainers: [], leaseMs: 0 },
        });
        for (const r of this.#registered.splice(0)) r(this.#containers);
      } else if (m.body === 'tableAck') {
        const at = Date.now();
        const a = m.tableAck;
        for (const w of this.#acks.filter((x) => x.vdiskId === a.vdiskId && x.version <= a.version)) {
          this.#acks.splice(this.#acks.indexOf(w), 1);
          w.resolve(at);
        }
      } else if (m.body === 'tableRequest') {
        const t = this.#tables.get(m.tableRequest.vdiskId);
        for (const p of t ?? []) call.write(p);
      }
    });
    const end = (why: string): void => {
      if (this.#stream !== call) return;
      this.#stream = null;
      this.lastEnd = why;
      for (const w of this.#acks.splice(0)) w.reject(new Error(`agent stream ended: ${why}`));
    };
    call.on('error', (e: Error) => end(e.message));
    call.on('cancelled', () => end('cancelled by the agent'));
    call.on('end', () => {
      end('ended by the agent');
      call.end();
    });
  }

  async close(): Promise<void> {
    this.#stream?.end();
    await new Promise<void>((resolve) => this.#server.tryShutdown(() => resolve()));
    this.#server.forceShutdown();
  }
}
