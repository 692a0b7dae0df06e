// From the effective configuration to the options of the three daemons'
// library entries (startController, startAgent, startAppliance), so that
// flags, environment and the YAML file mean the same thing whichever command
// or unit starts the daemon (run.ts calls these).
import type { TlsMaterial } from '../security/tls.js';
import { ConfigError, type TabulaConfig, type TlsConfig } from '../config/schema.js';
import { resolveTls, resolveToken } from '../config/secrets.js';
import type { IscsiClientOptions } from '../container/iscsi-client.js';

/** What startController takes (kept structural so that this module loads without the controller). */
export interface ControllerDaemonOptions {
  dbPath: string;
  listen: string;
  token?: string;
  tls?: { cert: Buffer; key: Buffer; ca?: Buffer };
  ackTimeoutMs?: number;
  holdTimeoutMs?: number;
  metricsListen?: string;
  commandTimeoutMs?: number;
  /** controller.mirrors.rebuild-delay in ms (default the controller's, 10 min). */
  rebuildDelayMs?: number;
  retention?: { faults?: { maxRows?: number; maxAgeDays?: number }; events?: { maxRows?: number; maxAgeDays?: number } };
}

export interface AgentDaemonOptions {
  controller: string;
  name: string;
  portals: string[];
  containers: string[];
  holdTimeoutMs?: number;
  /** agent.host-id (default: the agent's, /etc/machine-id or the host name). */
  hostId?: string;
  /** agent.rescan-interval in ms (0 = off; default the agent's, 60 s). */
  rescanIntervalMs?: number;
  token?: string;
  /** PEM contents for a TLS channel to the controller (ca of its certificate; cert+key of the agent's own). */
  tls?: TlsMaterial;
  metricsListen?: string;
  /** CHAP the agent requires for every target and for discovery (security.chap), and its initiator list. */
  iscsiAuth?: IscsiAuthOptions;
  /** How the agent's initiator reaches iscsi:// containers (agent.iscsi). */
  containerOptions?: { iscsi: IscsiClientOptions };
}

/** What AgentTargets takes (structural, like the rest of this module). */
export interface IscsiAuthOptions {
  chap?: { user: string; secret: string };
  mutualChap?: { user: string; secret: string };
  /** security.allowed-initiators: the only initiators that may log in to any target of the agent. */
  allowedInitiators?: string[];
}

export interface ApplianceDaemonOptions {
  data: string;
  portal: string;
  controllerListen: string;
  /** Unset: disk0 is created at the default size and never grown. */
  size?: number;
  token?: string;
  holdTimeoutMs?: number;
  iscsiAuth?: IscsiAuthOptions;
  controllerMetricsListen?: string;
  agentMetricsListen?: string;
}

const ms = (sec: number | undefined): number | undefined => (sec === undefined ? undefined : Math.round(sec * 1000));

/** The controller's TLS: its certificate and key are required (the schema says so for non-agent roles). */
function serverTls(tls: TlsConfig | undefined): ControllerDaemonOptions['tls'] {
  const m = resolveTls(tls);
  if (m === undefined) return undefined;
  if (m.cert === undefined || m.key === undefined) throw new ConfigError('security.tls', ["the controller needs cert and key"]);
  return { cert: m.cert, key: m.key, ca: m.ca };
}

/** The settings a running daemon can take again on SIGHUP. */
export interface SecuritySettings {
  token?: string;
  tls?: TlsMaterial;
}

export function securitySettings(cfg: TabulaConfig): SecuritySettings {
  return { token: resolveToken(cfg), tls: cfg.role === 'agent' ? resolveTls(cfg.security.tls) : serverTls(cfg.security.tls) };
}

export function controllerOptions(cfg: TabulaConfig): ControllerDaemonOptions {
  return {
    dbPath: cfg.controller.db,
    listen: cfg.controller.listen,
    token: resolveToken(cfg),
    tls: serverTls(cfg.security.tls),
    ackTimeoutMs: ms(cfg.controller.ackTimeoutSec),
    holdTimeoutMs: ms(cfg.controller.holdTimeoutSec),
    metricsListen: cfg.controller.metricsListen,
    ...(cfg.controller.commandTimeoutSec === undefined ? {} : { commandTimeoutMs: ms(cfg.controller.commandTimeoutSec) }),
    ...(cfg.controller.durableIntervalSec === undefined ? {} : { durableIntervalMs: ms(cfg.controller.durableIntervalSec) }),
    ...(cfg.controller.mirrors.rebuildDelaySec === undefined ? {} : { rebuildDelayMs: cfg.controller.mirrors.rebuildDelaySec * 1000 }),
    ...retentionOptions(cfg),
  };
}

/** `{ retention }` when controller.retention sets anything, else nothing (the controller's defaults). */
function retentionOptions(cfg: TabulaConfig): Pick<ControllerDaemonOptions, 'retention'> {
  const r = cfg.controller.retention;
  if (Object.keys(r.faults).length === 0 && Object.keys(r.events).length === 0) return {};
  return { retention: { faults: { ...r.faults }, events: { ...r.events } } };
}

/** security.chap and security.allowed-initiators as the agent's iSCSI login settings (undefined: neither set). */
export function iscsiAuth(cfg: TabulaConfig): IscsiAuthOptions | undefined {
  const c = cfg.security.chap;
  const allowed = cfg.security.allowedInitiators;
  if (c === undefined && allowed.length === 0) return undefined;
  const out: IscsiAuthOptions = {};
  if (c !== undefined) {
    out.chap = { user: c.user, secret: c.secret };
    if (c.mutualUser !== undefined && c.mutualSecret !== undefined) out.mutualChap = { user: c.mutualUser, secret: c.mutualSecret };
  }
  if (allowed.length > 0) out.allowedInitiators = [...allowed];
  return out;
}

/** `{ iscsiAuth }` when CHAP or an initiator list is configured, else nothing (no key at all). */
function withAuth(cfg: TabulaConfig): { iscsiAuth?: IscsiAuthOptions } {
  const a = iscsiAuth(cfg);
  return a === undefined ? {} : { iscsiAuth: a };
}

export function agentOptions(cfg: TabulaConfig): AgentDaemonOptions {
  return {
    controller: cfg.controller.address,
    name: cfg.agent.name,
    portals: [...cfg.agent.portals],
    containers: [...cfg.agent.containers],
    holdTimeoutMs: ms(cfg.agent.holdTimeoutSec),
    ...(cfg.agent.hostId === undefined ? {} : { hostId: cfg.agent.hostId }),
    ...(cfg.agent.rescanIntervalSec === undefined ? {} : { rescanIntervalMs: cfg.agent.rescanIntervalSec * 1000 }),
    token: resolveToken(cfg),
    tls: resolveTls(cfg.security.tls),
    metricsListen: cfg.agent.metricsListen,
    ...withAuth(cfg),
    ...withIscsi(cfg),
  };
}

/** `{ containerOptions }` when agent.iscsi sets anything, else nothing (the initiator's defaults apply). */
function withIscsi(cfg: TabulaConfig): { containerOptions?: { iscsi: IscsiClientOptions } } {
  return Object.keys(cfg.agent.iscsi).length === 0 ? {} : { containerOptions: { iscsi: iscsiClient(cfg) } };
}

/** agent.iscsi as the initiator's options; I/O to an unreachable container is held as long as faulted I/O (agent.hold-timeout). */
export function iscsiClient(cfg: TabulaConfig): IscsiClientOptions {
  const i = cfg.agent.iscsi;
  const out: IscsiClientOptions = {};
  if (i.initiatorName !== undefined) out.initiatorName = i.initiatorName;
  if (i.mutualChap !== undefined) out.mutualChap = { ...i.mutualChap };
  if (i.digest !== undefined) {
    out.headerDigest = i.digest;
    out.dataDigest = i.digest;
  }
  if (i.queueDepth !== undefined) out.queueDepth = i.queueDepth;
  if (i.sessions !== undefined) out.sessions = i.sessions;
  if (i.commandTimeoutSec !== undefined) out.commandTimeoutMs = Math.round(i.commandTimeoutSec * 1000);
  const hold = ms(cfg.agent.holdTimeoutSec);
  if (hold !== undefined) out.holdMs = hold;
  return out;
}

export function applianceOptions(cfg: TabulaConfig): ApplianceDaemonOptions {
  return {
    data: cfg.dataDir,
    portal: cfg.agent.portals[0]!,
    controllerListen: cfg.controller.listen,
    ...(cfg.allInOne.size === undefined ? {} : { size: cfg.allInOne.size }),
    token: resolveToken(cfg),
    holdTimeoutMs: ms(cfg.agent.holdTimeoutSec ?? cfg.controller.holdTimeoutSec),
    controllerMetricsListen: cfg.controller.metricsListen,
    agentMetricsListen: cfg.agent.metricsListen,
    ...withAuth(cfg),
  };
}
