// The Prometheus scrape endpoint: `GET /metrics` in the text exposition
// format, on a plain node:http server of its own (not the gRPC port, which
// may need TLS or a token). Loopback unless an address says otherwise.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { parseHostPort } from '../util/size.js';
import { log } from '../util/log.js';

export const DEFAULT_CONTROLLER_METRICS_PORT = 9360;
export const DEFAULT_AGENT_METRICS_PORT = 9361;

const LOOPBACK = '127.0.0.1';

export interface MetricsEndpoint {
  /** HOST:PORT as bound (the real port when 0 was asked for). */
  readonly address: string;
  readonly port: number;
  close(): Promise<void>;
}

/**
 * `metricsListen` as host and port: "HOST:PORT", "HOST" (default port),
 * ":PORT" or "PORT" (loopback). Port 0 picks a free one.
 */
export function parseMetricsListen(input: string, defaultPort: number): { host: string; port: number } {
  const s = input.trim();
  if (/^\d+$/.test(s)) return parseHostPort(`${LOOPBACK}:${s}`, defaultPort);
  if (s.startsWith(':')) return parseHostPort(`${LOOPBACK}${s}`, defaultPort);
  return parseHostPort(s, defaultPort);
}

/** Serves `registry` on `GET /metrics` at `listen`; rejects (naming the address) when it cannot bind. */
export async function startMetricsEndpoint(registry: Registry, listen: string, defaultPort: number, owner: string): Promise<MetricsEndpoint> {
  const { host, port } = parseMetricsListen(listen, defaultPort);
  const server = createServer((req, res) => void serve(registry, owner, req, res));
  // A scraper's keep-alive connection must not keep the process alive.
  server.on('connection', (s) => s.unref());
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    throw new Error(`${owner} metrics cannot listen on ${host}:${port}: ${(err as Error).message}`);
  }
  server.on('error', (err) => log.error(`${owner} metrics endpoint: ${err.message}`));
  const bound = (server.address() as AddressInfo).port;
  const address = host.includes(':') ? `[${host}]:${bound}` : `${host}:${bound}`;
  log.info(`${owner} metrics on http://${address}/metrics`);
  let closed: Promise<void> | undefined;
  return {
    address,
    port: bound,
    close() {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closed;
    },
  };
}

async function serve(registry: Registry, owner: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? '/').split('?', 1)[0];
  if (path !== '/metrics') {
    res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end(`not found: ${path} (metrics are at /metrics)\n`);
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain; charset=utf-8' }).end(`method ${req.method} not allowed on /metrics\n`);
    return;
  }
  let body: string;
  try {
    body = await registry.metrics();
  } catch (err) {
    const msg = `${owner} metrics: collecting failed: ${(err as Error).message}`;
    log.warn(msg);
    res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end(`${msg}\n`);
    return;
  }
  res.writeHead(200, { 'content-type': registry.contentType, 'content-length': Buffer.byteLength(body) });
  res.end(req.method === 'HEAD' ? undefined : body);
}
