// The agent's iSCSI side: one ScsiTargetDevice per target IQN, all in one
// TargetRegistry served by one IscsiPortalServer per portal. Exports come and
// go as LUNs; a target appears with its first LUN and goes (its sessions
// ended) with its last.
//
// Access control: the agent's CHAP settings apply to every target and to
// discovery; each export may name the initiators allowed to see it. The
// SCSI layer has no per-initiator LUN masking, so a target admits an
// initiator only if every LUN of it that names initiators names that one
// (the intersection): no initiator ever reaches a LUN it was not allowed,
// at the price of refusing one that is allowed on some LUNs of a target but
// not on others. Such mixed targets are logged. An agent-wide list
// (security.allowed-initiators) narrows every target further: with it, only
// the initiators it names may log in anywhere on this agent or see targets in
// discovery, whatever the exports say.
import type { AddressInfo } from 'node:net';
import { initiatorAllowed, type TargetAuth, type TargetInfo } from '../iscsi/login/environment.js';
import type { BlockDevice } from '../blockdev/block-device.js';
import { IscsiPortalServer } from '../iscsi/portal-server.js';
import type { IscsiSettings } from '../iscsi/settings.js';
import { TargetRegistry } from '../iscsi/target-registry.js';
import type { PortGroup, ReservationGate } from '../scsi/lu-api.js';
import { agentPortId, MAX_AGENT_PORTALS } from '../wire/port-identity.js';
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
  /** Initiators allowed to see this LUN (and so to log in to its target); empty or absent = any. */
  allowedInitiators?: readonly string[];
  /**
   * OPTIMAL UNMAP GRANULARITY in blocks (VPD 0xB0): a vdisk frees space in
   * whole segments, so advertising the segment lets file systems align their
   * discards to what can actually be returned. Absent = 1 block.
   */
  unmapGranularityBlocks?: number;
  /** The LU's reservation state (the vdisk's replica of the controller's LU state); absent = the LU's own. */
  reservations?: ReservationGate;
}

/** The agent's own iSCSI login settings, the same for every target it serves and for discovery. */
export interface AgentIscsiAuth {
  /** Initiators must authenticate with these (CHAP); absent = no authentication. */
  chap?: TargetAuth;
  /** What the agent answers with when an initiator asks for mutual CHAP; needs `chap`. */
  mutualChap?: TargetAuth;
  /** Initiators allowed on every target of this agent (security.allowed-initiators); empty or absent = any. */
  allowedInitiators?: readonly string[];
}

/**
 * The initiators a target admits, from the ACLs of its LUNs: null (any) when
 * no LUN restricts, else the names every restricting LUN allows (lower case;
 * possibly none).
 */
export function targetAcl(lunAcls: Iterable<readonly string[] | undefined>): string[] | null {
  let acl: string[] | null = null;
  for (const list of lunAcls) {
    if (list === undefined || list.length === 0) continue;
    const names = list.map((n) => n.toLowerCase());
    acl = acl === null ? [...new Set(names)] : acl.filter((n) => names.includes(n));
  }
  return acl;
}

interface AgentTarget {
  device: ScsiTargetDevice;
  info: TargetInfo;
  /** ACL of each LUN, by LUN number. */
  acls: Map<number, readonly string[]>;
}

export class AgentTargets {
  readonly registry = new TargetRegistry();
  readonly #servers: IscsiPortalServer[] = [];
  readonly #bound: PortalAddress[] = [];
  readonly #targets = new Map<string, AgentTarget>();
  readonly #auth: AgentIscsiAuth;
  /** The agent-wide initiator list, lower case; null = any. */
  readonly #agentAcl: readonly string[] | null;
  #portGroups: PortGroup[] = [];
  /** The controller-given agent number the portals' identity comes from (0: none yet). */
  #agentNumber = 0;

  constructor(auth: AgentIscsiAuth = {}) {
    if (auth.mutualChap !== undefined && auth.chap === undefined) throw new Error('mutual CHAP needs CHAP credentials for the initiator as well');
    this.#auth = { ...auth };
    this.#agentAcl = targetAcl([auth.allowedInitiators]);
    // Discovery too: SendTargets would otherwise name every target to anyone.
    if (auth.chap !== undefined) this.registry.discoveryAuth = { chap: auth.chap, mutualChap: auth.mutualChap };
  }

  /** Whether initiators must authenticate (CHAP). */
  get chapRequired(): boolean {
    return this.#auth.chap !== undefined;
  }

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
      const scsi = new ScsiTargetDevice({ name: place.targetIqn, portGroups: this.#portGroups });
      const info: TargetInfo = {
        name: place.targetIqn,
        chap: this.#auth.chap,
        mutualChap: this.#auth.mutualChap,
        allowedInitiators: null,
        portals: this.#portalInfos(),
      };
      this.registry.add(info, scsi);
      target = { device: scsi, info, acls: new Map() };
      this.#targets.set(place.targetIqn, target);
    }
    target.device.addLun(place.lun, device, {
      readOnly: place.readOnly,
      lunId: place.lunId,
      ...(place.unmapGranularityBlocks === undefined ? {} : { limits: { unmapGranularity: place.unmapGranularityBlocks } }),
      ...(place.reservations === undefined ? {} : { reservations: place.reservations }),
    });
    target.acls.set(place.lun, place.allowedInitiators ?? []);
    this.#applyAcl(target);
  }

  #portalInfos(): TargetInfo['portals'] {
    return this.#bound.map((p, i) => ({ address: p.host, port: p.port, tpgt: this.#servers[i]?.tpgt ?? i + 1 }));
  }

  /**
   * Takes the target port identity of agent `number` (Welcome.agent_number;
   * port-identity.ts): group `number`, portal i is relative port and TPGT
   * number * 16 + i + 1, so that this agent's ports differ from every other
   * agent's. 0 (an older controller) leaves the identity as it is. Should
   * the number ever change (a controller with another database), sessions
   * open under the old identity are ended, so that no nexus keeps a name the
   * rest of the cluster no longer knows.
   */
  setAgentNumber(number: number): void {
    if (!(number > 0) || number === this.#agentNumber) return;
    const previous = this.#agentNumber;
    this.#agentNumber = number;
    this.#servers.forEach((server, i) => {
      if (i >= MAX_AGENT_PORTALS) {
        log.error('an agent has at most 15 portals with distinct target port ids; this one keeps its own', { portal: formatAddress(this.#bound[i] as PortalAddress) });
        return;
      }
      const id = agentPortId(number, i);
      server.setPortIdentity({ tpgt: id, relativeTargetPortId: id, targetPortGroup: number });
    });
    this.#portGroups.splice(0, this.#portGroups.length, { id: number, relativePortIds: this.#servers.slice(0, MAX_AGENT_PORTALS).map((_, i) => agentPortId(number, i)) });
    for (const t of this.#targets.values()) t.info.portals = this.#portalInfos();
    log.info('target port identity', { agentNumber: number, portGroup: number, tpgts: this.#servers.map((s) => s.tpgt) });
    if (previous === 0) return;
    log.warn('agent number changed: ending sessions logged in under the old target port identity', { from: previous, to: number });
    for (const server of this.#servers) for (const t of this.#targets.keys()) for (const s of server.sessionsOfTarget(t)) s.terminate('target port identity changed', true);
  }

  /**
   * Sets the port groups of a LUN: every agent's path to the vdisk with its
   * access state. Returns whether a state changed (the LU then raised
   * ASYMMETRIC ACCESS STATE CHANGED on its nexuses).
   */
  setPortGroups(targetIqn: string, lun: number, groups: readonly PortGroup[]): boolean {
    return this.#targets.get(targetIqn)?.device.lu(lun)?.setPortGroups(groups) ?? false;
  }

  /** The SCSI logical unit serving a LUN (for inspection). */
  logicalUnit(targetIqn: string, lun: number): ReturnType<ScsiTargetDevice['lu']> {
    return this.#targets.get(targetIqn)?.device.lu(lun);
  }

  /**
   * Aborts the tasks of a LUN in every session of its target on this agent
   * (an LU reset or CLEAR TASK SET that came through another path), or of
   * one I_T nexus (PREEMPT AND ABORT). Not
   * awaited by the caller: a task waiting on the controller (a PROUT, say)
   * ends only after this agent's ack, which must not wait for it.
   */
  async abortLunTasks(targetIqn: string, lun: number, nexusId?: string): Promise<void> {
    const sessions = this.#servers.flatMap((server) => server.sessionsOfTarget(targetIqn));
    // With a nexus (PREEMPT AND ABORT), only that I_T nexus's tasks.
    const mine = nexusId === undefined ? sessions : sessions.filter((s) => s.nexus?.id === nexusId);
    await Promise.all(mine.map((s) => s.tasks.abort(s.tasks.onLun(lun))));
  }

  hasLun(targetIqn: string, lun: number): boolean {
    return this.#targets.get(targetIqn)?.device.hasLun(lun) ?? false;
  }

  /** The initiators a target admits now (null = any); undefined for a target not served. */
  allowedInitiators(targetIqn: string): string[] | null | undefined {
    const t = this.#targets.get(targetIqn);
    return t === undefined ? undefined : (t.info.allowedInitiators ?? null);
  }

  /** Recomputes a target's ACL and ends the sessions of initiators it no longer admits. */
  #applyAcl(target: AgentTarget): void {
    const lunAcl = targetAcl(target.acls.values());
    const agentAcl = this.#agentAcl;
    const acl = agentAcl === null ? lunAcl : lunAcl === null ? [...agentAcl] : lunAcl.filter((n) => agentAcl.includes(n));
    const restricting = [...target.acls.values()].filter((l) => l.length > 0).length;
    if (restricting > 0 && restricting < target.acls.size) {
      log.warn('target mixes LUNs open to any initiator with LUNs that name initiators: only those named by every such LUN may log in', {
        target: target.info.name,
        allowed: acl,
      });
    } else if (lunAcl !== null && lunAcl.length === 0) {
      log.warn('the LUNs of a target allow disjoint initiators: none may log in', { target: target.info.name });
    } else if (acl !== null && acl.length === 0) {
      log.warn("no initiator a target's exports allow is in the agent's security.allowed-initiators: none may log in", { target: target.info.name });
    }
    // Mutated in place: logins look the TargetInfo up at the time they happen.
    target.info.allowedInitiators = acl;
    if (acl === null) return;
    for (const server of this.#servers) {
      for (const s of server.sessionsOfTarget(target.info.name)) {
        if (!initiatorAllowed(target.info, s.params.initiatorName)) {
          log.info('ending the session of an initiator the target no longer admits', { target: target.info.name, initiator: s.params.initiatorName });
          s.terminate('initiator no longer allowed', true);
        }
      }
    }
  }

  removeLun(targetIqn: string, lun: number): void {
    const target = this.#targets.get(targetIqn);
    if (target === undefined) return;
    target.device.removeLun(lun);
    target.acls.delete(lun);
    if (target.device.luns().length > 0) {
      this.#applyAcl(target);
      return;
    }
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
