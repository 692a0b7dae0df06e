// Runs one daemon (controller, agent, all-in-one or storage) from an effective
// configuration until SIGINT/SIGTERM, and reloads on SIGHUP. The CLI
// commands (`tabula controller|agent|up`) and the systemd units
// (systemd.ts) both come through here, so a setting means the same thing
// whichever way it was given.
//
// SIGHUP reads the configuration again (the same file, environment and
// flags; flags still win) and applies what a running daemon can take: the
// log level, the token (controller), the TLS certificate files (new
// connections). Everything else that changed is logged as needing a
// restart. A configuration that does not validate, or files that do not
// load, change nothing: the daemon keeps running as it was and logs why.
import { log, setLogLevel } from '../util/log.js';
import type { ReloadOutcome } from '../security/tls.js';
import type { LoadedConfig } from '../config/load.js';
import { notApplied, type Role, type TabulaConfig } from '../config/schema.js';
import { resolveToken } from '../config/secrets.js';
import { agentOptions, applianceOptions, controllerOptions, securitySettings, type SecuritySettings } from './options.js';
import { prepareNode } from './prepare.js';
import { runUntilSignal } from './signals.js';

export interface RunDaemonOptions {
  role: Role;
  /** Loads the effective configuration; called at start and again on every SIGHUP. */
  load: () => LoadedConfig;
  /** Prepare the data and container devices first (the appliance's service). */
  prepare?: boolean;
  /**
   * Called once serving: `line` is what the CLI prints, `summary` a longer form
   * for the service's journal. Default: `line` on stdout (what `tabula
   * controller|agent|up` print, and scripts wait for).
   */
  ready?: (r: { line: string; summary: string }) => void;
}

interface Running {
  line: string;
  summary: string;
  reload(next: SecuritySettings): ReloadOutcome;
  close(): Promise<void>;
}

/** Settings that a running daemon of each role uses but cannot change, by the key the file spells. */
const RESTART_KEYS: Readonly<Record<Role, Readonly<Record<string, (c: TabulaConfig) => unknown>>>> = {
  controller: {
    'controller.listen': (c) => c.controller.listen,
    'controller.db': (c) => c.controller.db,
    'controller.ack-timeout': (c) => c.controller.ackTimeoutSec,
    'controller.hold-timeout': (c) => c.controller.holdTimeoutSec,
    'controller.metrics-listen': (c) => c.controller.metricsListen,
    'controller.command-timeout': (c) => c.controller.commandTimeoutSec,
    'controller.durable-interval': (c) => c.controller.durableIntervalSec,
    'controller.retention': (c) => c.controller.retention,
    'controller.mirrors': (c) => c.controller.mirrors,
  },
  agent: {
    'controller.address': (c) => c.controller.address,
    'agent.name': (c) => c.agent.name,
    'agent.portals': (c) => c.agent.portals,
    'agent.containers': (c) => c.agent.containers,
    'agent.hold-timeout': (c) => c.agent.holdTimeoutSec,
    'agent.metrics-listen': (c) => c.agent.metricsListen,
    'agent.host-id': (c) => c.agent.hostId,
    'agent.rescan-interval': (c) => c.agent.rescanIntervalSec,
    // The initiator's settings are fixed when its sessions log in.
    'agent.iscsi': (c) => c.agent.iscsi,
    // iSCSI login settings are fixed when the portals start.
    'security.chap': (c) => c.security.chap,
    'security.allowed-initiators': (c) => c.security.allowedInitiators,
  },
  'all-in-one': {
    'data-dir': (c) => c.dataDir,
    'controller.listen': (c) => c.controller.listen,
    'controller.hold-timeout': (c) => c.controller.holdTimeoutSec,
    'agent.portals': (c) => c.agent.portals,
    'agent.hold-timeout': (c) => c.agent.holdTimeoutSec,
    'all-in-one.size': (c) => c.allInOne.size,
    'security.chap': (c) => c.security.chap,
    'security.allowed-initiators': (c) => c.security.allowedInitiators,
  },
  storage: {
    storage: (c) => c.storage,
    'security.chap': (c) => c.security.chap,
    'security.allowed-initiators': (c) => c.security.allowedInitiators,
  },
};

/** Keys whose value differs between the running and the new configuration, among those needing a restart. */
export function restartNeeded(role: Role, running: TabulaConfig, next: TabulaConfig): string[] {
  const out: string[] = [];
  for (const [key, get] of Object.entries(RESTART_KEYS[role])) {
    if (JSON.stringify(get(running)) !== JSON.stringify(get(next))) out.push(key);
  }
  return out;
}

async function start(cfg: TabulaConfig): Promise<Running> {
  if (cfg.role === 'controller') {
    const { startController } = await import('../controller/daemon.js');
    const ctl = await startController(controllerOptions(cfg));
    return {
      line: `controller listening on ${ctl.address}`,
      summary: `controller listening on ${ctl.address}${ctl.metricsAddress ? `, metrics on ${ctl.metricsAddress}` : ''}`,
      reload: (next) => ctl.reload({ token: next.token, tls: next.tls?.cert && next.tls.key ? { cert: next.tls.cert, key: next.tls.key, ca: next.tls.ca } : undefined }),
      close: () => ctl.close(),
    };
  }
  if (cfg.role === 'agent') {
    const { startAgent, formatAddress } = await import('../agent/index.js');
    const o = agentOptions(cfg);
    const agent = await startAgent(o);
    const portals = agent.portals.map(formatAddress).join(', ');
    return {
      line: `agent ${agent.name} serving on ${portals}`,
      summary: `agent ${agent.name} serving on ${portals}, controller ${o.controller}`,
      reload: (next) => agent.reload(next),
      close: () => agent.close(),
    };
  }
  if (cfg.role === 'storage') {
    const { startStorageNode } = await import('./appliance-storage.js');
    const target = await startStorageNode(cfg);
    return {
      line: target.urls.join('\n'),
      summary: `storage node serving ${target.urls.length} LUN${target.urls.length === 1 ? '' : 's'}: ${target.urls.join(' ')}`,
      // Nothing of a running target changes on SIGHUP but the log level (RESTART_KEYS names the rest).
      reload: () => ({ applied: [], needsRestart: [] }),
      close: () => target.close(),
    };
  }
  const { startAppliance } = await import('./appliance.js');
  const app = await startAppliance(applianceOptions(cfg));
  const token = resolveToken(cfg);
  return {
    line: app.url,
    summary: `all-in-one serving ${app.url}, controller on ${app.controller.address}`,
    // The in-process agent reconnects with the token it started with: changing only the controller's would lock it out.
    reload: (next) => ({ applied: [], needsRestart: next.token !== token ? ['token: the all-in-one node changes it on restart'] : [] }),
    close: () => app.close(),
  };
}

export async function runDaemon(opts: RunDaemonOptions): Promise<void> {
  const { config: cfg } = opts.load();
  setLogLevel(cfg.logLevel);
  for (const n of notApplied(cfg)) log.warn(`config: ${n}`);
  if (opts.prepare) await prepareNode(cfg);
  const running = await start(cfg);
  const ready = opts.ready ?? (({ line }) => process.stdout.write(`${line}\n`));
  ready({ line: running.line, summary: running.summary });

  let logLevel = cfg.logLevel;
  const reload = (): void => {
    let next: TabulaConfig;
    let security: SecuritySettings;
    try {
      next = opts.load().config;
      security = securitySettings(next);
    } catch (e) {
      log.error(`SIGHUP: configuration not reloaded, the running one stays: ${(e as Error).message.replace(/\n\s*/g, '; ')}`);
      return;
    }
    let outcome: ReloadOutcome;
    try {
      outcome = running.reload(security);
    } catch (e) {
      log.error(`SIGHUP: configuration not reloaded, the running one stays: ${(e as Error).message}`);
      return;
    }
    if (next.logLevel !== logLevel) {
      setLogLevel(next.logLevel);
      outcome.applied.push(`log-level ${next.logLevel}`);
      logLevel = next.logLevel;
    }
    for (const key of restartNeeded(opts.role, cfg, next)) outcome.needsRestart.push(`${key}: takes a restart`);
    for (const n of notApplied(next)) log.warn(`config: ${n}`);
    const applied = outcome.applied.length > 0 ? outcome.applied.join(', ') : 'nothing changed';
    log.info(`SIGHUP: configuration reloaded: ${applied}`, { applied: outcome.applied, needsRestart: outcome.needsRestart });
    for (const r of outcome.needsRestart) log.warn(`SIGHUP: not applied: ${r}`);
  };

  await runUntilSignal(
    async (signal) => {
      log.info(`stopping ${opts.role}`, { signal });
      await running.close();
    },
    undefined,
    { onHup: reload },
  );
}
