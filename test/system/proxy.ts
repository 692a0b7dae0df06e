// A TCP proxy on loopback that a test can cut and heal: a network partition
// between one agent and the controller while both processes keep running.
import { createServer, connect, type Server, type Socket } from 'node:net';

export class CuttableProxy {
  readonly #sockets = new Set<Socket>();
  #open = true;

  private constructor(
    readonly server: Server,
    readonly port: number,
  ) {}

  /** Listens on a free loopback port and forwards every connection to HOST:PORT `target`. */
  static async start(target: string): Promise<CuttableProxy> {
    const [host, port] = target.split(':') as [string, string];
    let proxy: CuttableProxy | undefined;
    const server = createServer((client) => {
      if (proxy === undefined || !proxy.#open) {
        client.destroy();
        return;
      }
      const upstream = connect({ host, port: Number(port) });
      const live = proxy.#sockets;
      for (const s of [client, upstream]) {
        live.add(s);
        s.on('close', () => live.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream);
      upstream.pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const addr = server.address();
    if (addr === null || typeof addr !== 'object') throw new Error('proxy has no address');
    proxy = new CuttableProxy(server, addr.port);
    return proxy;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Drops every connection and refuses new ones until heal(). */
  cut(): void {
    this.#open = false;
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
  }

  heal(): void {
    this.#open = true;
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
