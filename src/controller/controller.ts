// The controller: builds its parts and wires them together. It owns no
// decision itself; each job has its module:
//
//   agent-registry.ts  who is connected, the agent stream, heartbeats, leases
//   table-changes.ts   commit, push, acks, fences, reclaim (the way every table change goes)
//   exports.ts         which agents serve which vdisk, and syncing them
//   agent-commands.ts  copy and zero commands run by agents
//   faults.ts          what to do about each fault (its decision table)
//   migration.ts       moving a vdisk's segments to another container
//   mirrors.ts         a failed copy of mirrored vdisks: the leg removed per container, resync when it is back
//   rebuild.ts         new legs for degraded segments of mirrored vdisks, set-copies, health
//   scrubber.ts        zeroing freed container segments before reuse
//   snapshots.ts       snapshots and clones (shared segments)
//   lu-state.ts        each vdisk's SCSI LU state (reservations, unit attentions) for every path
//   durability.ts      when lazily committed thin allocations become durable (group commit, SyncRequest)
//
// The managers see the controller through narrow interfaces (FaultHost,
// MigrationHost, MirrorHost, SnapshotHost, ScrubHost) listing what each uses.

import { randomUUID } from 'node:crypto';
import { Allocator } from './allocator.js';
import type { ControllerDb } from './db.js';
import type { AgentCall } from './agent-link.js';
import { AgentCommands } from './agent-commands.js';
import { AgentRegistry, DEFAULT_LEASE_MARGIN_MS, DEFAULT_LEASE_MS } from './agent-registry.js';
import { Durability } from './durability.js';
import { Exports } from './exports.js';
import { FaultManager, type FaultHost } from './faults.js';
import { LuStates } from './lu-state.js';
import { MigrationManager, type MigrationHost } from './migration.js';
import { MirrorManager, type MirrorHost } from './mirrors.js';
import { PortGroups } from './port-groups.js';
import { containerDomains } from './domains.js';
import { RebuildManager } from './rebuild.js';
import { Retention, type RetentionOptions } from './retention.js';
import { Scrubber, type ScrubHost, type ScrubberOptions } from './scrubber.js';
import { SpaceRecovery } from './space-recovery.js';
import type { SnapshotHost } from './snapshots.js';
import { TableChanges } from './table-changes.js';
import { WriteBehind } from './write-behind.js';

export interface ControllerOptions {
  /** How long an agent has to ack a table version before it is fenced (default 3000 ms). */
  ackTimeoutMs?: number;
  /** Heartbeat interval told to agents (default 2000 ms). */
  heartbeatIntervalMs?: number;
  /** Hold timeout told to agents (default 10000 ms, docs/architecture.md, "Hold timeout"). */
  holdTimeoutMs?: number;
  /** Agent lease told to agents (Welcome.lease_ms; default DEFAULT_LEASE_MS; 0 = none: a disconnected exporter blocks table changes until it is back). */
  leaseMs?: number;
  /** Added to the lease before acting without a disconnected agent (default DEFAULT_LEASE_MARGIN_MS). */
  leaseMarginMs?: number;
  controllerId?: string;
  /** How freed segments are zeroed before reuse (commands in flight, retry backoff). */
  scrub?: ScrubberOptions;
  /** Segments of one vdisk a migration moves at once (default MIGRATION_CONCURRENCY). */
  migrationConcurrency?: number;
  /** Bounds of the fault and event logs (retention.ts). */
  retention?: RetentionOptions;
  /** Base deadline of a copy or zero command (agent-commands.ts, DEFAULT_COMMAND_TIMEOUT_MS). */
  commandTimeoutMs?: number;
  /** Segments of free space reserved durably at a time per container for lazy allocations (allocator.ts, DEFAULT_RESERVE_BATCH). */
  reserveBatch?: number;
  /** Age at which a failed container's stale legs are rebuilt elsewhere (rebuild.ts, DEFAULT_REBUILD_DELAY_MS). */
  rebuildDelayMs?: number;
  /** How often the rebuild looks for degraded segments and expired stale legs (rebuild.ts, DEFAULT_REBUILD_SCAN_MS). */
  rebuildScanMs?: number;
  /** A lazily committed thin allocation is durable against power loss at most this long after it (durability.ts, DEFAULT_DURABLE_INTERVAL_MS). */
  durableIntervalMs?: number;
}

export class Controller implements FaultHost, MigrationHost, MirrorHost, SnapshotHost, ScrubHost {
  readonly id: string;
  readonly db: ControllerDb;
  readonly allocator: Allocator;
  /** Acked versions, the fault log and last-seen times, written off the path of the messages they follow. */
  readonly writeBehind: WriteBehind;
  /** Lazy commits (thin allocations) not yet durable: group commit, SyncRequest answers. */
  readonly durability: Durability;
  readonly agents: AgentRegistry;
  readonly tables: TableChanges;
  readonly exports: Exports;
  /** ALUA: each vdisk's port groups (one per exporting agent) and their states. */
  readonly portGroups: PortGroups;
  readonly commands: AgentCommands;
  readonly faults: FaultManager;
  /** Each vdisk's LU state (persistent reservations, SPC-2 RESERVE, cross-path unit attentions). */
  readonly lu: LuStates;
  readonly migrations: MigrationManager;
  /** Leg faults of mirrored vdisks (once per failed container) and resync when the container is back. */
  readonly mirrors: MirrorManager;
  /** New legs for degraded segments of mirrored vdisks (started by startController: rebuild.start()). */
  readonly rebuild: RebuildManager;
  /** Zeroes freed container segments (through agents) before they can be allocated again. */
  readonly scrubber: Scrubber;
  /** Suspect space found at start (reserved, unreferenced after a crash): held until agents reconciled, then scrubbed. */
  readonly spaceRecovery: SpaceRecovery;
  /** Keeps the fault and event logs bounded, in the background. */
  readonly retention: Retention;
  /**
   * Locations (locKey) being copied by a migration: faults on entries that
   * reference them WAIT (no copy-on-write, no making them writable) until
   * the remap is acked.
   */
  readonly migrating = new Set<string>();
  #closed = false;

  constructor(db: ControllerDb, opts: ControllerOptions = {}) {
    this.db = db;
    this.id = opts.controllerId ?? randomUUID();
    const ackTimeoutMs = opts.ackTimeoutMs ?? 3000;
    this.writeBehind = new WriteBehind(db);
    this.durability = new Durability(db, opts.durableIntervalMs === undefined ? {} : { intervalMs: opts.durableIntervalMs });
    this.allocator = new Allocator(db, opts.reserveBatch === undefined ? {} : { reserveBatch: opts.reserveBatch });
    // The registry hands each message to the part that owns it.
    this.agents = new AgentRegistry(
      db,
      this.writeBehind,
      {
        controllerId: this.id,
        heartbeatIntervalMs: opts.heartbeatIntervalMs ?? 2000,
        ackTimeoutMs,
        holdTimeoutMs: opts.holdTimeoutMs ?? 10_000,
        leaseMs: opts.leaseMs ?? DEFAULT_LEASE_MS,
        leaseMarginMs: opts.leaseMarginMs ?? DEFAULT_LEASE_MARGIN_MS,
      },
      {
        registered: (link, have) => {
          this.exports.resync(link, have);
          this.portGroups.recheck(link.name as string);
          // Freed space on containers this agent reaches may be waiting for it.
          this.scrubber.kick();
          this.commands.registered(link.name as string);
          this.spaceRecovery.registered(link.name as string, have);
        },
        disconnected: (link) => {
          this.faults.dropLink(link);
          this.commands.linkGone(link);
          if (link.name !== null) this.portGroups.agentAway(link.name);
        },
        draining: (agent) => this.portGroups.recheck(agent),
        tableAck: (link, a) => this.tables.onAck(link, a),
        tableRequest: (link, r) => this.exports.onTableRequest(link, r),
        fault: (link, f) => this.faults.handle(link, f),
        copyDone: (link, d) => this.commands.onDone(link, d),
        release: (link, r) => this.tables.onRelease(link, r),
        luRequest: (link, r) => this.lu.onRequest(link, r),
        containerReachable: (id) => this.mirrors.containerReachable(id),
        syncRequest: (link, r) => this.durability.onSyncRequest(link, r),
        newerThanDb: (_link, vdiskId, have) => this.tables.raiseVersionAbove(vdiskId, have),
      },
    );
    // A settled change (or an agent back with the current table) lets held faults act.
    const settled = (vdiskId: string): void => {
      this.faults.onTableChanged(vdiskId);
      this.portGroups.settled(vdiskId);
      // A full table acked may be the last reconciliation suspect space waits for.
      this.spaceRecovery.check();
    };
    this.tables = new TableChanges(db, this.allocator, this.writeBehind, this.agents, ackTimeoutMs, {
      migrating: this.migrating,
      scrub: (locs) => this.scrubber.add(locs),
      settled,
      fenced: (vdiskId) => this.portGroups.recheckVdisk(vdiskId),
      durability: this.durability,
    });
    this.lu = new LuStates(db, this.tables);
    this.exports = new Exports(db, this.agents, this.tables, ackTimeoutMs, settled);
    this.portGroups = new PortGroups(db, this.agents, (agent) => this.exports.sendExportSet(agent));
    this.exports.portGroups = (vdiskId) => this.portGroups.groups(vdiskId);
    this.exports.groupsMayChange = () => this.portGroups.recheck();
    this.commands = new AgentCommands(db, this.agents, opts.commandTimeoutMs);
    this.faults = new FaultManager(this);
    // Writes held on a location that leaves `migrating` look again.
    this.migrations = new MigrationManager(this, settled, opts.migrationConcurrency);
    // Writes held on a segment being resynced look again once it is done, as after a migration step.
    this.mirrors = new MirrorManager(this, settled);
    this.rebuild = new RebuildManager(this, settled, {
      domains: () => containerDomains(db),
      resyncing: (id) => this.mirrors.resyncing(id),
      ...(opts.rebuildDelayMs === undefined ? {} : { delayMs: opts.rebuildDelayMs }),
      ...(opts.rebuildScanMs === undefined ? {} : { scanIntervalMs: opts.rebuildScanMs }),
    });
    this.scrubber = new Scrubber(this, opts.scrub);
    this.allocator.scrubSink = (locs) => this.scrubber.add(locs);
    // Before anything allocates: suspect space leaves the free map at once.
    this.spaceRecovery = new SpaceRecovery(this);
    this.spaceRecovery.start();
    this.retention = new Retention(db, opts.retention);
    this.retention.start();
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** AgentService.Connect handler. */
  connect(call: AgentCall): void {
    this.agents.connect(call);
  }

  /** Ends every agent stream (controller shutdown). */
  close(): void {
    if (this.#closed) return;
    this.writeBehind.flush();
    this.#closed = true;
    this.portGroups.close();
    this.tables.close();
    this.migrations.stopAll();
    this.mirrors.close();
    this.rebuild.stop();
    this.scrubber.stop();
    this.spaceRecovery.stop();
    // Ends this run's reservations durably: a clean restart finds no suspect space.
    this.allocator.close();
    this.retention.stop();
    this.commands.close();
    // Drops the faults each agent had waiting.
    this.agents.close();
    // The faults just dropped, while the database is still open.
    this.writeBehind.flush();
    // Lazy commits still pending become durable before the database closes.
    this.durability.close();
  }
}
