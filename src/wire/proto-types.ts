// TypeScript shapes of the messages in proto/tabula.proto, as protobufjs
// reflection produces and accepts them (camelCase, 64-bit integers as
// numbers, enums as numbers). Decoded messages carry every scalar field
// (proto3 defaults filled in); oneofs carry a `body` discriminant.

import type { IoOp, SegmentState } from '../table/index.js';

export const enum FaultAction {
  Retry = 0,
  Fail = 1,
  Wait = 2,
  Done = 3,
}

export const FAULT_ACTION_NAMES: readonly string[] = ['retry', 'fail', 'wait', 'done'];

export interface WireExtent {
  first: number;
  count: number;
  state: SegmentState;
  /** '' for no container. */
  container: string;
  offset: number;
  /** Write owner (agent number); 0 or absent: none. */
  owner?: number;
  /** Extra legs of a mirrored vdisk's run (`list`, leg 1 first); absent (or null) for one copy. */
  legs?: ExtentLegs | null;
}

export interface ExtentLegs {
  list: ExtentLeg[];
}

export interface ExtentLeg {
  container: string;
  /** Container offset of the extent's first segment, in segments. */
  offset: number;
}

export interface ContainerRef {
  id: string;
  path: string;
  size: number;
  dataOffset: number;
  /** Absent (an older agent) or null = reachable. */
  reachable?: boolean | null;
  /** Why it is unreachable; '' or absent when reachable. */
  error?: string;
  /** Driver kind ('file', 'block', 'iscsi'); '' or absent from an older agent. */
  kind?: string;
}

/** Whether a reported container is reachable: absent means yes (an older agent). */
export function refReachable(c: ContainerRef): boolean {
  return c.reachable !== false;
}

// ---- agent -> controller ----

export interface TableVersion {
  vdiskId: string;
  version: number;
}

export interface Register {
  agentName: string;
  portals: string[];
  containers: ContainerRef[];
  tables: TableVersion[];
  softwareVersion: string;
  /** The agent reads TableFull's run form (several messages, `more`). Absent (false) from older agents. */
  tableRuns?: boolean;
  /** The agent's host (Register.host_id); '' or absent from an older agent. */
  hostId?: string;
}

export interface ContainerUpdate {
  containers: ContainerRef[];
}

export interface Heartbeat {
  seq: number;
  heldIos: number;
  /** The agent is draining (stopping); absent = false. */
  draining?: boolean;
}

export interface TableAck {
  vdiskId: string;
  version: number;
}

export interface TableRequest {
  vdiskId: string;
  haveVersion: number;
  reason: string;
}

export interface Fault {
  faultId: number;
  vdiskId: string;
  tableVersion: number;
  segment: number;
  op: IoOp;
  lba: number;
  blocks: number;
  state: SegmentState;
  detail: string;
  /** A leg fault: the I/O failed on this container only (other legs succeeded); '' or absent otherwise. */
  failedContainer?: string;
}

export interface CopyDone {
  commandId: number;
  ok: boolean;
  error: string;
}

export interface Release {
  requestId: number;
  vdiskId: string;
  tableVersion: number;
  firstSegment: number;
  segmentCount: number;
}

export type AgentMessage =
  | { body: 'register'; register: Register }
  | { body: 'heartbeat'; heartbeat: Heartbeat }
  | { body: 'tableAck'; tableAck: TableAck }
  | { body: 'tableRequest'; tableRequest: TableRequest }
  | { body: 'fault'; fault: Fault }
  | { body: 'copyDone'; copyDone: CopyDone }
  | { body: 'release'; release: Release }
  | { body: 'luRequest'; luRequest: LuRequest }
  | { body: 'containerUpdate'; containerUpdate: ContainerUpdate }
  | { body: 'syncRequest'; syncRequest: SyncRequestMsg };

/**
 * The agent must promise durability (SYNCHRONIZE CACHE, FUA) and holds
 * `version` of the vdisk received lazy and not confirmed since; answered by
 * SyncReply once every commit up to `version` is durable.
 */
export interface SyncRequestMsg {
  requestId: number;
  vdiskId: string;
  version: number;
}

// ---- controller -> agent ----

export interface Welcome {
  controllerId: string;
  agentName: string;
  heartbeatIntervalMs: number;
  ackTimeoutMs: number;
  holdTimeoutMs: number;
  rejectedContainers: string[];
  /** Agent lease in ms (0 = none): see Welcome.lease_ms in the .proto. */
  leaseMs: number;
  /** The agent's number (target port identity; see Welcome.agent_number); 0 or absent = none. */
  agentNumber?: number;
}

export interface Export {
  vdiskId: string;
  vdiskName: string;
  targetIqn: string;
  lun: number;
  blockSize: number;
  size: number;
  segmentSize: number;
  readOnly: boolean;
  /** Initiator IQNs allowed to see this LUN; empty = any. */
  allowedInitiators: string[];
  /** The vdisk's target port groups, one per exporting agent; empty or absent = no ALUA information. */
  portGroups?: WirePortGroup[];
  /** Id of this agent's own group in portGroups. */
  ownPortGroup?: number;
}

/** Asymmetric access states, numerically SPC-4's codes (proto AluaState). */
export const enum AluaState {
  ActiveOptimized = 0,
  ActiveNonOptimized = 1,
  Standby = 2,
  Unavailable = 3,
  Transitioning = 15,
}

export interface WirePortGroup {
  id: number;
  state: AluaState;
  relativePortIds: number[];
  agent: string;
}

export interface ExportSet {
  exports: Export[];
}

export interface TableFull {
  vdiskId: string;
  version: number;
  segmentSize: number;
  blockSize: number;
  segmentCount: number;
  containers: string[];
  extents: WireExtent[];
  /** Run form (see proto/tabula.proto): where this message's first run starts. */
  firstSegment?: number;
  runCounts?: number[];
  runStates?: number[];
  /** 1-based index into `containers`; 0 for none. */
  runContainers?: number[];
  runOffsets?: number[];
  /** Run form: write owner of each run; empty when none is owned. */
  runOwners?: number[];
  /** Run form, mirrored: extra legs of each run; empty when no run has any. */
  runLegCounts?: number[];
  /** Run form, mirrored: flattened over runs, leg 1 first; 1-based index into `containers`. */
  runLegContainers?: number[];
  /** Run form, mirrored: flattened like runLegContainers; container offset of the run's first segment. */
  runLegOffsets?: number[];
  /** Run form: more messages of this table follow. */
  more?: boolean;
  /** The LU state as of `version`; absent or null from a controller that keeps none. */
  luState?: LuStateMsg | null;
  /** `version` is committed but not yet durable against power loss (every piece carries it); false/absent: durable, and every earlier version too. */
  lazy?: boolean;
}

export interface TableDeltaMsg {
  vdiskId: string;
  fromVersion: number;
  toVersion: number;
  segmentCount: number;
  extents: WireExtent[];
  /** What this version changed of the LU; absent = nothing. */
  lu?: LuChange | null;
  /** toVersion is committed but not yet durable against power loss; false/absent: durable, and every earlier version too. */
  lazy?: boolean;
}

export interface LuChange {
  /** The LU state as of the delta's toVersion; null = unchanged. */
  state: LuStateMsg | null;
  /** Unit attentions this version raises (one-shot). */
  events: LuEventMsg[];
}

export interface FaultReply {
  faultId: number;
  action: FaultAction;
  tableVersion: number;
  senseKey: number;
  asc: number;
  ascq: number;
  reason: string;
}

export interface CopyCommand {
  commandId: number;
  srcContainer: string;
  srcOffset: number;
  dstContainer: string;
  dstOffset: number;
  length: number;
}

export interface ZeroCommand {
  commandId: number;
  container: string;
  offset: number;
  length: number;
}

export interface ReleaseReply {
  requestId: number;
  ok: boolean;
  tableVersion: number;
  error: string;
}

export interface Fence {
  vdiskId: string;
  reason: string;
}

/** Answer to Heartbeat `seq` (sent only when the controller grants a lease). */
export interface HeartbeatReply {
  seq: number;
}

export interface Rescan {
  reason: string;
}

export interface ContainerShare {
  id: string;
  shared: boolean;
  /** In this agent's own failure domain (reads prefer near legs); absent from an older controller. */
  near?: boolean;
}

export interface ContainerSet {
  containers: ContainerShare[];
}

export interface ControllerError {
  message: string;
  fatal: boolean;
}

export type ControllerMessage =
  | { body: 'welcome'; welcome: Welcome }
  | { body: 'exportSet'; exportSet: ExportSet }
  | { body: 'tableFull'; tableFull: TableFull }
  | { body: 'tableDelta'; tableDelta: TableDeltaMsg }
  | { body: 'faultReply'; faultReply: FaultReply }
  | { body: 'copyCommand'; copyCommand: CopyCommand }
  | { body: 'releaseReply'; releaseReply: ReleaseReply }
  | { body: 'fence'; fence: Fence }
  | { body: 'error'; error: ControllerError }
  | { body: 'zeroCommand'; zeroCommand: ZeroCommand }
  | { body: 'heartbeatReply'; heartbeatReply: HeartbeatReply }
  | { body: 'luReply'; luReply: LuReply }
  | { body: 'rescan'; rescan: Rescan }
  | { body: 'containerSet'; containerSet: ContainerSet }
  | { body: 'syncReply'; syncReply: SyncReplyMsg };

/** Answer to SyncRequest: ok when every commit up to the requested version is durable; not ok when the DB lost it or the vdisk is gone. */
export interface SyncReplyMsg {
  requestId: number;
  ok: boolean;
  /** The vdisk's highest durable version (>= the requested one when ok; 0 when the vdisk is gone). */
  durableVersion: number;
  /** Why not ok; '' when ok. */
  reason: string;
}

/**
 * What the stream deserializer yields for bytes that do not decode (or
 * decode to an empty oneof): the service answers with ControllerError
 * instead of letting the stream die.
 */
export interface MalformedMessage {
  body: 'malformed';
  reason: string;
}

// ---- admin ----

export type Empty = Record<string, never>;

export interface AddContainerRequest {
  id: string;
  path: string;
  size: number;
  dataOffset: number;
  segmentSize: number;
  /** Failure domain; '' or absent = derived. */
  domain?: string;
}

export interface SetContainerDomainRequest {
  id: string;
  /** '' = derived again. */
  domain: string;
}

export interface ContainerInfo {
  id: string;
  path: string;
  size: number;
  dataOffset: number;
  segmentSize: number;
  state: string;
  segmentsTotal: number;
  segmentsUsed: number;
  agents: string[];
  capacityBytes: number;
  allocatedBytes: number;
  sharedBytes: number;
  exclusiveBytes: number;
  freeBytes: number;
  /** Of `agents`, those reporting it unreachable now ("agent: why"); absent from an older controller. */
  unreachable?: string[];
  /** Agents on more than one host reach it. */
  shared?: boolean;
  /** Its failure domain (set, or derived); absent from an older controller. */
  domain?: string;
}

export interface ListContainersReply {
  containers: ContainerInfo[];
}

export interface RemoveContainerRequest {
  id: string;
  /** Gone for good: its legs leave mirrored segments (refused while it is any segment's only location). */
  dead?: boolean;
}

/** Empty for an empty container; with `dead`, what was taken off it. */
export interface RemoveContainerReply {
  /** Names of the vdisks that lost legs on it (rebuilt elsewhere now). */
  vdisks: string[];
  legs: number;
  staleLegs: number;
}

export interface CreateVdiskRequest {
  name: string;
  size: number;
  blockSize: number;
  segmentSize: number;
  thick: boolean;
  /** Locations of each segment in distinct failure domains (1..3); 0 or absent = 1. */
  copies?: number;
}

export interface VdiskRef {
  name: string;
}

export interface ExportInfo {
  vdiskId: string;
  vdiskName: string;
  agent: string;
  targetIqn: string;
  lun: number;
  readOnly: boolean;
  ackedVersion: number;
  fenced: boolean;
  allowedInitiators: string[];
  /** Configured preference: "optimized" | "non-optimized" (absent from an older controller). */
  alua?: string;
  /** The state reported for this agent's port group now, e.g. "active/optimized", "unavailable". */
  aluaState?: string;
}

export interface VdiskInfo {
  id: string;
  name: string;
  size: number;
  blockSize: number;
  segmentSize: number;
  thin: boolean;
  version: number;
  created: string;
  segmentCount: number;
  segmentsAllocated: number;
  allocatedBytes: number;
  states: Record<string, number>;
  exports: ExportInfo[];
  sharedBytes: number;
  exclusiveBytes: number;
  /** 'vdisk' | 'snapshot'. */
  kind: string;
  parent: string;
  parentId: string;
  /** Latest migration of this vdisk; null (absent on the wire) when none. */
  migration: MigrationInfo | null;
  /** Locations each segment should have (1 = not mirrored); absent from an older controller. */
  copies?: number;
  /** Copies and their health; null from a controller without mirrored vdisks. */
  health?: VdiskHealthInfo | null;
}

export interface SetVdiskCopiesRequest {
  name: string;
  copies: number;
}

export interface RebuildProgressInfo {
  done: number;
  total: number;
  bytes: number;
}

export interface VdiskHealthInfo {
  copies: number;
  segments: number;
  degraded: number;
  stale: number;
  dirty: number;
  rebuilding: RebuildProgressInfo | null;
  /** Why the running rebuild cannot go on now; '' when it can. */
  blocked: string;
  resyncing: RebuildProgressInfo | null;
}

export interface ListVdisksReply {
  vdisks: VdiskInfo[];
}

export interface ResizeVdiskRequest {
  name: string;
  size: number;
  force: boolean;
}

export interface GetTableRequest {
  name: string;
  fullIds: boolean;
}

export interface TableReply {
  vdiskId: string;
  version: number;
  segmentCount: number;
  segmentSize: number;
  blockSize: number;
  extents: WireExtent[];
  text: string;
}

export interface AddExportRequest {
  vdisk: string;
  agent: string;
  targetIqn: string;
  lun: number;
  readOnly: boolean;
  /** Empty = any initiator. */
  allowedInitiators: string[];
  /** "optimized" (default, also "" or absent) | "non-optimized". */
  alua?: string;
}

export interface ListExportsRequest {
  vdisk: string;
  agent: string;
}

export interface ListExportsReply {
  exports: ExportInfo[];
}

export interface RemoveExportRequest {
  vdisk: string;
  agent: string;
}

export interface AgentInfo {
  name: string;
  online: boolean;
  lastSeen: string;
  portals: string[];
  containers: string[];
  /** Welcome.agent_number (absent from an older controller). */
  number?: number;
  /** Register.host_id; '' or absent when unknown. */
  host?: string;
  /** Of `containers`, those it reports unreachable now ("uuid: why"). */
  unreachable?: string[];
}

export interface ListAgentsReply {
  agents: AgentInfo[];
}

export interface FaultInfo {
  id: number;
  time: string;
  agent: string;
  vdiskId: string;
  vdiskName: string;
  segment: number;
  op: string;
  lba: number;
  blocks: number;
  state: string;
  tableVersion: number;
  outcome: string;
  detail: string;
}

export interface ListFaultsRequest {
  vdisk: string;
  limit: number;
  /** Filters; "" (or absent, from an older client) matches every fault. */
  agent?: string;
  outcome?: string;
  /** ISO 8601 time. */
  since?: string;
}

export interface ListFaultsReply {
  faults: FaultInfo[];
}

export interface SetSegmentStateRequest {
  vdisk: string;
  first: number;
  count: number;
  state: SegmentState;
}

export interface CheckReply {
  ok: boolean;
  violations: string[];
  /** Not violations: degraded segments of mirrored vdisks (absent from an older controller). */
  warnings?: string[];
}

export interface SnapshotVdiskRequest {
  vdisk: string;
  name: string;
}

export interface CloneVdiskRequest {
  source: string;
  name: string;
}

export interface MigrateVdiskRequest {
  vdisk: string;
  toContainer: string;
}

export interface MigrationRef {
  vdisk: string;
}

export interface EvacuateContainerRequest {
  id: string;
}

export interface MigrationInfo {
  vdiskId: string;
  vdiskName: string;
  toContainer: string;
  fromContainer: string;
  /** 'running' | 'done' | 'cancelled' | 'failed'. */
  state: string;
  segmentsTotal: number;
  segmentsDone: number;
  bytesDone: number;
  percent: number;
  bytesPerSecond: number;
  /** -1 when unknown. */
  etaSeconds: number;
  started: string;
  updated: string;
  finished: string;
  error: string;
}

export interface ListMigrationsReply {
  migrations: MigrationInfo[];
  /** container evacuate of a failed container: segments whose stale legs there are rebuilt elsewhere. */
  rebuildingSegments?: number;
  /** Their vdisks (names). */
  rebuildingVdisks?: string[];
  /** The container evacuated had failed: its segments are rebuilt, not migrated. */
  failed?: boolean;
}

/** Every AdminService RPC: request and reply types, by method name as in the .proto. */
export interface AdminMethods {
  AddContainer: [AddContainerRequest, ContainerInfo];
  ListContainers: [Empty, ListContainersReply];
  RemoveContainer: [RemoveContainerRequest, RemoveContainerReply];
  CreateVdisk: [CreateVdiskRequest, VdiskInfo];
  ListVdisks: [Empty, ListVdisksReply];
  ShowVdisk: [VdiskRef, VdiskInfo];
  RemoveVdisk: [VdiskRef, Empty];
  ResizeVdisk: [ResizeVdiskRequest, VdiskInfo];
  GetTable: [GetTableRequest, TableReply];
  SetVdiskCopies: [SetVdiskCopiesRequest, VdiskInfo];
  RepairVdisk: [VdiskRef, VdiskInfo];
  AddExport: [AddExportRequest, ExportInfo];
  ListExports: [ListExportsRequest, ListExportsReply];
  RemoveExport: [RemoveExportRequest, Empty];
  ListAgents: [Empty, ListAgentsReply];
  ListFaults: [ListFaultsRequest, ListFaultsReply];
  SetSegmentState: [SetSegmentStateRequest, TableReply];
  Check: [Empty, CheckReply];
  SnapshotVdisk: [SnapshotVdiskRequest, VdiskInfo];
  CloneVdisk: [CloneVdiskRequest, VdiskInfo];
  MigrateVdisk: [MigrateVdiskRequest, MigrationInfo];
  GetMigration: [MigrationRef, MigrationInfo];
  ListMigrations: [Empty, ListMigrationsReply];
  CancelMigration: [MigrationRef, MigrationInfo];
  EvacuateContainer: [EvacuateContainerRequest, ListMigrationsReply];
  SetContainerDomain: [SetContainerDomainRequest, ContainerInfo];
}

/** Server-streaming AdminService RPCs (not in AdminMethods, which are unary). */
export interface BackupChunk {
  data: Buffer;
  totalBytes: number;
}

export type AdminMethod = keyof AdminMethods;
export type AdminRequest<M extends AdminMethod> = AdminMethods[M][0];
export type AdminReply<M extends AdminMethod> = AdminMethods[M][1];

// ---- one logical unit on every path ----

/** An I_T nexus on the wire (proto NexusRef). */
export interface NexusRef {
  initiatorPort: string;
  targetPort: string;
  relativeTargetPortId: number;
  targetPortGroup: number;
}

export interface PrRegistrationMsg {
  /** RESERVATION KEY as 16 hex digits. */
  key: string;
  nexus: NexusRef | null;
  allTgPt: boolean;
}

export interface LuStateMsg {
  prGeneration: number;
  aptpl: boolean;
  registrations: PrRegistrationMsg[];
  /** 0 = no persistent reservation. */
  reservationType: number;
  /** Holding nexus id; '' for the all-registrants types. */
  reservationHolder: string;
  spc2Holder?: NexusRef | null;
  /** Mode pages whose current values differ from the defaults; absent or empty = all defaults. */
  modePages?: ModePageValuesMsg[];
}

export interface ModePageValuesMsg {
  page: number;
  subpage: number;
  /** The whole page in hex. */
  values: string;
}

export const enum LuEventScope {
  All = 0,
  AllBut = 1,
  Only = 2,
}

export interface LuEventMsg {
  senseKey: number;
  asc: number;
  ascq: number;
  scope: LuEventScope;
  nexus?: NexusRef | null;
  abortTasks: boolean;
}

export const enum LuRequestKind {
  Prout = 0,
  Reserve = 1,
  Release = 2,
  LuReset = 3,
  ClearTaskSet = 4,
  NexusLost = 5,
  ModeSelect = 6,
}

export interface LuRequest {
  requestId: number;
  vdiskId: string;
  kind: LuRequestKind;
  cdb: Uint8Array;
  data: Uint8Array;
  nexus: NexusRef | null;
}

export interface LuReply {
  requestId: number;
  status: number;
  senseKey: number;
  asc: number;
  ascq: number;
  fieldValid: boolean;
  fieldInCdb: boolean;
  fieldByte: number;
  fieldBit: number;
  prGeneration: number;
  reason: string;
}
