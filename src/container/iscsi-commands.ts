// The SCSI commands the iSCSI container driver sends, and the data it reads
// back: CDB builders and decoders of INQUIRY, READ CAPACITY, the Block Limits
// (B0h) and Logical Block Provisioning (B2h) VPD pages, REPORT LUNS and sense
// data (fixed and descriptor). Pure functions of bytes (SBC-4, SPC-5), so the
// driver holds policy only.

export const Op = {
  TestUnitReady: 0x00,
  Inquiry: 0x12,
  ReadCapacity10: 0x25,
  SynchronizeCache10: 0x35,
  Unmap: 0x42,
  Read16: 0x88,
  Write16: 0x8a,
  SynchronizeCache16: 0x91,
  WriteSame16: 0x93,
  ServiceActionIn16: 0x9e,
  ReportLuns: 0xa0,
} as const;

/** WRITE(16) byte 1: force unit access. */
const FUA = 0x08;
/** WRITE SAME(16) byte 1: deallocate where the data matches what unmapped blocks read as. */
const WS_UNMAP = 0x08;

export const SenseKey = {
  NoSense: 0x0,
  RecoveredError: 0x1,
  NotReady: 0x2,
  MediumError: 0x3,
  HardwareError: 0x4,
  IllegalRequest: 0x5,
  UnitAttention: 0x6,
  DataProtect: 0x7,
  BlankCheck: 0x8,
  AbortedCommand: 0xb,
  Miscompare: 0xe,
} as const;

const SENSE_KEY_NAMES = [
  'NO SENSE',
  'RECOVERED ERROR',
  'NOT READY',
  'MEDIUM ERROR',
  'HARDWARE ERROR',
  'ILLEGAL REQUEST',
  'UNIT ATTENTION',
  'DATA PROTECT',
  'BLANK CHECK',
  'VENDOR SPECIFIC',
  'COPY ABORTED',
  'ABORTED COMMAND',
  'RESERVED',
  'VOLUME OVERFLOW',
  'MISCOMPARE',
  'COMPLETED',
];

export const Status = {
  Good: 0x00,
  CheckCondition: 0x02,
  ConditionMet: 0x04,
  Busy: 0x08,
  ReservationConflict: 0x18,
  TaskSetFull: 0x28,
  AcaActive: 0x30,
  TaskAborted: 0x40,
} as const;

export function statusName(status: number): string {
  switch (status) {
    case Status.Good:
      return 'GOOD';
    case Status.CheckCondition:
      return 'CHECK CONDITION';
    case Status.ConditionMet:
      return 'CONDITION MET';
    case Status.Busy:
      return 'BUSY';
    case Status.ReservationConflict:
      return 'RESERVATION CONFLICT';
    case Status.TaskSetFull:
      return 'TASK SET FULL';
    case Status.AcaActive:
      return 'ACA ACTIVE';
    case Status.TaskAborted:
      return 'TASK ABORTED';
    default:
      return `status 0x${status.toString(16).padStart(2, '0')}`;
  }
}

function u64(b: Buffer, at: number, v: number): void {
  b.writeBigUInt64BE(BigInt(v), at);
}



export function readCapacity10Cdb(): Buffer {
  const c = Buffer.alloc(10);
  c[0] = Op.ReadCapacity10;
  return c;
}



export function writeSame16Cdb(lba: number, blocks: number, unmap: boolean): Buffer {
  const c = Buffer.alloc(16);
  c[0] = Op.WriteSame16;
  if (unmap) c[1] = WS_UNMAP;
  u64(c, 2, lba);
  c.writeUInt32BE(blocks, 10);
  return c;
}


export function synchronizeCache10Cdb(): Buffer {
  const c = Buffer.alloc(10);
  c[0] = Op.SynchronizeCache10;
  return c;
}

/** An UNMAP CDB and its parameter list for the given (lba, blocks) descriptors. */
export function unmapCommand(ranges: readonly { lba: number; blocks: number }[]): { cdb: Buffer; data: Buffer } {
  const data = Buffer.alloc(8 + 16 * ranges.length);
  data.writeUInt16BE(data.length - 2, 0);
  data.writeUInt16BE(16 * ranges.length, 2);
  ranges.forEach((r, i) => {
    u64(data, 8 + i * 16, r.lba);
    data.writeUInt32BE(r.blocks, 16 + i * 16);
  });
  const cdb = Buffer.alloc(10);
  cdb[0] = Op.Unmap;
  cdb.writeUInt16BE(data.length, 7);
  return { cdb, data };
}

export function reportLunsCdb(alloc: number): Buffer {
  const c = Buffer.alloc(12);
  c[0] = Op.ReportLuns;
  c.writeUInt32BE(alloc, 6);
  return c;
}

// ---- decoders ----

export interface SenseData {
  key: number;
  asc: number;
  ascq: number;
  /** The INFORMATION field (first failing LBA of a READ or WRITE), when valid. */
  info?: number;
}

/** Fixed (70h/71h) or descriptor (72h/73h) sense; undefined when too short or of an unknown format. */
export function decodeSense(s: Buffer | undefined): SenseData | undefined {
  if (s === undefined || s.length < 2) return undefined;
  const code = s[0]! & 0x7f;
  if (code === 0x70 || code === 0x71) {
    if (s.length < 3) return undefined;
    const out: SenseData = { key: s[2]! & 0x0f, asc: s.length > 12 ? s[12]! : 0, ascq: s.length > 13 ? s[13]! : 0 };
    if (s[0]! & 0x80 && s.length >= 7) out.info = s.readUInt32BE(3);
    return out;
  }
  if (code === 0x72 || code === 0x73) {
    if (s.length < 4) return undefined;
    const out: SenseData = { key: s[1]! & 0x0f, asc: s[2]!, ascq: s[3]! };
    const end = Math.min(s.length, 8 + (s.length > 7 ? s[7]! : 0));
    for (let off = 8; off + 2 <= end; off += 2 + s[off + 1]!) {
      if (s[off] === 0x00 && off + 12 <= end && s[off + 2]! & 0x80) {
        const v = s.readBigUInt64BE(off + 4);
        if (v <= BigInt(Number.MAX_SAFE_INTEGER)) out.info = Number(v);
      }
    }
    return out;
  }
  return undefined;
}

export function senseText(s: SenseData): string {
  const hex = (n: number): string => n.toString(16).padStart(2, '0');
  return `${SENSE_KEY_NAMES[s.key] ?? 'sense'} ${hex(s.key)}/${hex(s.asc)}/${hex(s.ascq)}`;
}

export interface StandardInquiry {
  /** 0: connected; 1: not connected now; 3: no LU at this LUN. */
  qualifier: number;
  /** 0: direct access block device. */
  deviceType: number;
  vendor: string;
  product: string;
  revision: string;
}

export function decodeInquiry(d: Buffer): StandardInquiry {
  if (d.length < 1) throw new Error('INQUIRY returned no data');
  const text = (from: number, to: number): string => (d.length >= to ? d.toString('latin1', from, to).trim() : '');
  return {
    qualifier: d[0]! >> 5,
    deviceType: d[0]! & 0x1f,
    vendor: text(8, 16),
    product: text(16, 32),
    revision: text(32, 36),
  };
}

export interface Capacity {
  blockSize: number;
  blocks: number;
  /** LBPME: logical block provisioning management (thin provisioning) enabled. */
  thin: boolean;
  /** LBPRZ in READ CAPACITY(16): unmapped blocks read as zeros. */
  readsZeroWhenUnmapped: boolean;
}

export function decodeReadCapacity16(d: Buffer): Capacity {
  if (d.length < 12) throw new Error(`READ CAPACITY(16) returned ${d.length} bytes, fewer than 12`);
  const last = d.readBigUInt64BE(0);
  if (last >= BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`READ CAPACITY(16) returned last LBA ${last}, too large`);
  const flags = d.length > 14 ? d[14]! : 0;
  return { blocks: Number(last) + 1, blockSize: d.readUInt32BE(8), thin: (flags & 0x80) !== 0, readsZeroWhenUnmapped: (flags & 0x40) !== 0 };
}

export function decodeReadCapacity10(d: Buffer): Capacity {
  if (d.length < 8) throw new Error(`READ CAPACITY(10) returned ${d.length} bytes, fewer than 8`);
  return { blocks: d.readUInt32BE(0) + 1, blockSize: d.readUInt32BE(4), thin: false, readsZeroWhenUnmapped: false };
}

/** The page codes listed by the Supported VPD Pages page (00h). */
export function decodeSupportedPages(d: Buffer): number[] {
  if (d.length < 4) return [];
  const n = Math.min(d.readUInt16BE(2), d.length - 4);
  return [...d.subarray(4, 4 + n)];
}

/** Block Limits (B0h): counts in logical blocks, 0 where the LU reports no limit. */
export interface BlockLimitsVpd {
  maxTransferBlocks: number;
  optimalTransferBlocks: number;
  maxUnmapBlocks: number;
  maxUnmapDescriptors: number;
  unmapGranularity: number;
  maxWriteSameBlocks: number;
}

export function decodeBlockLimits(d: Buffer): BlockLimitsVpd {
  const u32 = (at: number): number => (d.length >= at + 4 ? d.readUInt32BE(at) : 0);
  let maxWs = 0;
  if (d.length >= 44) {
    const v = d.readBigUInt64BE(36);
    maxWs = v > 0xffffffffn ? 0xffffffff : Number(v);
  }
  return {
    maxTransferBlocks: u32(8),
    optimalTransferBlocks: u32(12),
    maxUnmapBlocks: u32(20),
    maxUnmapDescriptors: u32(24),
    unmapGranularity: u32(28),
    maxWriteSameBlocks: maxWs,
  };
}

/** Logical Block Provisioning (B2h). */
export interface ProvisioningVpd {
  /** LBPU: UNMAP supported. */
  unmap: boolean;
  /** LBPWS: WRITE SAME(16) with UNMAP supported. */
  writeSameUnmap: boolean;
  /** LBPRZ (bits 4..2 in SBC-4, bit 2 in SBC-3; non-zero: unmapped blocks read as zeros). */
  readsZeroWhenUnmapped: boolean;
}

export function decodeProvisioning(d: Buffer): ProvisioningVpd {
  const b5 = d.length > 5 ? d[5]! : 0;
  return { unmap: (b5 & 0x80) !== 0, writeSameUnmap: (b5 & 0x40) !== 0, readsZeroWhenUnmapped: (b5 & 0x1c) !== 0 };
}

/** LUN numbers from REPORT LUNS data (flat and peripheral addressing; others skipped). */
export function decodeReportLuns(d: Buffer): number[] {
  if (d.length < 8) return [];
  const len = Math.min(d.readUInt32BE(0), d.length - 8);
  const out: number[] = [];
  for (let off = 8; off + 8 <= 8 + len; off += 8) {
    const method = d[off]! >> 6;
    if (method === 0 && (d[off]! & 0x3f) === 0) out.push(d[off + 1]!);
    else if (method === 1) out.push(((d[off]! & 0x3f) << 8) | d[off + 1]!);
  }
  return out;
}

/** Bytes of the whole REPORT LUNS answer its header announces (more than was asked for when truncated). */
export function reportLunsLength(d: Buffer): number {
  return d.length < 4 ? 0 : d.readUInt32BE(0) + 8;
}

const OP_NAMES: Readonly<Record<number, string>> = {
  [Op.TestUnitReady]: 'TEST UNIT READY',
  [Op.Inquiry]: 'INQUIRY',
  [Op.ReadCapacity10]: 'READ CAPACITY(10)',
  [Op.SynchronizeCache10]: 'SYNCHRONIZE CACHE(10)',
  [Op.Unmap]: 'UNMAP',
  [Op.Read16]: 'READ(16)',
  [Op.Write16]: 'WRITE(16)',
  [Op.SynchronizeCache16]: 'SYNCHRONIZE CACHE(16)',
  [Op.WriteSame16]: 'WRITE SAME(16)',
  [Op.ServiceActionIn16]: 'READ CAPACITY(16)',
  [Op.ReportLuns]: 'REPORT LUNS',
};

/** A command as errors name it: `WRITE(16) FUA lba=2048 blocks=8`, `INQUIRY VPD B0h`. Built only when an error needs it. */
export function cdbText(cdb: Buffer): string {
  const op = cdb[0] ?? 0;
  const name = OP_NAMES[op] ?? `opcode 0x${op.toString(16).padStart(2, '0')}`;
  if ((op === Op.Read16 || op === Op.Write16 || op === Op.WriteSame16) && cdb.length >= 14) {
    const flags = op === Op.Write16 && cdb[1]! & FUA ? ' FUA' : op === Op.WriteSame16 && cdb[1]! & WS_UNMAP ? ' UNMAP' : '';
    return `${name}${flags} lba=${cdb.readBigUInt64BE(2)} blocks=${cdb.readUInt32BE(10)}`;
  }
  if (op === Op.Inquiry && cdb[1]! & 0x01) return `${name} VPD ${cdb[2]!.toString(16).toUpperCase().padStart(2, '0')}h`;
  if (op === Op.Unmap && cdb.length >= 9) return `${name} (${(cdb.readUInt16BE(7) - 8) / 16} descriptors)`;
  return name;
}
