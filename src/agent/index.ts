// The agent daemon as a library: `tabula agent` runs it alone, `tabula up`
// runs one in the same process as the controller.
import { parseHostPort } from '../util/size.js';
import { AgentMetrics, DEFAULT_AGENT_METRICS_PORT, startMetricsEndpoint, type MetricsEndpoint } from '../metrics/index.js';
import { Agent, type AgentOptions, type ExportStatus } from './agent.js';
import { vdiskDeviceFactory } from './device-port.js';
import type { PortalAddress } from './targets.js';
import { ReloadableChannelCredentials, sameMaterial, type ReloadOutcome, type TlsMaterial } from '../security/tls.js';

export { Agent, type AgentOptions, type ExportStatus } from './agent.js';
export { ControllerLink, type ControllerLinkOptions, type LinkEvents, type LinkState } from './controller-link.js';
export { vdiskDeviceFactory, type AgentDevice, type DeviceFactory, type DeviceSpec } from './device-port.js';
export { formatAddress, type PortalAddress } from './targets.js';
export { DEFAULT_HOLD_TIMEOUT_MS } from './vdisk-device.js';

export const DEFAULT_ISCSI_PORT = 3260;

export interface StartAgentOptions extends Omit<AgentOptions, 'portals'> {
  /** iSCSI portals: "HOST:PORT" (port 3260 when omitted; 0 picks a free one) or addresses. */
  portals: (string | PortalAddress)[];
  /** Prometheus `GET /metrics` on HOST:PORT (":PORT" is loopback; port 0 picks one). No endpoint when not given. */
  metricsListen?: string;
  /** TLS to the controller from PEM contents (ca of the controller's certificate; cert+key for mutual TLS); replaces `credentials`. */
  tls?: TlsMaterial;
}

/** The agent's security settings as they should now be. */
export interface AgentReload {
  token?: string;
  tls?: TlsMaterial;
}

export interface AgentHandle {
  readonly name: string;
  /** The portals as bound (actual ports). */
  readonly portals: PortalAddress[];
  /** The running agent, for diagnostics. */
  readonly agent: Agent;
  /** HOST:PORT of the metrics endpoint as bound, or null when metricsListen was not given. */
  readonly metricsAddress: string | null;
  exports(): ExportStatus[];
  /** New TLS files for the next connection to the controller; throws, changing nothing, when they are unusable. */
  reload(next: AgentReload): ReloadOutcome;
  /** Stops serving, drops the controller stream, closes devices and containers. */
  close(): Promise<void>;
}

/** Starts an agent: containers scanned, portals listening; the controller link connects in the background. */
export async function startAgent(opts: StartAgentOptions): Promise<AgentHandle> {
  const portals = opts.portals.map((p) => (typeof p === 'string' ? parseHostPort(p, DEFAULT_ISCSI_PORT) : p));
  const tls = opts.tls ? new ReloadableChannelCredentials(opts.tls) : null;
  const credentials = tls?.credentials ?? opts.credentials;
  let link: { setToken(t: string | undefined): void } | null = null;
  let running: Agent | null = null;
  let token = opts.token;
  const reload = (next: AgentReload): ReloadOutcome => {
    const out: ReloadOutcome = { applied: [], needsRestart: [] };
    // SIGHUP also looks for containers added since (a disk attached, a new LUN behind a portal).
    if (running !== null) {
      void running.rescan('SIGHUP');
      out.applied.push('containers rescanned');
    }
    if (next.token !== token) {
      token = next.token;
      link?.setToken(next.token);
      out.applied.push('token (next connection to the controller)');
    }
    if (!sameMaterial(tls?.material, next.tls)) {
      if (tls === null || next.tls === undefined) out.needsRestart.push(`TLS: turning it ${tls === null ? 'on' : 'off'} takes a restart`);
      else if ((next.tls.cert !== undefined) !== tls.withIdentity) {
        out.needsRestart.push(`TLS: ${tls.withIdentity ? 'dropping' : 'adding'} the client certificate takes a restart`);
      } else {
        tls.reload(next.tls);
        out.applied.push('TLS files (next connection to the controller)');
      }
    }
    return out;
  };
  if (opts.metricsListen === undefined) {
    const agent = await Agent.start({ ...opts, portals, credentials });
    link = agent.link;
    running = agent;
    return { name: agent.name, portals: agent.portals, agent, metricsAddress: null, exports: () => agent.exports(), reload, close: () => agent.close() };
  }
  // Metered: every export's device (and its fault sink) is wrapped where the agent makes it.
  const metrics = new AgentMetrics();
  const endpoint: MetricsEndpoint = await startMetricsEndpoint(metrics.registry, opts.metricsListen, DEFAULT_AGENT_METRICS_PORT, `agent ${opts.name}`);
  let agent: Agent;
  try {
    agent = await Agent.start({ ...opts, portals, credentials, deviceFactory: metrics.deviceFactory(opts.deviceFactory ?? vdiskDeviceFactory) });
  } catch (err) {
    await endpoint.close();
    throw err;
  }
  metrics.observe(agent);
  link = agent.link;
  running = agent;
  return {
    name: agent.name,
    portals: agent.portals,
    agent,
    metricsAddress: endpoint.address,
    exports: () => agent.exports(),
    reload,
    close: async () => {
      await endpoint.close();
      await agent.close();
    },
  };
}
