// The iSCSI targets a portal server offers: each a name, its SCSI device
// (a ScsiPort), login policy (CHAP, ACL) and the portals it is reachable on.
import type { ScsiPort } from '../scsi/port.js';
import type { TargetAuth, TargetInfo, PortalInfo } from './login/login-machine.js';

export interface IscsiTarget {
  info: TargetInfo;
  port: ScsiPort;
}

export class TargetRegistry {
  private readonly targets = new Map<string, IscsiTarget>();
  discoveryAuth?: { chap?: TargetAuth; mutualChap?: TargetAuth };

  add(info: TargetInfo, port: ScsiPort): IscsiTarget {
    if (this.targets.has(info.name)) throw new Error(`target ${info.name} already exists`);
    const t = { info, port };
    this.targets.set(info.name, t);
    return t;
  }

  remove(name: string): boolean {
    return this.targets.delete(name);
  }

  get(name: string): IscsiTarget | undefined {
    return this.targets.get(name);
  }

  all(): IscsiTarget[] {
    return [...this.targets.values()];
  }

  /** Portals are added to every target when a portal server starts listening. */
  addPortal(p: PortalInfo): void {
    for (const t of this.targets.values()) {
      if (!t.info.portals.some((q) => q.address === p.address && q.port === p.port)) t.info.portals.push(p);
    }
  }
}
