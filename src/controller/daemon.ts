// The controller daemon: opens the database, serves AgentService and
// AdminService on one gRPC port. Loopback by default; any other address
// needs mutual TLS or a shared token (metadata `authorization: Bearer <token>`).
// The token and the TLS files can be replaced while running (reload()).

import * as grpc from '@grpc/grpc-js';
import { timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import { AUTH_METADATA_KEY, MESSAGE_LIMIT_OPTIONS, adminServiceDefinition, agentServiceDefinition } from '../wire/grpc.js';
import { parseHostPort } from '../util/size.js';
import { log } from '../util/log.js';
import { ReloadableServerCredentials, sameMaterial, type ReloadOutcome } from '../security/tls.js';
import { ControllerMetrics, DEFAULT_CONTROLLER_METRICS_PORT, startMetricsEndpoint, type MetricsEndpoint } from '../metrics/index.js';
import { Admin, adminImplementation } from './admin.js';
import { ControllerDb } from './db.js';
import { Controller, type ControllerOptions } from './controller.js';
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
  /** TLS on the API; with `ca`, client certificates are required (mutual TLS). */
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
  /**
   * Applies a new token and TLS files (new connections). Throws, changing
   * nothing, when they are unusable or would leave a non-loopback API open.
   */
  reload(next: ControllerReload): ReloadOutcome;
  close(): Promise<void>;
}

/** The security settings as they should now be (absent = none). */
export interface ControllerReload {
  token?: string;
  tls?: TlsOptions;
}


/** Why listening on `host` would expose the API, or null when it is protected. */
export function exposure(host: string, token: string | undefined, tls: { ca?: Buffer } | undefined): string | null {
  if (isLoopback(host) || token || tls?.ca !== undefined) return null;
  const why = tls ? 'TLS without client certificates (--tls-ca)' : 'neither TLS nor a token';
  return `refusing to listen on ${host} with ${why}: the admin API would be open to the network (give --token/--token-file, or --tls-cert, --tls-key and --tls-ca)`;
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
  const exposed = exposure(host, opts.token, opts.tls);
  if (exposed !== null) throw new Error(exposed);
  // Built before the database opens so that bad certificate files fail first, naming themselves.
  const tlsCreds = opts.tls ? new ReloadableServerCredentials(opts.tls) : null;
  const db = new ControllerDb(opts.dbPath);
  const controller = new Controller(db, opts);
  const metrics = opts.metricsListen === undefined ? null : new ControllerMetrics();
  metrics?.observe(controller);
  const admin = new Admin(controller);
  let token = opts.token;
  let check = tokenAuthorizer(token);
  const authorize = (md: grpc.Metadata): string | null => check(md);
  const server = new grpc.Server({
    ...MESSAGE_LIMIT_OPTIONS,
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
  const creds = tlsCreds ?? grpc.ServerCredentials.createInsecure();
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
  // Degraded segments are found again from the tables: a rebuild cut short by a restart goes on.
  controller.rebuild.start();
  let closed: Promise<void> | undefined;
  return {
    address,
    port: bound,
    controller,
    admin,
    db,
    server,
    metricsAddress: endpoint?.address ?? null,
    reload(next) {
      const out: ReloadOutcome = { applied: [], needsRestart: [] };
      const tlsChanged = !sameMaterial(tlsCreds?.material, next.tls);
      let applyTls = false;
      if (tlsChanged) {
        if (tlsCreds === null || next.tls === undefined) {
          out.needsRestart.push(`TLS: turning it ${tlsCreds === null ? 'on' : 'off'} takes a restart`);
        } else if ((next.tls.ca !== undefined) !== tlsCreds.mutual) {
          out.needsRestart.push(`TLS: turning client certificates ${tlsCreds.mutual ? 'off' : 'on'} takes a restart`);
        } else {
          applyTls = true;
        }
      }
      // The check uses the TLS that will be in force after this reload.
      const exposed = exposure(host, next.token, applyTls ? next.tls : tlsCreds?.material);
      if (next.token !== token && exposed !== null) throw new Error(`not dropping the token: ${exposed}`);
      if (applyTls && tlsCreds !== null && next.tls !== undefined) {
        tlsCreds.reload(next.tls); // throws before anything else changes
        out.applied.push('TLS certificate and key (new connections)');
      }
      if (next.token !== token) {
        token = next.token;
        check = tokenAuthorizer(token);
        out.applied.push(token === undefined ? 'token (removed)' : 'token');
      }
      return out;
    },
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
