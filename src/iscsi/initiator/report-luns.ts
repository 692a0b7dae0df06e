// REPORT LUNS (SPC-4 6.33) through any ScsiTransport: the LUN numbers a target serves.

import { decodeLun } from '../pdu/lun.js';
import type { ScsiTransport } from './transport.js';
import { TransportError } from './transport.js';

const REPORT_LUNS = 0xa0;

/** Thrown when the target answers REPORT LUNS with a SCSI status other than GOOD. */
export class ScsiStatusError extends Error {
  constructor(
    readonly status: number,
    readonly sense: Buffer | undefined,
    message: string,
  ) {
    super(message);
    this.name = 'ScsiStatusError';
  }
}

/** The LUNs of the target behind `transport` (addressed through LUN 0), ascending. */
export async function reportLuns(transport: ScsiTransport, allocation = 16 + 8 * 512): Promise<number[]> {
  for (;;) {
    const cdb = Buffer.alloc(12);
    cdb[0] = REPORT_LUNS;
    cdb.writeUInt32BE(allocation, 6);
    const r = await transport.execute({ lun: 0, cdb, dataInLength: allocation });
    if (r.status !== 0) {
      const key = r.sense && r.sense.length > 2 ? ` sense key 0x${((r.sense[2] as number) & 0xf).toString(16)}` : '';
      throw new ScsiStatusError(r.status, r.sense, `REPORT LUNS failed with SCSI status 0x${r.status.toString(16)}${key}`);
    }
    const data = r.data ?? Buffer.alloc(0);
    if (data.length < 8) throw new TransportError('protocol', `REPORT LUNS returned ${data.length} bytes`);
    const listLength = data.readUInt32BE(0);
    if (listLength + 8 > allocation && allocation < 1 << 20) {
      allocation = listLength + 8;
      continue;
    }
    return parseReportLuns(data);
  }
}

export function parseReportLuns(data: Buffer): number[] {
  const listLength = data.readUInt32BE(0);
  const end = Math.min(data.length, 8 + listLength);
  const out: number[] = [];
  for (let off = 8; off + 8 <= end; off += 8) {
    const lun = decodeLun(data.readBigUInt64BE(off));
    if (lun >= 0) out.push(lun);
  }
  return out.sort((a, b) => a - b);
}
