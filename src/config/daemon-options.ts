// From the effective configuration to the options of the three daemons'
// library entries (startController, startAgent, startAppliance). The CLI
// handlers (or src/config/service.ts, the systemd entry) call these so that
// flags, environment and the YAML file mean the same thing everywhere.
import { readFileSync } from 'node:fs';
import type { TabulaConfig, TlsConfig } from './schema.js';
import { ConfigError } from './schema.js';

/** What startController takes (kept structural so that this module loads without the controller). */
export interface ControllerDaemonOptions {
  dbPath: string;
  listen: string;
  token?: string;
  tls?: { cert: Buffer; key: Buffer; ca?: Buffer };
  ackTimeoutMs?: number;
  holdTimeoutMs?: number;
}

export interface AgentDaemonOptions {
  controller: string;
  name: string;
  portals: string[];
  containers: string[];
  holdTimeoutMs?: number;
  token?: string;
  /** PEM files for a TLS channel to the controller (build grpc credentials from them). */
  tls?: { cert: Buffer; key: Buffer; ca?: Buffer };
}

export interface ApplianceDaemonOptions {
  data: string;
  portal: string;
  controllerListen: string;
  size: number;
  token?: string;
  holdTimeoutMs?: number;
}

const ms = (sec: number | undefined): number | undefined => (sec === undefined ? undefined : Math.round(sec * 1000));

function readSecretFile(path: string, key: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new ConfigError(key, [`cannot read ${path}: ${(e as Error).message}`]);
  }
}

/** The shared token: security.token, or the first line of security.token-file. */
export function resolveToken(cfg: TabulaConfig): string | undefined {
  if (cfg.security.token !== undefined) return cfg.security.token;
  if (cfg.security.tokenFile === undefined) return undefined;
  const t = readSecretFile(cfg.security.tokenFile, 'security.token-file').toString('utf8').split('\n')[0]!.trim();
  if (t === '') throw new ConfigError('security.token-file', [`${cfg.security.tokenFile} is empty`]);
  return t;
}

export function resolveTls(tls: TlsConfig | undefined): { cert: Buffer; key: Buffer; ca?: Buffer } | undefined {
  if (!tls) return undefined;
  return {
    cert: readSecretFile(tls.cert, 'security.tls.cert'),
    key: readSecretFile(tls.key, 'security.tls.key'),
    ca: tls.ca === undefined ? undefined : readSecretFile(tls.ca, 'security.tls.ca'),
  };
}

export function controllerOptions(cfg: TabulaConfig): ControllerDaemonOptions {
  return {
    dbPath: cfg.controller.db,
    listen: cfg.controller.listen,
    token: resolveToken(cfg),
    tls: resolveTls(cfg.security.tls),
    ackTimeoutMs: ms(cfg.controller.ackTimeoutSec),
    holdTimeoutMs: ms(cfg.controller.holdTimeoutSec),
  };
}

export function agentOptions(cfg: TabulaConfig): AgentDaemonOptions {
  return {
    controller: cfg.controller.address,
    name: cfg.agent.name,
    portals: [...cfg.agent.portals],
    containers: [...cfg.agent.containers],
    holdTimeoutMs: ms(cfg.agent.holdTimeoutSec),
    token: resolveToken(cfg),
    tls: resolveTls(cfg.security.tls),
  };
}

export function applianceOptions(cfg: TabulaConfig): ApplianceDaemonOptions {
  return {
    data: cfg.dataDir,
    portal: cfg.agent.portals[0]!,
    controllerListen: cfg.controller.listen,
    size: cfg.allInOne.size,
    token: resolveToken(cfg),
    holdTimeoutMs: ms(cfg.agent.holdTimeoutSec ?? cfg.controller.holdTimeoutSec),
  };
}

/**
 * Settings the configuration accepts but this version's daemons do not apply
 * yet, so `config check` and the service log say so instead of pretending.
 */
export function notApplied(cfg: TabulaConfig): string[] {
  const out: string[] = [];
  if (cfg.security.chap) out.push('security.chap: per-export CHAP is not enforced by the agent yet; use `tabula target --chap` for a standalone target');
  if (cfg.security.allowedInitiators.length > 0) out.push('security.allowed-initiators: initiator ACLs are not enforced by the agent yet');
  if (cfg.role === 'all-in-one' && cfg.security.tls) out.push('security.tls: the all-in-one node talks to its controller in-process; TLS applies to controller and agent roles');
  return out;
}
