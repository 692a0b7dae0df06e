// The agent daemon as a library: `tabula agent` runs it alone, `tabula up`
// runs one in the same process as the controller.
import { parseHostPort } from '../util/size.js';
import { Agent, type AgentOptions, type ExportStatus } from './agent.js';
import type { PortalAddress } from './targets.js';

export { Agent, type AgentOptions, type ExportStatus } from './agent.js';
export { ControllerLink, type ControllerLinkOptions, type LinkEvents, type LinkState } from './controller-link.js';
export { vdiskDeviceFactory, type AgentDevice, type DeviceFactory, type DeviceSpec } from './device-port.js';
export { formatAddress, type PortalAddress } from './targets.js';
export { DEFAULT_HOLD_TIMEOUT_MS } from './vdisk-device.js';

export const DEFAULT_ISCSI_PORT = 3260;

export interface StartAgentOptions extends Omit<AgentOptions, 'portals'> {
  /** iSCSI portals: "HOST:PORT" (port 3260 when omitted; 0 picks a free one) or addresses. */
  portals: (string | PortalAddress)[];
}

export interface AgentHandle {
  readonly name: string;
  /** The portals as bound (actual ports). */
  readonly portals: PortalAddress[];
  /** The running agent, for diagnostics. */
  readonly agent: Agent;
  exports(): ExportStatus[];
  /** Stops serving, drops the controller stream, closes devices and containers. */
  close(): Promise<void>;
}

/** Starts an agent: containers scanned, portals listening; the controller link connects in the background. */
export async function startAgent(opts: StartAgentOptions): Promise<AgentHandle> {
  const portals = opts.portals.map((p) => (typeof p === 'string' ? parseHostPort(p, DEFAULT_ISCSI_PORT) : p));
  const agent = await Agent.start({ ...opts, portals });
  return {
    name: agent.name,
    portals: agent.portals,
    agent,
    exports: () => agent.exports(),
    close: () => agent.close(),
  };
}
