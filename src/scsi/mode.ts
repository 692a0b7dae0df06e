// MODE SENSE(6/10) and MODE SELECT(6/10) (SPC-4 6.11-6.14, SBC-4 6.5) over
// the LU's mode pages (mode-pages.ts). Pages are shared by every I_T nexus;
// a change raises MODE PARAMETERS CHANGED for the other nexuses, on every
// path: MODE SELECT is a request to the LU's gate like PERSISTENT RESERVE
// OUT (reservations.ts), while MODE SENSE reads the LU's own copy. Saved
// values are not implemented: PC=3 and SP=1 are rejected.
import { alloc16, clip } from './cdb.js';
import type { CommandContext } from './command-spec.js';
import { good } from './command-spec.js';
import { ModePage, modeSelectList } from './mode-pages.js';
import { decideLuRequest } from './reservations.js';
import { ScsiError, Sense } from './sense.js';
import type { ScsiResponse } from './port.js';

/** MODE SENSE(6) 0x1a and MODE SENSE(10) 0x5a. */
export function modeSense(ctx: CommandContext): ScsiResponse {
  const { cdb } = ctx.req;
  const lu = ctx.lu;
  const ten = cdb[0] === 0x5a;
  const dbd = (cdb[1]! & 0x08) !== 0;
  const llbaa = ten && (cdb[1]! & 0x10) !== 0;
  const pc = cdb[2]! >> 6;
  const page = cdb[2]! & 0x3f;
  const subpage = cdb[3]!;
  const allocation = ten ? alloc16(cdb, 7) : cdb[4]!;
  if (pc === 3) throw new ScsiError(Sense.savingParametersNotSupported, { field: { inCdb: true, byte: 2, bit: 7 } }, 'saved mode pages are not supported');
  const defs = lu.mode.select(page, subpage);
  if (!defs) throw page === ModePage.AllPages || lu.mode.select(page, 0xff) ? ScsiError.cdb(3, undefined, `mode subpage ${subpage}`) : ScsiError.cdb(2, 5, `mode page ${page}`);

  const dev = lu.device;
  let desc: Buffer = Buffer.alloc(0);
  if (!dbd) {
    if (llbaa) {
      desc = Buffer.alloc(16);
      if (pc !== 1) {
        desc.writeBigUInt64BE(BigInt(dev.blockCount), 0);
        desc.writeUInt32BE(dev.blockSize, 12);
      }
    } else {
      desc = Buffer.alloc(8);
      if (pc !== 1) {
        desc.writeUInt32BE(Math.min(dev.blockCount, 0xffffffff), 0);
        desc.writeUIntBE(dev.blockSize, 5, 3);
      }
    }
  }
  const pages = defs.map((d) => lu.mode.bytes(d, pc));
  const pagesLen = pages.reduce((n, p) => n + p.length, 0);
  // device-specific parameter: WP for read-only or software write protected LUs, DPOFUA (DPO and FUA are honoured)
  const dsp = (lu.readOnly || lu.mode.softwareWriteProtect ? 0x80 : 0) | 0x10;
  const hdrLen = ten ? 8 : 4;
  const out = Buffer.alloc(hdrLen + desc.length + pagesLen);
  if (ten) {
    out.writeUInt16BE(out.length - 2, 0);
    out[3] = dsp;
    out[4] = llbaa && !dbd ? 0x01 : 0;
    out.writeUInt16BE(desc.length, 6);
  } else {
    out[0] = Math.min(out.length - 1, 0xff);
    out[2] = dsp;
    out[3] = desc.length;
  }
  desc.copy(out, hdrLen);
  let off = hdrLen + desc.length;
  for (const p of pages) {
    p.copy(out, off);
    off += p.length;
  }
  return good(clip(out, allocation));
}

/** MODE SELECT(6) 0x15 and MODE SELECT(10) 0x55. */
export async function modeSelect(ctx: CommandContext): Promise<ScsiResponse> {
  const { cdb } = ctx.req;
  const lu = ctx.lu;
  const ten = cdb[0] === 0x55;
  if ((cdb[1]! & 0x10) === 0) throw ScsiError.cdb(1, 4, 'MODE SELECT with PF=0 (vendor-specific pages) is not supported');
  if (cdb[1]! & 0x01) throw ScsiError.cdb(1, 0, 'saving mode pages is not supported');
  const listLength = ten ? alloc16(cdb, 7) : cdb[4]!;
  const res: ScsiResponse = { status: 0, dataOutLength: listLength };
  if (listLength === 0) return res;
  const data = ctx.req.dataOut ?? Buffer.alloc(0);
  if (data.length < listLength) throw new ScsiError(Sense.parameterListLengthError, {}, `MODE SELECT got ${data.length} of ${listLength} bytes`);
  const list = data.subarray(0, listLength);
  const { descriptor, longLba } = modeSelectList(cdb, list);
  if (descriptor) {
    const hdrLen = ten ? 8 : 4;
    const blockLength = longLba ? descriptor.readUInt32BE(12) : descriptor.readUIntBE(5, 3);
    if (blockLength !== lu.device.blockSize) throw ScsiError.param(hdrLen + (longLba ? 12 : 5), undefined, `block length ${blockLength} cannot be changed`);
  }
  // The pages are LU state: the LU's gate decides (here, or the controller for every path) and raises the UAs.
  const decided = await decideLuRequest(ctx, { kind: 'mode-select', cdb, data: list });
  return { ...decided, dataOutLength: listLength };
}
