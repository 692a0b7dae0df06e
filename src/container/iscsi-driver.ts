// Container driver for a LUN reached over iSCSI (kind 'iscsi'): the label
// at LBA 0 as for files, the data area after it, every I/O a SCSI command
// through the agent's own initiator (src/iscsi/initiator). The SCSI work and
// the error mapping are iscsi-lun.ts; this file adds the label, the data area
// and the checks every driver makes. There is no page cache on this path, so
// agents on several hosts can share the LUN as they are.
import type { ScsiTransport } from '../iscsi/initiator/transport.js';
import { ContainerIoError, checkContainerIo, checkContainerWritable, type ContainerDriver, type ContainerOp, type ContainerWriteOptions } from './driver.js';
import { formatIscsiLocator, type IscsiLocator } from './iscsi-locator.js';
import { IscsiLun, type IscsiLunOptions, type LunGeometry } from './iscsi-lun.js';
import { LABEL_SIZE, LabelError, dataAreaSize, decodeLabel, type ContainerLabel } from './label.js';

export interface IscsiDriverOptions extends IscsiLunOptions {
  readOnly?: boolean;
  /** Close the transport with the driver (default true; false when several LUNs share one session). */
  ownsTransport?: boolean;
}

/** The LUN-form locator as shown and stored: the secret left out. */
export function iscsiPath(locator: IscsiLocator): string {
  return formatIscsiLocator(locator, { redact: true });
}

/**
 * Reads and checks the label at the start of a probed LUN. Throws
 * LabelError (kind 'truncated' too when the label claims more than the LUN
 * has) or ContainerIoError.
 */
export async function readLunLabel(lun: IscsiLun): Promise<ContainerLabel> {
  const block = Buffer.alloc(Math.min(LABEL_SIZE, lun.geometry.capacity));
  await lun.readInto(0, block, 0, block.length);
  const label = decodeLabel(block, lun.path);
  if (lun.geometry.capacity < label.size) {
    throw new LabelError('truncated', `label says ${label.size} bytes but the LUN has ${lun.geometry.capacity}`, lun.path);
  }
  return label;
}

export class IscsiContainerDriver implements ContainerDriver {
  readonly kind = 'iscsi';
  readonly dataSize: number;
  readonly #base: number;
  #closed = false;

  private constructor(
    /** The LUN-form locator (with its credentials: never show it; `path` is the shown form). */
    readonly locator: IscsiLocator,
    readonly path: string,
    readonly label: ContainerLabel,
    readonly lun: IscsiLun,
    readonly readOnly: boolean,
    private readonly ownsTransport: boolean,
  ) {
    this.dataSize = dataAreaSize(label);
    this.#base = label.dataOffset;
    lun.reportOffsetsFrom(this.#base);
  }

  get id(): string {
    return this.label.id;
  }

  get geometry(): LunGeometry {
    return this.lun.geometry;
  }

  /**
   * Opens the labelled LUN `locator` names over `transport` (a session to its
   * target). Throws LabelError when the label is missing or damaged, and
   * ContainerIoError when the LUN cannot be probed or read. The transport is
   * closed on failure when the driver would have owned it.
   */
  static async open(transport: ScsiTransport, locator: IscsiLocator, opts: IscsiDriverOptions = {}): Promise<IscsiContainerDriver> {
    if (locator.target === undefined || locator.lun === undefined) {
      throw new Error(`${formatIscsiLocator(locator, { redact: true })}: a container driver opens one LUN (iscsi://HOST:PORT/IQN/LUN)`);
    }
    const path = iscsiPath(locator);
    const owns = opts.ownsTransport ?? true;
    try {
      const lun = await IscsiLun.probe(transport, locator.lun, path, opts);
      const label = await readLunLabel(lun);
      return new IscsiContainerDriver(locator, path, label, lun, opts.readOnly ?? false, owns);
    } catch (e) {
      if (owns) await transport.close().catch(() => undefined);
      throw e;
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    await this.readInto(offset, buf, 0, length);
    return buf;
  }

  async readInto(offset: number, target: Buffer, targetOffset: number, length: number): Promise<void> {
    this.#check('read', offset, length);
    if (targetOffset < 0 || targetOffset + length > target.length) {
      throw new RangeError(`read ${this.path} offset ${offset}: ${length} bytes do not fit the buffer at ${targetOffset}`);
    }
    await this.lun.readInto(this.#base + offset, target, targetOffset, length);
  }

  async write(offset: number, data: Buffer, opts?: ContainerWriteOptions): Promise<void> {
    this.#checkWritable('write', offset);
    this.#check('write', offset, data.length);
    await this.lun.write(this.#base + offset, data, opts?.fua === true);
  }

  async flush(): Promise<void> {
    if (this.readOnly || this.#closed) return;
    await this.lun.flush();
  }

  async discard(offset: number, length: number): Promise<void> {
    this.#checkWritable('discard', offset);
    this.#check('discard', offset, length);
    await this.lun.discard(this.#base + offset, length);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#checkWritable('zero', offset);
    this.#check('zero', offset, length);
    await this.lun.writeZeroes(this.#base + offset, length);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (!this.ownsTransport) return;
    try {
      await this.lun.transport.close();
    } catch (e) {
      throw new ContainerIoError('close', this.path, -1, 'EIO', (e as Error).message);
    }
  }

  #check(op: ContainerOp, offset: number, length: number): void {
    checkContainerIo(this, this.#closed, op, offset, length);
  }

  #checkWritable(op: ContainerOp, offset: number): void {
    checkContainerWritable(this, this.readOnly, op, offset);
  }
}
