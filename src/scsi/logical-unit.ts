// One logical unit: command dispatch in SAM-5 / SPC-4 order, unit attentions
// per I_T nexus, exclusion for COMPARE AND WRITE / WRITE ATOMIC / SANITIZE,
// and the mapping of handler exceptions to status and sense.
//
// Dispatch order: unknown opcode (20/00) or service action (24/00), pending
// unit attention (except INQUIRY, REPORT LUNS, REQUEST SENSE), CDB control
// byte, reservation conflict, busy (sanitize: NOT READY), read-only LU or SWP
// (DATA PROTECT for commands that write the medium), then the handler.
//
// Task attributes: ORDERED is a barrier (it waits for every command in
// progress, and later commands wait for it); HEAD OF QUEUE and ACA run as
// SIMPLE.
import { BlockDeviceError } from '../blockdev/block-device.js';
import type { BlockDevice } from '../blockdev/block-device.js';
import { log } from '../util/log.js';
import { checkControlByte } from './cdb.js';
import type { CommandContext, CommandSpec } from './command-spec.js';
import { commandOf, lookupCommand } from './commands.js';
import type { BlockLimits, BusyState, LogicalUnitApi, LuIdentity, PortGroup, ReservationGate, TargetApi, UnitAttentionScope } from './lu-api.js';
import { AccessState, defaultLimits } from './lu-api.js';
import { ModeState } from './mode-pages.js';
import { Reservations } from './reservations.js';
import type { Asc, SenseOptions } from './sense.js';
import { buildSense, ReservationConflictError, ScsiError, Sense } from './sense.js';
import type { Nexus, ScsiRequest, ScsiResponse } from './port.js';
import { ScsiStatus, TaskAttribute } from './port.js';

/** What a logical unit needs of the target device it belongs to. */
export interface LuHost {
  readonly api: TargetApi;
  /** The I_T nexuses currently logged in to the target (unit attentions are raised for these). */
  nexuses(): Iterable<Nexus>;
  portGroups(): readonly PortGroup[];
}

export interface LogicalUnitOptions {
  identity: LuIdentity;
  readOnly?: boolean;
  /** Overrides of the VPD 0xB0 limits. */
  limits?: Partial<BlockLimits>;
  /** Reservation state (default: in-memory persistent reservations of this LU alone). */
  reservations?: ReservationGate;
  /** EXTENDED COPY is offered (3PC, VPD 0x8F); default true. */
  thirdPartyCopy?: boolean;
}

/** At most this many unit attentions wait per nexus; later ones are dropped (SAM-5 allows reporting fewer). */
const MAX_PENDING_UA = 16;

function sameAsc(a: Asc, b: Asc): boolean {
  return a.asc === b.asc && a.ascq === b.ascq && a.key === b.key;
}

export class LogicalUnit implements LogicalUnitApi {
  readonly identity: LuIdentity;
  readonly readOnly: boolean;
  readonly reservations: ReservationGate;
  /** The mode pages: the reservation gate's when it is a Reservations (LU state, shared by every path), else this LU's own. */
  readonly mode: ModeState;
  readonly limits: BlockLimits;
  readonly thirdPartyCopy: boolean;

  /** Pending unit attentions by nexus id, oldest first. */
  private readonly ua = new Map<string, Asc[]>();
  /** Total pending unit attentions: the dispatcher's fast path skips the map when zero. */
  private uaPending = 0;
  private busyState: BusyState | null = null;
  private lastBlockCount: number;
  /** Port groups of this LU alone (a vdisk exported by several agents); null = the target's. */
  private ownPortGroups: readonly PortGroup[] | null = null;

  // Exclusion: normal commands count themselves in `active`; an exclusive
  // section waits for active == 0 and holds off new commands meanwhile.
  private active = 0;
  private exclusiveRunning = false;
  private readonly exclusiveWaiters: Array<() => void> = [];
  private blocked: Array<() => void> = [];

  constructor(
    readonly lun: number,
    readonly device: BlockDevice,
    private readonly host: LuHost,
    opts: LogicalUnitOptions,
  ) {
    this.identity = opts.identity;
    this.readOnly = opts.readOnly ?? false;
    this.reservations = opts.reservations ?? new Reservations();
    this.mode = this.reservations instanceof Reservations ? this.reservations.mode : new ModeState();
    this.limits = { ...defaultLimits(device.blockSize), ...opts.limits };
    this.thirdPartyCopy = opts.thirdPartyCopy ?? true;
    this.lastBlockCount = device.blockCount;
  }

  get target(): TargetApi {
    return this.host.api;
  }

  descriptorSense(): boolean {
    return this.mode.descriptorSense;
  }

  portGroups(): readonly PortGroup[] {
    return this.ownPortGroups ?? this.host.portGroups();
  }

  /**
   * Sets the LU's port groups (the paths to it, with their access states).
   * When a group's state changed, or a group came or went, every nexus gets
   * ASYMMETRIC ACCESS STATE CHANGED (implicit ALUA, SPC-4 5.16.2.6) and
   * true is returned; the first groups set raise nothing.
   */
  setPortGroups(groups: readonly PortGroup[]): boolean {
    const before = this.ownPortGroups;
    this.ownPortGroups = groups.map((g) => ({ ...g, relativePortIds: [...g.relativePortIds] }));
    if (before === null) return false;
    const states = (gs: readonly PortGroup[]) =>
      gs
        .map((g) => `${g.id}:${g.state ?? AccessState.ActiveOptimized}`)
        .sort()
        .join(' ');
    if (states(before) === states(groups)) return false;
    this.raiseUnitAttention(Sense.asymmetricAccessStateChanged);
    return true;
  }

  busy(): BusyState | null {
    return this.busyState;
  }

  setBusy(state: BusyState | null): void {
    this.busyState = state;
  }

  // ---- unit attentions ----

  raiseUnitAttention(code: Asc, scope?: UnitAttentionScope): void {
    if (scope?.only) {
      this.queueUa(scope.only.id, code);
      return;
    }
    for (const n of this.host.nexuses()) {
      if (scope?.except && n.id === scope.except.id) continue;
      this.queueUa(n.id, code);
    }
  }

  private queueUa(nexusId: string, code: Asc): void {
    let q = this.ua.get(nexusId);
    if (!q) {
      q = [];
      this.ua.set(nexusId, q);
    }
    if (q.length >= MAX_PENDING_UA || q.some((x) => sameAsc(x, code))) return;
    q.push(code);
    this.uaPending++;
  }

  takeUnitAttention(nexus: Nexus): Asc | undefined {
    if (this.uaPending === 0) return undefined;
    const q = this.ua.get(nexus.id);
    if (!q) return undefined;
    const code = q.shift();
    if (code) this.uaPending--;
    if (q.length === 0) this.ua.delete(nexus.id);
    return code;
  }

  /** Pending unit attentions of a nexus, oldest first (for tests and diagnostics). */
  pendingUnitAttentions(nexus: Nexus): readonly Asc[] {
    return this.ua.get(nexus.id) ?? [];
  }

  private clearUnitAttention(nexus: Nexus, code: Asc): void {
    const q = this.ua.get(nexus.id);
    if (!q) return;
    const i = q.findIndex((x) => sameAsc(x, code));
    if (i < 0) return;
    q.splice(i, 1);
    this.uaPending--;
    if (q.length === 0) this.ua.delete(nexus.id);
  }

  /** LOGICAL UNIT RESET / target reset: SPC-2 reservations go, every nexus (but `except`) sees `code`. */
  reset(code: Asc, except?: Nexus): void {
    this.reservations.onReset();
    this.raiseUnitAttention(code, except ? { except } : undefined);
  }

  /**
   * LOGICAL UNIT RESET or CLEAR TASK SET from `nexus`, after the transport
   * has aborted the tasks concerned here: its effects on the LU's state and
   * unit attentions are decided like any reservation change, so that with
   * an authority (the controller) they reach every path. If the authority
   * cannot be reached, the nexuses of this target still see the effects.
   */
  async taskSetRequest(kind: 'lu-reset' | 'clear-task-set', nexus: Nexus): Promise<void> {
    const gate = this.reservations;
    if (gate instanceof Reservations) {
      const o = await gate.request(this, nexus, { kind, cdb: Buffer.alloc(0), data: null });
      if (o.status === ScsiStatus.Good) return;
      log.warn(`${kind} of LU ${this.lun} of ${this.host.api.name} from ${nexus.initiatorPort}: ${o.message ?? `status ${o.status}`}; effects on this target only`);
    }
    if (kind === 'lu-reset') this.reset(Sense.deviceResetOccurred);
    else this.raiseUnitAttention(Sense.commandsClearedByAnotherInitiator, { except: nexus });
  }

  /**
   * The nexus logged out or its connection dropped. Its SPC-2 reservation
   * goes; pending unit attentions are kept, so that the same initiator port
   * reconnecting still sees them (and sees nothing it has already seen).
   */
  nexusLost(nexus: Nexus): void {
    this.reservations.onNexusLost(nexus);
  }

  // ---- exclusion ----

  /**
   * Run `fn` while no other command of this LU is in progress. Called from a
   * command handler of this LU (COMPARE AND WRITE, SANITIZE...): the caller's
   * own slot is released while it waits.
   */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    // nested: an exclusive section (or an ORDERED command) already excludes everything else
    if (this.exclusiveRunning) return fn();
    return this.runExclusive(fn, this.active > 0);
  }

  private async runExclusive<T>(fn: () => Promise<T>, holdsSlot: boolean): Promise<T> {
    if (holdsSlot) this.active--;
    await new Promise<void>((resolve) => {
      this.exclusiveWaiters.push(resolve);
      this.pump();
    });
    try {
      return await fn();
    } finally {
      this.exclusiveRunning = false;
      if (holdsSlot) this.active++;
      this.pump();
    }
  }

  /** Start the next exclusive section when the LU is idle, else release waiting commands. */
  private pump(): void {
    if (this.exclusiveRunning) return;
    if (this.exclusiveWaiters.length > 0) {
      if (this.active === 0) {
        this.exclusiveRunning = true;
        this.exclusiveWaiters.shift()!();
      }
      return;
    }
    if (this.blocked.length === 0) return;
    const waiting = this.blocked;
    this.blocked = [];
    for (const go of waiting) go();
  }

  private async runShared(ctx: CommandContext): Promise<ScsiResponse> {
    if (this.exclusiveRunning || this.exclusiveWaiters.length > 0) {
      await new Promise<void>((resolve) => this.blocked.push(resolve));
      // released by pump(); re-check in case another exclusive section got in first
      if (this.exclusiveRunning || this.exclusiveWaiters.length > 0) return this.runShared(ctx);
    }
    this.active++;
    try {
      return await ctx.spec.handler(ctx);
    } finally {
      this.sharedDone();
    }
  }

  // ---- dispatch ----

  async execute(req: ScsiRequest): Promise<ScsiResponse> {
    return this.start(req);
  }

  /**
   * execute() without a promise when the command completes in this turn
   * (checks that fail, a READ or WRITE the device did inline): the common
   * 4 KiB I/O then costs no promise hops through the SCSI layers.
   */
  start(req: ScsiRequest): ScsiResponse | Promise<ScsiResponse> {
    // commandOf allocates nothing; lookupCommand says why there is no row.
    let spec = commandOf(req.cdb);
    if (spec === undefined) {
      const found = lookupCommand(req.cdb);
      if ('error' in found) return this.errorResponse(found.error, req, undefined);
      spec = found.spec;
    }
    if (this.device.blockCount !== this.lastBlockCount) {
      this.lastBlockCount = this.device.blockCount;
      this.raiseUnitAttention(Sense.capacityDataChanged);
    }
    if (this.uaPending > 0) {
      if (!spec.skipsUnitAttention) {
        const ua = this.takeUnitAttention(req.nexus);
        if (ua) return this.checkCondition(ua);
      } else if (spec.clearsUnitAttention) {
        // REPORT LUNS reports the new inventory, which is what that UA was about (SPC-4 6.33)
        this.clearUnitAttention(req.nexus, spec.clearsUnitAttention);
      }
    }
    const ctx: CommandContext = { req, lu: this, spec };
    try {
      if (req.cdb.length < spec.cdbLength) throw ScsiError.cdb(0, undefined, `${spec.name} CDB of ${req.cdb.length} bytes`);
      checkControlByte(req.cdb, spec.cdbLength);
      if (this.reservations.conflicts(req, spec)) return { status: ScsiStatus.ReservationConflict };
      if (this.busyState && !spec.allowedWhileBusy) {
        const progress = this.busyState.progress();
        throw new ScsiError(this.busyState.sense, progress === undefined ? {} : { progress }, `${spec.name} while busy`);
      }
      if (spec.writesMedium && (this.readOnly || this.mode.softwareWriteProtect)) {
        throw new ScsiError(this.readOnly ? Sense.writeProtected : Sense.softwareWriteProtected, {}, `${spec.name} on write-protected LU ${this.lun}`);
      }
    } catch (e) {
      return this.errorResponse(e, req, spec);
    }
    if (req.attr === TaskAttribute.Ordered && !this.exclusiveRunning) {
      return this.runExclusive(async () => ctx.spec.handler(ctx), false).catch((e: unknown) => this.errorResponse(e, req, spec));
    }
    if (this.exclusiveRunning || this.exclusiveWaiters.length > 0) {
      return this.runShared(ctx).catch((e: unknown) => this.errorResponse(e, req, spec));
    }
    // runShared inline: counted in `active` while the handler runs, whether it completes now or later.
    this.active++;
    let r: ScsiResponse | Promise<ScsiResponse>;
    try {
      r = spec.handler(ctx);
    } catch (e) {
      this.sharedDone();
      return this.errorResponse(e, req, spec);
    }
    if (!(r instanceof Promise)) {
      this.sharedDone();
      return r;
    }
    return r.then(
      (resp) => {
        this.sharedDone();
        return resp;
      },
      (e: unknown) => {
        this.sharedDone();
        return this.errorResponse(e, req, spec);
      },
    );
  }

  /** A shared (non-exclusive) command left the handler: an exclusive section may start. */
  private sharedDone(): void {
    this.active--;
    if (this.active === 0 && this.exclusiveWaiters.length > 0) this.pump();
  }

  checkCondition(code: Asc, opts?: SenseOptions): ScsiResponse {
    return { status: ScsiStatus.CheckCondition, sense: buildSense(code, this.mode.descriptorSense, opts) };
  }

  private errorResponse(e: unknown, req: ScsiRequest, spec: CommandSpec | undefined): ScsiResponse {
    if (e instanceof ScsiError) return this.checkCondition(e.code, e.opts);
    if (e instanceof ReservationConflictError) return { status: ScsiStatus.ReservationConflict };
    const what = `${spec?.name ?? `opcode 0x${(req.cdb[0] ?? 0).toString(16)}`} on LU ${this.lun} of ${this.host.api.name} from ${req.nexus.initiatorPort}`;
    if (e instanceof BlockDeviceError) {
      log.warn(`${what}: ${e.message}`, { kind: e.kind, lba: e.lba });
      // Exactly the sense the error carries: the device's, or the controller's for a failed fault.
      return this.checkCondition(e.sense, e.lba === undefined ? {} : { information: e.lba });
    }
    log.error(`${what}: internal error`, { error: e instanceof Error ? (e.stack ?? e.message) : String(e) });
    return this.checkCondition(Sense.internalTargetFailure);
  }
}
