// The label at the start of every storage container: what lets an agent
// recognise a file or block device as container <uuid> whatever path it has on
// this host. Pure encode/decode of one LABEL_SIZE block; no I/O here.
//
// Layout (little-endian, LABEL_SIZE = 4096 bytes so a 4Kn device or an
// O_DIRECT reader can fetch it in one aligned read):
//   0   8  magic "TABULA-C"
//   8   4  format version (1)
//   12  4  flags (0; reserved)
//   16 16  container UUID (binary, RFC 4122 byte order)
//   32  8  size: container bytes, label included
//   40  8  data offset: where segment 0 of the data area starts
//   48  4  default segment size for vdisks allocated here
//   52  4  reserved (0)
//   56  8  created time, ms since the Unix epoch
//   64  .. reserved, zero
//   4092 4 CRC32C of bytes 0..4091
import { crc32c } from '@node-rs/crc32';
import { MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE } from '../table/mapping-table.js';

export const LABEL_MAGIC = 'TABULA-C';
export const LABEL_VERSION = 1;
export const LABEL_SIZE = 4096;
/** Data areas start on a 1 MiB boundary by default: aligned for any device and for huge segments' first bytes. */
export const DEFAULT_DATA_OFFSET = 1 << 20;
/** Data offsets must be multiples of this (the largest logical block size), so O_DIRECT I/O stays aligned. */
export const DATA_OFFSET_ALIGN = 4096;

const MAGIC = Buffer.from(LABEL_MAGIC, 'latin1');
const CRC_AT = LABEL_SIZE - 4;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface ContainerLabel {
  /** Container UUID, lower case with dashes. */
  readonly id: string;
  readonly formatVersion: number;
  /** Bytes of the container, label included. */
  readonly size: number;
  /** Byte offset of the data area; container segment offsets count from here. */
  readonly dataOffset: number;
  /** Segment size the container was initialised for (a default; each vdisk has its own). */
  readonly segmentSize: number;
  /** Creation time, ms since the Unix epoch. */
  readonly createdMs: number;
}

/**
 * Why a block is not a usable label:
 * - `unlabelled`: no Tabula magic (empty, or some other format);
 * - `truncated`: fewer than LABEL_SIZE bytes to decode;
 * - `corrupt`: the magic is there but the checksum does not match;
 * - `unsupported-version`: a newer format than this code knows;
 * - `invalid`: checksum fine but the fields make no sense (a bug that wrote it).
 */
export type LabelErrorKind = 'unlabelled' | 'truncated' | 'corrupt' | 'unsupported-version' | 'invalid';

export class LabelError extends Error {
  constructor(
    readonly kind: LabelErrorKind,
    message: string,
    /** Where the label was read from, when known. */
    readonly path?: string,
  ) {
    super(path === undefined ? message : `${path}: ${message}`);
    this.name = 'LabelError';
  }
}

export function isUuid(s: string): boolean {
  return UUID_RE.test(s);
}

/** Bytes of the data area. */
export function dataAreaSize(label: ContainerLabel): number {
  return label.size - label.dataOffset;
}

/** Whole segments of `segmentSize` that fit in the data area. */
export function dataSegments(label: ContainerLabel, segmentSize: number = label.segmentSize): number {
  return Math.floor(dataAreaSize(label) / segmentSize);
}

/** Throws LabelError('invalid') unless the fields can be written and read back. */
export function checkLabel(l: ContainerLabel, path?: string): void {
  const bad = (why: string): never => {
    throw new LabelError('invalid', `label ${why}`, path);
  };
  if (!isUuid(l.id)) bad(`container id "${l.id}" is not a lower-case UUID`);
  if (l.formatVersion !== LABEL_VERSION) bad(`format version ${l.formatVersion} is not ${LABEL_VERSION}`);
  const seg = l.segmentSize;
  if (!Number.isInteger(seg) || seg < MIN_SEGMENT_SIZE || seg > MAX_SEGMENT_SIZE || (seg & (seg - 1)) !== 0) {
    bad(`segment size ${seg} is not a power of two from ${MIN_SEGMENT_SIZE} to ${MAX_SEGMENT_SIZE}`);
  }
  if (!Number.isSafeInteger(l.dataOffset) || l.dataOffset < LABEL_SIZE || l.dataOffset % DATA_OFFSET_ALIGN !== 0) {
    bad(`data offset ${l.dataOffset} must be a multiple of ${DATA_OFFSET_ALIGN} and at least ${LABEL_SIZE}`);
  }
  if (!Number.isSafeInteger(l.size) || l.size < l.dataOffset + seg) {
    bad(`size ${l.size} leaves no room for one ${seg}-byte segment after data offset ${l.dataOffset}`);
  }
  if (!Number.isSafeInteger(l.createdMs) || l.createdMs < 0) bad(`created time ${l.createdMs} invalid`);
}

/** The LABEL_SIZE bytes for a label (checked first). */
export function encodeLabel(l: ContainerLabel): Buffer {
  checkLabel(l);
  const b = Buffer.alloc(LABEL_SIZE);
  MAGIC.copy(b, 0);
  b.writeUInt32LE(l.formatVersion, 8);
  b.writeUInt32LE(0, 12);
  Buffer.from(l.id.replace(/-/g, ''), 'hex').copy(b, 16);
  b.writeBigUInt64LE(BigInt(l.size), 32);
  b.writeBigUInt64LE(BigInt(l.dataOffset), 40);
  b.writeUInt32LE(l.segmentSize, 48);
  b.writeBigUInt64LE(BigInt(l.createdMs), 56);
  b.writeUInt32LE(crc32c(b.subarray(0, CRC_AT)), CRC_AT);
  return b;
}

/** True when the block starts with the label magic (a container, possibly damaged). */
export function hasLabelMagic(block: Buffer): boolean {
  return block.length >= MAGIC.length && block.subarray(0, MAGIC.length).equals(MAGIC);
}

/** Decodes a label from the first LABEL_SIZE bytes of `block`; throws LabelError. */
export function decodeLabel(block: Buffer, path?: string): ContainerLabel {
  if (!hasLabelMagic(block)) {
    throw new LabelError('unlabelled', block.length === 0 ? 'empty: no container label' : 'no container label (magic "TABULA-C" not found)', path);
  }
  if (block.length < LABEL_SIZE) {
    throw new LabelError('truncated', `container label cut short: ${block.length} of ${LABEL_SIZE} bytes`, path);
  }
  const stored = block.readUInt32LE(CRC_AT);
  const actual = crc32c(block.subarray(0, CRC_AT));
  if (stored !== actual) {
    throw new LabelError(
      'corrupt',
      `container label checksum mismatch (stored 0x${hex32(stored)}, computed 0x${hex32(actual)})`,
      path,
    );
  }
  const formatVersion = block.readUInt32LE(8);
  if (formatVersion !== LABEL_VERSION) {
    throw new LabelError('unsupported-version', `container label format version ${formatVersion} (this build reads ${LABEL_VERSION})`, path);
  }
  const h = block.toString('hex', 16, 32);
  const label: ContainerLabel = {
    id: `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`,
    formatVersion,
    size: safeU64(block, 32, 'size', path),
    dataOffset: safeU64(block, 40, 'data offset', path),
    segmentSize: block.readUInt32LE(48),
    createdMs: safeU64(block, 56, 'created time', path),
  };
  checkLabel(label, path);
  return label;
}

function safeU64(b: Buffer, at: number, what: string, path?: string): number {
  const v = b.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new LabelError('invalid', `label ${what} ${v} is too large`, path);
  return Number(v);
}

function hex32(n: number): string {
  return n.toString(16).padStart(8, '0');
}
