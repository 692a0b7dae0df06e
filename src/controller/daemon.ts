// The controller daemon: opens the database, serves AgentService and
// AdminService on one gRPC port. Loopback by default; any other address
// needs TLS or a shared token (metadata `authorization: Bearer <token>`).

import * as grpc from '@grpc/grpc-js';
import { timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import { AUTH_METADATA_KEY, adminServiceDefinition, agentServiceDefinition } from '../wire/grpc.js';
import { parseHostPort } from '../util/size.js';
import { log } from '../util/log.js';
import { ControllerMetrics, DEFAULT_CONTROLLER_METRICS_PORT, startMetricsEndpoint, type MetricsEndpoint } from '../metrics/index.js';
import { Admin, adminImplementation } from './admin.js';
import { ControllerDb } from './db.js';
import { Controller, type ControllerOptions } from './service.js';
import type { AgentCall } from './agent-link.js';

export const DEFAULT_CONTROLLER_PORT = 7360;

export interface TlsOptions {
  /** CA that client certificates must chain to (mutual TLS when given). */
  ca?: Buffer;
  cert: Buffer;
  key: Buffer;
}

export interface StartControllerOptions extends ControllerOptions {
  dbPath: string;
  /** HOST:PORT; default 127.0.0.1:7360. Port 0 picks a free port. */
  listen?: string;
  /** Shared secret every call must carry. */
  token?: string;
  tls?: TlsOptions;
  /** Prometheus `GET /metrics` on HOST:PORT (":PORT" is loopback; port 0 picks one). No endpoint when not given. */
  metricsListen?: string;
}

export interface ControllerHandle {
  /** HOST:PORT actually bound (with the real port when 0 was asked for). */
  readonly address: string;
  readonly port: number;
  readonly controller: Controller;
  readonly admin: Admin;
  readonly db: ControllerDb;
  /** The gRPC server (AgentService and AdminService). */
  readonly server: grpc.Server;
  /** HOST:PORT of the metrics endpoint as bound, or null when metricsListen was not given. */
  readonly metricsAddress: string | null;
  close(): Promise<void>;
}

export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  return isIP(h) === 4 && h.startsWith('127.');
}

/** A metadata check: null when allowed, else why not. */
export function tokenAuthorizer(token: string | undefined): (md: grpc.Metadata) => string | null {
  if (!token) return () => null;
  const want = Buffer.from(`Bearer ${token}`);
  return (md) => {
    const got = md.get(AUTH_METADATA_KEY)[0];
    if (got === undefined) return 'missing authorization token';
    const b = Buffer.from(String(got));
    return b.length === want.length && timingSafeEqual(b, want) ? null : 'bad authorization token';
  };
}

export async function startController(opts: StartControllerOptions): Promise<ControllerHandle> {
  const { host, port } = parseHostPort(opts.listen ?? `127.0.0.1:${DEFAULT_CONTROLLER_PORT}`, DEFAULT_CONTROLLER_PORT);
  if (!isLoopback(host) && !opts.tls && !opts.token) {
    throw new Error(`refusing to listen on ${host}:${port} without TLS or a token: the admin API would be open to the network`);
  }
  const db = new ControllerDb(opts.dbPath);
  const controller = new Controller(db, opts);
  const metrics = opts.metricsListen === undefined ? null : new ControllerMetrics();
  metrics?.observe(controller);
  const admin = new Admin(controller);
  const authorize = tokenAuthorizer(opts.token);
  const server = new grpc.Server({
    'grpc.keepalive_time_ms': 10_000,
    'grpc.keepalive_timeout_ms': 5_000,
    interceptors: metrics === null ? [] : [metrics.interceptor],
  });
  server.addService(agentServiceDefinition(), {
    Connect: (call: AgentCall) => {
      const denied = authorize(call.metadata);
      if (denied !== null) {
        log.warn(`agent stream from ${call.getPeer()} refused: ${denied}`);
        call.emit('error', { code: grpc.status.UNAUTHENTICATED, details: denied });
        return;
      }
      controller.connect(call);
    },
  });
  server.addService(adminServiceDefinition(), adminImplementation(admin, authorize));
  const creds = opts.tls
    ? grpc.ServerCredentials.createSsl(opts.tls.ca ?? null, [{ cert_chain: opts.tls.cert, private_key: opts.tls.key }], opts.tls.ca !== undefined)
    : grpc.ServerCredentials.createInsecure();
  const bindHost = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
  let endpoint: MetricsEndpoint | null = null;
  if (metrics !== null) {
    try {
      endpoint = await startMetricsEndpoint(metrics.registry, opts.metricsListen as string, DEFAULT_CONTROLLER_METRICS_PORT, 'controller');
    } catch (err) {
      controller.close();
      db.close();
      throw err;
    }
  }
  let bound: number;
  try {
    bound = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`${bindHost}:${port}`, creds, (err, p) => (err ? reject(err) : resolve(p))),
    );
  } catch (err) {
    await endpoint?.close();
    controller.close();
    db.close();
    throw new Error(`controller cannot listen on ${bindHost}:${port}: ${(err as Error).message}`);
  }
  const address = `${bindHost}:${bound}`;
  log.info(`controller listening on ${address} (db ${opts.dbPath})`);
  // Migrations a previous run left running go on (each waits for an agent that can copy).
  controller.migrations.resumeAll();
  let closed: Promise<void> | undefined;
  return {
    address,
    port: bound,
    controller,
    admin,
    db,
    server,
    metricsAddress: endpoint?.address ?? null,
    close() {
      closed ??= (async () => {
        await endpoint?.close();
        controller.close();
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => {
            server.forceShutdown();
            resolve();
          }, 2000);
          server.tryShutdown(() => {
            clearTimeout(t);
            resolve();
          });
        });
        db.close();
        log.info('controller stopped');
      })();
      return closed;
    },
  };
}
