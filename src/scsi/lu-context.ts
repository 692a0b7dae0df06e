// What the built-in command families need of a logical unit beyond the
// narrow LogicalUnitApi (mode pages, limits, ports, unit attentions). Kept in
// its own module so that the families do not import logical-unit.ts (which
// imports them through the command table).
import type { BusyState, LogicalUnitApi } from './command-types.js';
import type { ModeState } from './mode.js';
import type { Asc } from './sense.js';
import { ScsiError, Sense } from './sense.js';
import type { Nexus } from './types.js';

/** Block limits advertised in VPD page 0xB0 and enforced by the handlers. */
export interface BlockLimits {
  /** MAXIMUM TRANSFER LENGTH for READ/WRITE/VERIFY (blocks). */
  maxTransferBlocks: number;
  /** OPTIMAL TRANSFER LENGTH (blocks). */
  optimalTransferBlocks: number;
  /** OPTIMAL TRANSFER LENGTH GRANULARITY (blocks). */
  transferGranularity: number;
  maxUnmapBlocks: number;
  maxUnmapDescriptors: number;
  /** OPTIMAL UNMAP GRANULARITY (blocks). */
  unmapGranularity: number;
  maxWriteSameBlocks: number;
  /** MAXIMUM COMPARE AND WRITE LENGTH (blocks, <= 255). */
  maxCompareAndWriteBlocks: number;
  /** MAXIMUM ATOMIC TRANSFER LENGTH (blocks) for WRITE ATOMIC(16). */
  maxAtomicBlocks: number;
  /** ATOMIC ALIGNMENT (blocks; 0 = any). */
  atomicAlignment: number;
  /** ATOMIC TRANSFER LENGTH GRANULARITY (blocks; 0 = any). */
  atomicGranularity: number;
}

export const DEFAULT_LIMITS_BYTES = {
  optimalTransfer: 1 << 20,
  maxUnmap: 1 << 30,
  maxWriteSame: 1 << 30,
  maxAtomic: 1 << 20,
};

export function defaultLimits(blockSize: number): BlockLimits {
  return {
    // 65536 blocks: libiscsi moves that much in one WRITE(16)/READ(16) without consulting the limit
    maxTransferBlocks: 65536,
    optimalTransferBlocks: DEFAULT_LIMITS_BYTES.optimalTransfer / blockSize,
    transferGranularity: 1,
    // libiscsi treats more than 1M LBAs or descriptors as insane
    maxUnmapBlocks: Math.min(1 << 20, DEFAULT_LIMITS_BYTES.maxUnmap / blockSize),
    maxUnmapDescriptors: 256,
    unmapGranularity: 1,
    maxWriteSameBlocks: DEFAULT_LIMITS_BYTES.maxWriteSame / blockSize,
    maxCompareAndWriteBlocks: 64,
    maxAtomicBlocks: DEFAULT_LIMITS_BYTES.maxAtomic / blockSize,
    atomicAlignment: 0,
    atomicGranularity: 0,
  };
}

/** A target port group as reported by REPORT TARGET PORT GROUPS and VPD 0x83. */
export interface PortGroup {
  id: number;
  relativePortIds: number[];
}

export interface DeviceServerLu extends LogicalUnitApi {
  /** Brand, checked by asDeviceLu. */
  readonly deviceServer: true;
  readonly mode: ModeState;
  readonly limits: BlockLimits;
  /** Target port groups of the target (ALUA: implicit, all active/optimized). */
  portGroups(): readonly PortGroup[];
  /** Dequeue the oldest pending unit attention for this nexus (REQUEST SENSE). */
  takeUnitAttention(nexus: Nexus): Asc | undefined;
  /** The current busy state (SANITIZE in progress), if any. */
  busy(): BusyState | null;
  /** Whether EXTENDED COPY is offered (3PC bit, VPD 0x8F). */
  readonly thirdPartyCopy: boolean;
}

export function asDeviceLu(lu: LogicalUnitApi): DeviceServerLu {
  const d = lu as Partial<DeviceServerLu>;
  if (d.deviceServer !== true) {
    throw new ScsiError(Sense.internalTargetFailure, {}, `LU ${lu.lun} is not a Tabula device-server logical unit`);
  }
  return lu as DeviceServerLu;
}
