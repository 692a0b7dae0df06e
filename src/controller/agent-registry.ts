// The agent registry: who is connected (one AgentLink per agent name), the
// AgentService stream handler (connect, register, heartbeats, disconnect),
// and leases: how long an agent that is away may still be serving its
// tables. Register and heartbeats are handled here; every other message
// goes to its owner through AgentMessageHandlers (wired in controller.ts).
//
// Containers: the registry checks what each agent claims (Register, then
// ContainerUpdate whenever the agent rescans or a container's reachability
// changes), records it with the agent's host, asks every agent to rescan
// when a container is added (rescanAll), and tells each agent which of its
// containers are shared, reached from more than one host (ContainerSet).

import type * as grpc from '@grpc/grpc-js';
import {
  refReachable,
  type AgentMessage,
  type ContainerRef,
  type ContainerShare,
  type ContainerUpdate,
  type CopyDone,
  type Fault,
  type LuRequest,
  type MalformedMessage,
  type Register,
  type Release,
  type SyncRequestMsg,
  type TableAck,
  type TableRequest,
} from '../wire/proto-types.js';
import { log } from '../util/log.js';
import type { ContainerReach, ControllerDb } from './db.js';
import { agentDomain, containerDomains } from './domains.js';
import { AgentLink, type AgentCall } from './agent-link.js';
import type { WriteBehind } from './write-behind.js';

/**
 * Agent lease. At least four heartbeat intervals (2 s), so a late answer or
 * two never costs a healthy agent its lease; and lease plus margin (9 s)
 * below the 10 s hold timeout, so a first write held on a surviving agent
 * when another exporter dies is answered within one hold, not failed with
 * 02/04/0A. Not shorter, because an agent cut off from the controller (or a
 * controller restart) stops serving zero and no-write segments after it.
 */
export const DEFAULT_LEASE_MS = 8000;
/**
 * The agent's lease starts when it sent the heartbeat the controller
 * answered, which is before the controller heard it, so network delay is
 * already on the safe side; the margin covers clock rate differences and a
 * busy event loop on the agent.
 */
export const DEFAULT_LEASE_MARGIN_MS = 1000;

export const AGENT_NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;

/** What the registry tells agents in Welcome, and the lease it grants. */
export interface AgentRegistrySettings {
  controllerId: string;
  heartbeatIntervalMs: number;
  ackTimeoutMs: number;
  holdTimeoutMs: number;
  /** 0 = no lease: a disconnected exporter blocks table changes until it is back. */
  leaseMs: number;
  leaseMarginMs: number;
}

/** Where the messages the registry does not handle itself go. */
export interface AgentMessageHandlers {
  /** An agent registered and was welcomed; `haveVersions` are the table versions it kept. */
  registered(link: AgentLink, haveVersions: ReadonlyMap<string, number>): void;
  /** A link is gone (its stream ended, or the controller is shutting down). */
  disconnected(link: AgentLink): void;
  tableAck(link: AgentLink, a: TableAck): void;
  tableRequest(link: AgentLink, r: TableRequest): void;
  fault(link: AgentLink, f: Fault): void;
  copyDone(link: AgentLink, d: CopyDone): void;
  release(link: AgentLink, r: Release): void;
  /** An agent started draining (Heartbeat.draining): its port groups are transitioning now. */
  draining(agent: string): void;
  luRequest(link: AgentLink, r: LuRequest): void;
  /** An agent reports a container reachable: at Register, or in a ContainerUpdate where it was not before (a failed mirror leg may resync). */
  containerReachable?(containerId: string, agent: string): void;
  /** An agent must promise durability of a vdisk's table up to a version (durability.ts answers with SyncReply). */
  syncRequest?(link: AgentLink, r: SyncRequestMsg): void;
  /**
   * At Register, before `registered`: the agent holds `have` of the vdisk,
   * above the database's version (a power loss took the versions between).
   * Raises the vdisk's version above `have` (durably), so `registered` sends
   * that agent the full table at the new version.
   */
  newerThanDb?(link: AgentLink, vdiskId: string, have: number): void;
}

/** Exporters away whose lease may still let them serve zero and no-write segments, and how long until it surely has not. */
export interface ExportersInLease {
  agents: string[];
  /** Infinity when no lease is granted. */
  waitMs: number;
}

export class AgentRegistry {
  readonly #db: ControllerDb;
  readonly #writeBehind: WriteBehind;
  readonly #settings: AgentRegistrySettings;
  readonly #handlers: AgentMessageHandlers;
  /** performance.now() of the last message from each agent (lease accounting). */
  readonly #lastHeard = new Map<string, number>();
  /** performance.now() when the controller last answered a heartbeat of each agent (its lease runs from before then). */
  readonly #lastAnswered = new Map<string, number>();
  /** Agents may hold leases granted before this controller started (an earlier run): count them from here. */
  readonly #startedAt = performance.now();
  /**
   * Each vdisk's version when this controller started: what an agent kept
   * from an earlier run is at most this, unless the database lost versions
   * (a power loss), and this run may commit those numbers again.
   */
  readonly #startVersions: ReadonlyMap<string, number>;
  /** Agents registered in this run: a later registration keeps only what this run sent it. */
  readonly #registeredThisRun = new Set<string>();
  /** Registered links by agent name (the newest stream of each). */
  readonly #links = new Map<string, AgentLink>();
  /** Every open stream, registered or not. */
  readonly #allLinks = new Set<AgentLink>();
  /** Agents that announced a drain on their current stream (Heartbeat.draining). */
  readonly #draining = new Set<string>();
  /** Agents that went away after announcing a drain: stopped, not merely cut off. Until they register again. */
  readonly #stopped = new Set<string>();
  /** The ContainerSet last sent on each agent's current stream (its JSON), so only changes go out. */
  readonly #sentSets = new Map<AgentLink, string>();
  /** Claims rejected on each stream, so a periodic rescan does not repeat the same error every time. */
  readonly #rejected = new Map<AgentLink, Set<string>>();

  constructor(db: ControllerDb, writeBehind: WriteBehind, settings: AgentRegistrySettings, handlers: AgentMessageHandlers) {
    this.#db = db;
    this.#startVersions = new Map(db.vdisks().map((v) => [v.id, v.version]));
    this.#writeBehind = writeBehind;
    this.#settings = settings;
    this.#handlers = handlers;
  }

  get leaseMs(): number {
    return this.#settings.leaseMs;
  }

  /** The agent announced a drain and is still connected. */
  draining(agent: string): boolean {
    return this.#draining.has(agent);
  }

  /** The agent went away after announcing a drain (and has not registered since). */
  stopped(agent: string): boolean {
    return this.#stopped.has(agent);
  }

  link(agent: string): AgentLink | undefined {
    const l = this.#links.get(agent);
    return l && !l.closed ? l : undefined;
  }

  onlineAgents(): string[] {
    return [...this.#links.values()].filter((l) => !l.closed).map((l) => l.name as string);
  }

  /** Connected links holding a table of this vdisk (fenced or not). */
  holders(vdiskId: string): AgentLink[] {
    const out: AgentLink[] = [];
    for (const l of this.#links.values()) if (!l.closed && l.held(vdiskId) !== undefined) out.push(l);
    return out;
  }

  /**
   * The one link that must install a new version of this vdisk before any
   * I/O may act on it, or null when that is not exactly one connected agent
   * (several holders, or an exporter away whose lease still lets it serve
   * zero and no-write segments). A fenced holder does not count: it serves
   * no segment of the vdisk until it has a whole table.
   */
  soleHolder(vdiskId: string): AgentLink | null {
    let sole: AgentLink | null = null;
    for (const l of this.holders(vdiskId)) {
      if (l.held(vdiskId)?.fenced === true) continue;
      if (sole !== null) return null;
      sole = l;
    }
    if (sole === null || this.exportersInLease(vdiskId).agents.length > 0) return null;
    return sole;
  }

  /**
   * Agents that export this vdisk but are not connected. Such an agent keeps
   * serving the table it holds and can be neither told of a change nor
   * fenced, so a change it would not see must wait until it is back.
   */
  unreachableExporters(vdiskId: string): string[] {
    return this.#db
      .exportsOfVdisk(vdiskId)
      .map((e) => e.agent)
      .filter((a) => this.link(a) === undefined);
  }

  /**
   * Exporters of this vdisk that are not connected and may still serve its
   * zero and no-write segments from their old table: their lease (counted
   * from the last message heard from them, plus the margin) has not run out.
   * A table change those segments depend on (allocation, copy-on-write) must
   * wait `waitMs` for them; Infinity when no lease is granted.
   */
  exportersInLease(vdiskId: string): ExportersInLease {
    const away = this.unreachableExporters(vdiskId);
    if (away.length === 0) return { agents: [], waitMs: 0 };
    const { leaseMs, leaseMarginMs } = this.#settings;
    if (leaseMs <= 0) return { agents: away, waitMs: Number.POSITIVE_INFINITY };
    const now = performance.now();
    let waitMs = 0;
    const agents: string[] = [];
    for (const a of away) {
      const left = Math.max(this.#lastHeard.get(a) ?? this.#startedAt, this.#startedAt) + leaseMs + leaseMarginMs - now;
      if (left <= 0) continue;
      agents.push(a);
      waitMs = Math.max(waitMs, left);
    }
    return { agents, waitMs: Math.ceil(waitMs) };
  }

  /**
   * performance.now() at which the agent's lease has surely run out: lease
   * plus margin after the controller last answered one of its heartbeats
   * (on any stream), counting from this controller's start at the earliest.
   */
  leaseEnd(agent: string): number {
    return Math.max(this.#lastAnswered.get(agent) ?? this.#startedAt, this.#startedAt) + this.#settings.leaseMs + this.#settings.leaseMarginMs;
  }

  // ---- containers ----

  /**
   * Asks every connected agent to scan its container locators again (a
   * container was added): each answers with ContainerUpdate, and the new
   * container is accepted there. Returns the agents asked.
   */
  rescanAll(reason: string): string[] {
    const asked: string[] = [];
    for (const l of this.#links.values()) {
      if (l.closed) continue;
      l.send({ body: 'rescan', rescan: { reason } });
      asked.push(l.name as string);
    }
    if (asked.length > 0) log.info('asked agents to rescan their containers', { reason, agents: asked });
    return asked;
  }

  /** Checks claims as Register does: the accepted ones, and why each other one is not. */
  #checkClaims(link: AgentLink, agent: string, containers: readonly ContainerRef[]): { accepted: { id: string; path: string; reachable: boolean; error: string }[]; rejected: string[] } {
    const accepted: { id: string; path: string; reachable: boolean; error: string }[] = [];
    const rejected: string[] = [];
    for (const c of containers) {
      const why = this.#checkClaim(c);
      if (why === null) {
        const reachable = refReachable(c);
        accepted.push({ id: c.id, path: c.path, reachable, error: reachable ? '' : c.error || 'unreachable' });
      } else {
        rejected.push(why);
      }
    }
    const told = this.#rejected.get(link) ?? new Set<string>();
    this.#rejected.set(link, told);
    for (const why of rejected) {
      if (told.has(why)) continue;
      told.add(why);
      log.error(`agent ${agent}: ${why}`);
      link.sendError(why);
    }
    return { accepted, rejected };
  }

  #onContainerUpdate(link: AgentLink, u: ContainerUpdate): void {
    const name = link.name as string;
    if (this.#links.get(name) !== link) return;
    const before = new Map(this.#db.agentClaims(name).map((c) => [c.id, c]));
    const { accepted } = this.#checkClaims(link, name, u.containers);
    this.#db.updateAgentContainers(name, accepted);
    for (const c of accepted) {
      const was = before.get(c.id);
      if (was === undefined) {
        this.#db.event('agent', name, `reaches container ${c.id} at ${c.path}${c.reachable ? '' : ` (unreachable: ${c.error})`}`);
        log.info(`agent ${name} reaches container ${c.id}`, { path: c.path, reachable: c.reachable });
      } else if (was.reachable !== c.reachable) {
        const what = c.reachable ? 'reachable again' : `unreachable: ${c.error}`;
        this.#db.event('agent', name, `container ${c.id} ${what}`);
        log.log(c.reachable ? 'info' : 'warn', `agent ${name}: container ${c.id} ${what}`);
      }
    }
    for (const id of before.keys()) {
      if (!accepted.some((c) => c.id === id)) this.#db.event('agent', name, `no longer reports container ${id}`);
    }
    this.#pushContainerSets();
    for (const c of accepted) if (c.reachable && before.get(c.id)?.reachable !== true) this.#handlers.containerReachable?.(c.id, name);
  }

  /**
   * What an agent is told about its containers now (ContainerSet): each
   * accepted one, shared or not, and near when it is in the agent's own
   * failure domain (its host's: reads of mirrored segments prefer that leg).
   */
  #containerSetOf(agent: string, domains: ReadonlyMap<string, string>): ContainerShare[] {
    const own = agentDomain({ name: agent, host: this.#db.agent(agent)?.host ?? '' });
    return this.#db.agentClaims(agent).map((c) => ({ id: c.id, shared: isShared(this.#db.containerReach(c.id)), ...(domains.get(c.id) === own ? { near: true } : {}) }));
  }

  /** Sends each connected agent its ContainerSet when it differs from the last one sent on its stream. */
  #pushContainerSets(): void {
    const domains = containerDomains(this.#db);
    for (const l of this.#links.values()) {
      if (l.closed || l.name === null) continue;
      const set = this.#containerSetOf(l.name, domains);
      const key = JSON.stringify(set);
      if (this.#sentSets.get(l) === key) continue;
      this.#sentSets.set(l, key);
      l.send({ body: 'containerSet', containerSet: { containers: set } });
    }
  }

  // ---- the stream ----

  /** AgentService.Connect handler. */
  connect(call: AgentCall): void {
    const link = new AgentLink(call);
    this.#allLinks.add(link);
    call.on('data', (m: AgentMessage | MalformedMessage) => {
      try {
        this.#dispatch(link, m);
      } catch (err) {
        log.error(`message from ${link.label} failed`, { body: m.body, error: (err as Error).message });
        link.sendError(`${m.body}: ${(err as Error).message}`);
      }
    });
    const gone = (why: string) => () => this.#disconnected(link, why);
    call.on('end', () => {
      gone('stream ended')();
      try {
        call.end();
      } catch {
        // already closed
      }
    });
    call.on('error', (err: grpc.ServiceError) => gone(`stream error: ${err.message}`)());
    call.on('close', gone('stream closed'));
    call.on('cancelled', gone('stream cancelled'));
  }

  /** Ends every agent stream (controller shutdown). */
  close(): void {
    for (const l of this.#allLinks) {
      l.close('controller shutting down');
      this.#handlers.disconnected(l);
    }
    this.#allLinks.clear();
    this.#links.clear();
  }

  #disconnected(link: AgentLink, why: string): void {
    if (link.closed && !this.#allLinks.has(link)) return;
    this.#allLinks.delete(link);
    this.#sentSets.delete(link);
    this.#rejected.delete(link);
    link.markClosed();
    if (link.name !== null && this.#links.get(link.name) === link && this.#draining.delete(link.name)) this.#stopped.add(link.name);
    this.#handlers.disconnected(link);
    if (link.name !== null && this.#links.get(link.name) === link) {
      this.#links.delete(link.name);
      log.info(`agent ${link.name} disconnected: ${why}`);
      this.#db.event('agent', link.name, `disconnected: ${why}`);
    }
  }

  #dispatch(link: AgentLink, m: AgentMessage | MalformedMessage): void {
    if (m.body === 'malformed') {
      log.error(`malformed message from ${link.label}: ${m.reason}`);
      link.sendError(`malformed message: ${m.reason}`);
      return;
    }
    if (link.name !== null && !link.closed) this.#lastHeard.set(link.name, performance.now());
    if (m.body !== 'register' && link.name === null) {
      log.error(`${link.label} sent ${m.body} before register`);
      link.sendError(`${m.body} before register: send register first`, true);
      link.close('protocol error: register first');
      return;
    }
    const to = this.#handlers;
    switch (m.body) {
      case 'register':
        this.#onRegister(link, m.register);
        return;
      case 'heartbeat': {
        const name = link.name as string;
        this.#writeBehind.once(`seen ${name}`, () => this.#db.touchAgent(name));
        if (m.heartbeat.draining === true && this.#links.get(name) === link && !this.#draining.has(name)) {
          this.#draining.add(name);
          log.info(`agent ${name} is draining`);
          to.draining(name);
        }
        // The answer renews the agent's lease (from when it sent this heartbeat).
        // None while a vdisk of it is fenced: its lease must run out even when
        // the stream looks open, since table changes wait for that (TableChanges.awaitAcks).
        if (this.#settings.leaseMs > 0 && !isFenced(link)) {
          this.#lastAnswered.set(name, performance.now());
          link.send({ body: 'heartbeatReply', heartbeatReply: { seq: m.heartbeat.seq } });
        }
        return;
      }
      case 'tableAck':
        to.tableAck(link, m.tableAck);
        return;
      case 'tableRequest':
        to.tableRequest(link, m.tableRequest);
        return;
      case 'fault':
        to.fault(link, m.fault);
        return;
      case 'copyDone':
        to.copyDone(link, m.copyDone);
        return;
      case 'release':
        to.release(link, m.release);
        return;
      case 'luRequest':
        to.luRequest(link, m.luRequest);
        return;
      case 'containerUpdate':
        this.#onContainerUpdate(link, m.containerUpdate);
        return;
      case 'syncRequest':
        if (to.syncRequest !== undefined) {
          to.syncRequest(link, m.syncRequest);
        } else {
          // No durability tracking here: every commit was FULL, so every version the DB has is durable.
          const v = this.#db.vdisk(m.syncRequest.vdiskId);
          const ok = v !== undefined && v.version >= m.syncRequest.version;
          link.send({
            body: 'syncReply',
            syncReply: { requestId: m.syncRequest.requestId, ok, durableVersion: v?.version ?? 0, reason: ok ? '' : `vdisk ${m.syncRequest.vdiskId} table version ${m.syncRequest.version} is not in the database` },
          });
        }
        return;
      default: {
        const body: string = (m as { body: string }).body;
        log.error(`unknown message ${body} from ${link.label}`);
        link.sendError(`unknown message ${body}`);
      }
    }
  }

  #onRegister(link: AgentLink, r: Register): void {
    if (link.name !== null) {
      link.sendError(`already registered as ${link.name}`);
      return;
    }
    if (!AGENT_NAME_RE.test(r.agentName)) {
      log.error(`register refused: bad agent name "${r.agentName}" from ${link.peer}`);
      link.close(`bad agent name "${r.agentName}": use 1-64 of A-Z a-z 0-9 . _ -`);
      return;
    }
    const old = this.#links.get(r.agentName);
    if (old && !old.closed) {
      log.warn(`agent ${r.agentName} reconnected from ${link.peer}; closing its old stream from ${old.peer}`);
      old.close('replaced by a newer connection of the same agent');
      this.#disconnected(old, 'replaced');
    }
    // Claims of containers not registered yet are refused here and accepted
    // from the ContainerUpdate the agent sends when `container add` asks it
    // to rescan (rescanAll).
    const { accepted, rejected } = this.#checkClaims(link, r.agentName, r.containers);
    const host = r.hostId ?? '';
    let agentNumber: number;
    try {
      agentNumber = this.#db.registerAgent(r.agentName, r.portals, accepted, host);
    } catch (err) {
      log.error(`register refused: agent ${r.agentName}: ${(err as Error).message}`);
      link.close((err as Error).message);
      return;
    }
    link.name = r.agentName;
    if (r.tableRuns === true) link.readsTableRuns = true;
    link.keptTables = new Set(r.tables.map((t) => t.vdiskId));
    this.#links.set(r.agentName, link);
    this.#lastHeard.set(r.agentName, performance.now());
    this.#draining.delete(r.agentName);
    this.#stopped.delete(r.agentName);
    this.#db.event('agent', r.agentName, `registered from ${link.peer} with ${accepted.length} containers`);
    log.info(`agent ${r.agentName} registered from ${link.peer}`, { host, portals: r.portals, containers: accepted.length, rejected: rejected.length });
    const s = this.#settings;
    link.send({
      body: 'welcome',
      welcome: {
        controllerId: s.controllerId,
        agentName: r.agentName,
        heartbeatIntervalMs: s.heartbeatIntervalMs,
        ackTimeoutMs: s.ackTimeoutMs,
        holdTimeoutMs: s.holdTimeoutMs,
        rejectedContainers: rejected,
        leaseMs: s.leaseMs,
        agentNumber,
      },
    });
    // Before ExportSet and tables: a shared container is opened with O_DIRECT before it serves.
    this.#pushContainerSets();
    this.#reconcileNewer(link, r);
    this.#handlers.registered(link, new Map(r.tables.map((t) => [t.vdiskId, t.version])));
    for (const c of accepted) if (c.reachable) this.#handlers.containerReachable?.(c.id, r.agentName);
  }

  /**
   * Tables the agent kept at a version above the database's: the database
   * lost those versions (restored to its last fsync after a power loss), and
   * with them the lazy allocations they made. The agent gets the database's
   * table at a version above its own (newerThanDb), so it drops what was lost.
   */
  #reconcileNewer(link: AgentLink, r: Register): void {
    const firstThisRun = !this.#registeredThisRun.has(r.agentName);
    this.#registeredThisRun.add(r.agentName);
    for (const t of r.tables) {
      const v = this.#db.vdisk(t.vdiskId);
      if (v === undefined) continue;
      // Above what the database had at start, kept from an earlier run: a lost version, even
      // when this run has committed that number again since (with other contents).
      const start = this.#startVersions.get(t.vdiskId);
      const lost = t.version > v.version || (firstThisRun && start !== undefined && t.version > start);
      if (!lost) continue;
      log.warn(
        `agent ${r.agentName} holds vdisk ${v.name} (${v.id}) at table version ${t.version}, but the database had ${start ?? v.version} (now ${v.version}): versions lost in a power loss; raising the version above it and sending the full table`,
      );
      this.#db.event('agent', r.agentName, `holds vdisk ${v.name} at table version ${t.version}, database has ${v.version}: reconciled`);
      this.#handlers.newerThanDb?.(link, t.vdiskId, t.version);
    }
  }

  /** Null when the claim matches the registered container, else why not. */
  #checkClaim(c: ContainerRef): string | null {
    const reg = this.#db.container(c.id);
    if (!reg) return `container ${c.id} at ${c.path || '?'} is not registered with the controller (tabula container add)`;
    if (reg.size !== c.size) return `container ${c.id} at ${c.path || '?'} claims size ${c.size} but is registered with size ${reg.size}`;
    if (reg.dataOffset !== c.dataOffset) {
      return `container ${c.id} at ${c.path || '?'} claims data offset ${c.dataOffset} but is registered with ${reg.dataOffset}`;
    }
    return null;
  }
}

/**
 * Whether the agents claiming a container run on more than one host. An
 * agent that reported no host (an older one) counts as a host of its own.
 * Reachability does not count: a link that flaps must not flip a
 * container's open mode back and forth.
 */
export function isShared(reach: readonly Pick<ContainerReach, 'agent' | 'host'>[]): boolean {
  return new Set(reach.map((r) => (r.host === '' ? `agent:${r.agent}` : `host:${r.host}`))).size > 1;
}

/** Whether a vdisk of this link is fenced (missed an ack, not yet resynced). */
function isFenced(link: AgentLink): boolean {
  for (const t of link.tables.values()) if (t.fenced) return true;
  return false;
}
