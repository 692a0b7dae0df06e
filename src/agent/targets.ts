// The agent's iSCSI side: one ScsiTargetDevice per target IQN, all in one
// TargetRegistry served by one IscsiPortalServer per portal. Exports come and
// go as LUNs; a target appears with its first LUN and goes (its sessions
// ended) with its last.
import type { AddressInfo } from 'node:net';
import type { BlockDevice } from '../blockdev/block-device.js';
import { IscsiPortalServer } from '../iscsi/portal-server.js';
import type { IscsiSettings } from '../iscsi/settings.js';
import { TargetRegistry } from '../iscsi/target-registry.js';
import type { PortGroup } from '../scsi/lu-context.js';
import { ScsiTargetDevice } from '../scsi/target-device.js';
import { log } from '../util/log.js';

export interface PortalAddress {
  host: string;
  port: number;
}

export interface LunPlacement {
  targetIqn: string;
  lun: number;
  readOnly: boolean;
  /** Identity source for VPD 0x83 and the serial: the vdisk id, so every agent's path to it looks the same. */
  lunId: string;
}

export class AgentTargets {
  readonly registry = new TargetRegistry();
  readonly #servers: IscsiPortalServer[] = [];
  readonly #bound: PortalAddress[] = [];
  readonly #targets = new Map<string, ScsiTargetDevice>();
  #portGroups: PortGroup[] = [];

  /** Starts one portal server per address (tpgt 1, 2, ... in order); resolves with the bound addresses. */
  async listen(portals: readonly PortalAddress[], settings?: Partial<IscsiSettings>): Promise<PortalAddress[]> {
    if (portals.length === 0) throw new Error('an agent needs at least one --portal');
    for (let i = 0; i < portals.length; i++) {
      const p = portals[i] as PortalAddress;
      const server = new IscsiPortalServer(this.registry, { host: p.host, port: p.port, tpgt: i + 1, settings });
      let addr: AddressInfo;
      try {
        addr = await server.listen();
      } catch (err) {
        await this.close();
        throw new Error(`cannot listen on portal ${formatAddress(p)}: ${(err as Error).message}`);
      }
      this.#servers.push(server);
      this.#bound.push({ host: p.host, port: addr.port });
    }
    // Each portal is its own target port and its own ALUA group, all active/optimized.
    this.#portGroups = this.#bound.map((_, i) => ({ id: i + 1, relativePortIds: [i + 1] }));
    return this.portals;
  }

  get portals(): PortalAddress[] {
    return this.#bound.map((p) => ({ ...p }));
  }

  addLun(place: LunPlacement, device: BlockDevice): void {
    let target = this.#targets.get(place.targetIqn);
    if (target === undefined) {
      target = new ScsiTargetDevice({ name: place.targetIqn, portGroups: this.#portGroups });
      this.registry.add(
        {
          name: place.targetIqn,
          allowedInitiators: null,
          portals: this.#bound.map((p, i) => ({ address: p.host, port: p.port, tpgt: i + 1 })),
        },
        target,
      );
      this.#targets.set(place.targetIqn, target);
    }
    target.addLun(place.lun, device, { readOnly: place.readOnly, lunId: place.lunId });
  }

  hasLun(targetIqn: string, lun: number): boolean {
    return this.#targets.get(targetIqn)?.hasLun(lun) ?? false;
  }

  removeLun(targetIqn: string, lun: number): void {
    const target = this.#targets.get(targetIqn);
    if (target === undefined) return;
    target.removeLun(lun);
    if (target.luns().length > 0) return;
    this.#targets.delete(targetIqn);
    this.registry.remove(targetIqn);
    for (const server of this.#servers) {
      for (const s of server.sessionsOfTarget(targetIqn)) s.terminate('target removed', true);
    }
    log.info('target removed', { target: targetIqn });
  }

  async close(): Promise<void> {
    const servers = this.#servers.splice(0);
    await Promise.all(servers.map((s) => s.close()));
  }
}

export function formatAddress(p: PortalAddress): string {
  return p.host.includes(':') ? `[${p.host}]:${p.port}` : `${p.host}:${p.port}`;
}
