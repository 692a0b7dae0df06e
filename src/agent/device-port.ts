// What the agent daemon needs of the block device behind each exported vdisk
// (VdiskDevice satisfies it as it is), and how the daemon makes one. Kept as
// an interface so the daemon's protocol handling does not reach into the
// device's internals.
import type { BlockDevice } from '../blockdev/block-device.js';
import type { ContainerResolver } from '../container/driver.js';
import { MappingTable, SegmentState, type TableDelta } from '../table/index.js';
import type { LazyVersions } from './durable-sync.js';
import type { FaultSink, Lease } from './fault.js';
import { VdiskDevice } from './vdisk-device.js';

export interface AgentDevice extends BlockDevice {
  /** Version of the installed table. */
  readonly version: number;
  readonly fenced: boolean;
  /** I/O pieces held for fault replies or table installs (Heartbeat.held_ios). */
  readonly heldCount: number;
  /** Resolves once old-table I/O on the changed segments has drained: then the version may be acked. */
  installTable(table: MappingTable): Promise<void>;
  /** Same, for a delta; rejects with VersionGapError when the table is not at delta.fromVersion. */
  applyDelta(delta: TableDelta): Promise<void>;
  /** The same at once when nothing needs draining (true), else false with nothing done; throws what applyDelta rejects with. */
  applyDeltaNow?(delta: TableDelta): boolean;
  /** Every segment invalid (I/O held) until the next installTable. */
  fence(): void;
  /** The export changed: agents exporting the vdisk, and this agent's number in the table's owners. */
  setSharing?(exporters: number, ownerId: number): void;
}

export interface DeviceSpec {
  vdiskId: string;
  vdiskName: string;
  /** The table to start with: every segment invalid, version 0, until the controller's TableFull. */
  table: MappingTable;
  readOnly: boolean;
  faults: FaultSink;
  containers: ContainerResolver;
  /** Held I/O with no answer this long fails with NOT READY 02/04/0A. */
  holdTimeoutMs: number;
  /** The controller's lease (zero and no-write segments are held while it is expired). */
  lease?: Lease;
  /** Agents exporting the vdisk (one per Export.port_groups entry). */
  exporters?: number;
  /** This agent's number in the table's owners (Export.own_port_group). */
  ownerId?: number;
  /** The vdisk's lazily committed versions, which SYNCHRONIZE CACHE and FUA writes wait to be durable. */
  lazyVersions?: LazyVersions;
}

export type DeviceFactory = (spec: DeviceSpec) => AgentDevice;

export const vdiskDeviceFactory: DeviceFactory = (spec) =>
  new VdiskDevice({
    vdiskId: spec.vdiskId,
    table: spec.table,
    containers: spec.containers,
    faults: spec.faults,
    holdTimeoutMs: spec.holdTimeoutMs,
    readOnly: spec.readOnly,
    lease: spec.lease,
    exporters: spec.exporters,
    ownerId: spec.ownerId,
    lazyVersions: spec.lazyVersions,
  });

/** A table where every segment is invalid: what an export serves before its first TableFull. */
export function placeholderTable(opts: { segmentCount: number; segmentSize: number; blockSize: number; name: string }): MappingTable {
  const t = new MappingTable({ ...opts, version: 0 });
  t.setStateRange(0, t.segmentCount, SegmentState.Invalid);
  return t;
}
