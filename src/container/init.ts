// `tabula container init PATH [--size SIZE] [--force]`: make a file or block
// device into a container by writing a label at its start. Creates a sparse
// file when PATH does not exist; never overwrites an existing label (even a
// damaged one) without `force`, because that would orphan every vdisk
// segment stored there. The data area of an existing file or device is
// zeroed (hole punched, zeroing discard, or zeros written), because the
// controller hands a new container's segments out as zeros: whatever was
// there before must not show through a new vdisk.
//
// PATH may be an iSCSI locator naming one LUN (iscsi://HOST:PORT/IQN/LUN):
// the same rules, applied through the initiator (initLun), the size
// defaulting to the LUN's capacity as it does to a block device's.
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import { DEFAULT_SEGMENT_SIZE } from '../table/mapping-table.js';
import { fileOps } from '../native/fileops.js';
import { call, callVoid, errnoName, readFully, sizeOf, tryNative, writeFully, type FileMedium } from '../blockdev/file-io.js';
import { ContainerIoError } from './driver.js';
import { isIscsiLocator, parseIscsiLocator, redactLocator } from './iscsi-locator.js';
import type { IscsiLun } from './iscsi-lun.js';
import { connectLun, type IscsiScanOptions } from './iscsi-scan.js';
import {
  DEFAULT_DATA_OFFSET,
  LABEL_SIZE,
  LABEL_VERSION,
  LabelError,
  checkLabel,
  decodeLabel,
  encodeLabel,
  hasLabelMagic,
  type ContainerLabel,
} from './label.js';

export interface InitOptions {
  /** Container size in bytes. Needed to create a file; grows a smaller existing file; at most a device's size. */
  size?: number;
  /** Overwrite an existing (or damaged) label. The old container's data area is zeroed with the rest. */
  force?: boolean;
  segmentSize?: number;
  dataOffset?: number;
  /** Container UUID to use (default: a random one). */
  id?: string;
  /** Creation time to record (default: now). */
  createdMs?: number;
  /** How to reach an iSCSI LUN (initiator name, mutual CHAP, ...), when PATH is a locator. */
  iscsi?: IscsiScanOptions;
}

export interface InitResult {
  label: ContainerLabel;
  medium: FileMedium | 'iscsi';
  /** True when the file did not exist and was created. */
  created: boolean;
  /** Id of the label that `force` replaced, if any ('' for a damaged one). */
  replaced?: string;
}

/**
 * - `labelled`: already a container (use force); `existingId` names it ('' if its label is damaged);
 * - `size`: size missing, invalid, too small, or not possible for this file/device;
 * - `medium`: not a regular file or block device;
 * - `io`: the open, read or write failed.
 */
export type InitErrorKind = 'labelled' | 'size' | 'medium' | 'io';

export class ContainerInitError extends Error {
  constructor(
    readonly kind: InitErrorKind,
    readonly path: string,
    message: string,
    readonly existingId?: string,
  ) {
    super(`${path}: ${message}`);
    this.name = 'ContainerInitError';
  }
}

function checkSizeOption(path: string, size: number | undefined): void {
  if (size !== undefined && (!Number.isSafeInteger(size) || size <= 0)) {
    throw new ContainerInitError('size', path, `size ${size} is not a positive whole number of bytes`);
  }
}

/** The label to write, checked (a bad size or geometry is a 'size' error). */
function newLabel(path: string, size: number, opts: InitOptions): ContainerLabel {
  const label: ContainerLabel = {
    id: opts.id ?? randomUUID(),
    formatVersion: LABEL_VERSION,
    size,
    dataOffset: opts.dataOffset ?? DEFAULT_DATA_OFFSET,
    segmentSize: opts.segmentSize ?? DEFAULT_SEGMENT_SIZE,
    createdMs: opts.createdMs ?? Date.now(),
  };
  try {
    checkLabel(label, path);
  } catch (e) {
    throw new ContainerInitError('size', path, (e as Error).message.replace(`${path}: `, ''));
  }
  return label;
}

export async function initContainer(path: string, opts: InitOptions = {}): Promise<InitResult> {
  if (isIscsiLocator(path)) return initIscsiContainer(path, opts);
  const dataOffset = opts.dataOffset ?? DEFAULT_DATA_OFFSET;
  checkSizeOption(path, opts.size);
  const { fd, created } = await openForInit(path, opts.size);
  try {
    let medium: FileMedium;
    let actual: number;
    try {
      ({ medium, size: actual } = await sizeOf(fd, path));
    } catch (e) {
      throw new ContainerInitError('medium', path, `not a regular file or block device (${(e as Error).message})`);
    }
    let replaced: string | undefined;
    if (!created) replaced = await existingLabel(fd, path, actual, opts.force === true);

    const size = await settleSize(fd, path, medium, actual, opts.size);
    const label = newLabel(path, size, opts);
    // A new (sparse) file, or the part a file was just grown by, is zeros already.
    if (!created) await zeroDataArea(fd, path, dataOffset, Math.min(actual, size));
    const block = encodeLabel(label);
    try {
      await writeFully(fd, block, 0, block.length, 0);
      await callVoid((cb) => fs.fdatasync(fd, cb));
    } catch (e) {
      throw new ContainerInitError('io', path, `writing the label: ${errnoName(e)} ${(e as Error).message}`);
    }
    return replaced === undefined ? { label, medium, created } : { label, medium, created, replaced };
  } catch (e) {
    if (created) fs.rmSync(path, { force: true });
    throw e;
  } finally {
    fs.closeSync(fd);
  }
}

/** Largest zero buffer written when the medium cannot zero a range itself. */
const ZERO_CHUNK = 1 << 20;

/**
 * Makes [from, end) read as zeros: punches a hole (on a block device a
 * zeroing discard), else zeroes the range natively, else writes zeros in
 * bounded chunks. The label's fdatasync makes it durable.
 */
async function zeroDataArea(fd: number, path: string, from: number, end: number): Promise<void> {
  const length = end - from;
  if (length <= 0) return;
  try {
    if (tryNative(() => fileOps.punchHole(fd, from, length))) return;
    if (tryNative(() => fileOps.zeroRange(fd, from, length))) return;
  } catch (e) {
    throw new ContainerInitError('io', path, `zeroing the data area (${length} bytes at ${from}): ${errnoName(e)} ${(e as Error).message}`);
  }
  const zero = Buffer.alloc(Math.min(ZERO_CHUNK, length));
  for (let done = 0; done < length; ) {
    const n = Math.min(zero.length, length - done);
    try {
      await writeFully(fd, zero, 0, n, from + done);
    } catch (e) {
      throw new ContainerInitError('io', path, `zeroing the data area at ${from + done}: ${errnoName(e)} ${(e as Error).message}`);
    }
    done += n;
  }
}

async function openForInit(path: string, size: number | undefined): Promise<{ fd: number; created: boolean }> {
  const { O_RDWR, O_CREAT, O_EXCL } = fs.constants;
  try {
    return { fd: await call<number>((cb) => fs.open(path, O_RDWR, cb)), created: false };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new ContainerInitError('io', path, `cannot open read-write: ${(e as Error).message}`);
    }
  }
  if (size === undefined) throw new ContainerInitError('size', path, 'does not exist: give a size to create it');
  try {
    return { fd: await call<number>((cb) => fs.open(path, O_RDWR | O_CREAT | O_EXCL, 0o600, cb)), created: true };
  } catch (e) {
    throw new ContainerInitError('io', path, `cannot create: ${(e as Error).message}`);
  }
}

/** Refuses an existing label unless forced; returns the id it replaces (undefined when unlabelled). */
async function existingLabel(fd: number, path: string, actual: number, force: boolean): Promise<string | undefined> {
  const block = Buffer.alloc(Math.min(LABEL_SIZE, actual));
  try {
    await readFully(fd, block, 0, block.length, 0);
  } catch (e) {
    throw new ContainerInitError('io', path, `reading the first ${block.length} bytes: ${(e as Error).message}`);
  }
  return replacedLabel(block, path, force);
}

/** Refuses a block that starts with a label (even a damaged one) unless forced; returns the id it replaces. */
function replacedLabel(block: Buffer, path: string, force: boolean): string | undefined {
  if (!hasLabelMagic(block)) return undefined;
  let id = '';
  let what: string;
  try {
    id = decodeLabel(block).id;
    what = `already a container (id ${id})`;
  } catch (e) {
    what = `holds a damaged container label (${e instanceof LabelError ? e.message : String(e)})`;
  }
  if (!force) throw new ContainerInitError('labelled', path, `${what}; use force to overwrite it`, id);
  return id;
}

/** The size to record: grows a regular file to `wanted`, never shrinks; a device gives at most its size. */
async function settleSize(
  fd: number,
  path: string,
  medium: FileMedium,
  actual: number,
  wanted: number | undefined,
): Promise<number> {
  if (wanted === undefined) {
    if (actual === 0) throw new ContainerInitError('size', path, 'is empty: give a size');
    return actual;
  }
  if (medium === 'block') {
    if (wanted > actual) throw new ContainerInitError('size', path, `size ${wanted} exceeds the device's ${actual} bytes`);
    return wanted;
  }
  if (wanted < actual) {
    throw new ContainerInitError('size', path, `file is ${actual} bytes, larger than the requested ${wanted} (refusing to shrink)`);
  }
  if (wanted > actual) {
    try {
      await callVoid((cb) => fs.ftruncate(fd, wanted, cb));
    } catch (e) {
      throw new ContainerInitError('io', path, `cannot grow to ${wanted} bytes: ${(e as Error).message}`);
    }
  }
  return wanted;
}

/** `initContainer` of an iSCSI locator: one LUN, reached through the initiator. */
async function initIscsiContainer(locator: string, opts: InitOptions): Promise<InitResult> {
  const shown = redactLocator(locator);
  let lun: IscsiLun;
  try {
    lun = await connectLun(parseIscsiLocator(locator), opts.iscsi);
  } catch (e) {
    if (e instanceof ContainerInitError) throw e;
    throw new ContainerInitError('io', shown, (e as Error).message.replace(`${shown}: `, ''));
  }
  try {
    const r = await initLun(lun, opts);
    return { label: r.label, medium: 'iscsi', created: false, ...(r.replaced === undefined ? {} : { replaced: r.replaced }) };
  } finally {
    await lun.transport.close().catch(() => undefined);
  }
}

/**
 * Labels a probed LUN: refuses an existing label unless forced, records
 * `size` (default: the LUN's capacity; never more), zeroes the data area
 * (deallocating where the LUN can) and writes the label with FUA, then
 * SYNCHRONIZE CACHE. Errors are ContainerInitError naming the LUN.
 */
export async function initLun(lun: IscsiLun, opts: InitOptions = {}): Promise<{ label: ContainerLabel; replaced?: string }> {
  const path = lun.path;
  checkSizeOption(path, opts.size);
  const capacity = lun.geometry.capacity;
  const io = async (what: string, fn: () => Promise<void>): Promise<void> => {
    try {
      await fn();
    } catch (e) {
      if (!(e instanceof ContainerIoError)) throw e;
      throw new ContainerInitError('io', path, `${what}: ${e.message.replace(` ${path}`, '')}`);
    }
  };
  const block = Buffer.alloc(Math.min(LABEL_SIZE, capacity));
  await io(`reading the first ${block.length} bytes`, () => lun.readInto(0, block, 0, block.length));
  const replaced = replacedLabel(block, path, opts.force === true);
  if (opts.size !== undefined && opts.size > capacity) {
    throw new ContainerInitError('size', path, `size ${opts.size} exceeds the LUN's ${capacity} bytes`);
  }
  const label = newLabel(path, opts.size ?? capacity, opts);
  await io('zeroing the data area', () => lun.discard(label.dataOffset, label.size - label.dataOffset));
  await io('writing the label', async () => {
    await lun.write(0, encodeLabel(label), true);
    await lun.flush();
  });
  return replaced === undefined ? { label } : { label, replaced };
}
