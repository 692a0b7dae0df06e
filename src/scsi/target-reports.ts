// What the target holds, as an initiator discovers it: REPORT LUNS (also
// answered for LUNs that do not exist) and REPORT TARGET PORT GROUPS
// (implicit ALUA, every path to the LU with its access state).
import { alloc32, clip } from './cdb.js';
import type { CommandContext } from './command-spec.js';
import { good } from './command-spec.js';
import { AccessState, type PortGroup, type TargetApi } from './lu-api.js';
import type { ScsiRequest, ScsiResponse } from './port.js';
import { ScsiError } from './sense.js';

/** 8-byte SAM LUN: peripheral addressing below 256, flat space addressing up to 16383. */
export function encodeLun(lun: number): Buffer {
  const b = Buffer.alloc(8);
  if (lun < 256) b[1] = lun;
  else {
    b[0] = 0x40 | ((lun >> 8) & 0x3f);
    b[1] = lun & 0xff;
  }
  return b;
}

/** REPORT LUNS 0xa0 data for a list of LUNs; also used for LUNs that do not exist. */
export function reportLunsResponse(cdb: Buffer, luns: readonly number[]): ScsiResponse {
  const select = cdb[2]!;
  const allocation = alloc32(cdb, 6);
  if (select > 0x02) throw ScsiError.cdb(2, undefined, `SELECT REPORT ${select}`);
  if (allocation < 16) throw ScsiError.cdb(6, undefined, `allocation length ${allocation} < 16`);
  // select 1: well known LUs only, of which there are none
  const list = select === 1 ? [] : [...luns].sort((x, y) => x - y);
  const out = Buffer.alloc(8 + list.length * 8);
  out.writeUInt32BE(list.length * 8, 0);
  list.forEach((l, i) => encodeLun(l).copy(out, 8 + i * 8));
  return good(clip(out, allocation));
}

/** REPORT LUNS 0xa0. */
export function reportLuns(ctx: CommandContext): ScsiResponse {
  return reportLunsResponse(ctx.req.cdb, ctx.lu.target.luns());
}

/** REPORT LUNS 0xa0 to a LUN with no logical unit: the same list (SPC-4 5.8). */
export function reportLunsNoLun(req: ScsiRequest, target: TargetApi): ScsiResponse {
  return reportLunsResponse(req.cdb, target.luns());
}

/**
 * Supported-state bits (byte 1 of a target port group descriptor) of a group
 * whose state may change (a vdisk served by several agents): T_SUP, U_SUP,
 * AN_SUP, AO_SUP. A group without a state is always active/optimized, and
 * says only AO_SUP.
 */
const SUPPORTS_TRANSITIONS = 0x80 | 0x08 | 0x02 | 0x01;
const SUPPORTS_OPTIMIZED_ONLY = 0x01;

/** One target port group descriptor (SPC-4 6.36, table "Target port group descriptor format"). */
export function portGroupDescriptor(g: PortGroup): Buffer {
  const d = Buffer.alloc(8 + g.relativePortIds.length * 4);
  const state = g.state ?? AccessState.ActiveOptimized;
  // PREF: the optimized paths are the preferred ones.
  d[0] = (state === AccessState.ActiveOptimized ? 0x80 : 0) | (state & 0x0f);
  d[1] = g.state === undefined ? SUPPORTS_OPTIMIZED_ONLY : SUPPORTS_TRANSITIONS;
  d.writeUInt16BE(g.id & 0xffff, 2);
  // byte 5, STATUS CODE 0: no status available; byte 6 vendor specific
  d[7] = g.relativePortIds.length;
  g.relativePortIds.forEach((p, i) => d.writeUInt16BE(p & 0xffff, 8 + i * 4 + 2));
  return d;
}

/**
 * REPORT TARGET PORT GROUPS 0xa3/0x0a (implicit ALUA): every group of the LU
 * with its state, in the length-only header format (0) or the extended one
 * (1: format type and implicit transition time in bytes 4-5). RETURN DATA
 * LENGTH counts the bytes after itself in both, as Linux and sg_rtpg read it.
 */
export function reportTargetPortGroups(ctx: CommandContext): ScsiResponse {
  const { cdb, nexus } = ctx.req;
  const lu = ctx.lu;
  const format = cdb[1]! >> 5;
  if (format > 1) throw ScsiError.cdb(1, 7, 'parameter data format');
  const allocation = alloc32(cdb, 6);
  let groups: readonly PortGroup[] = lu.portGroups();
  if (groups.length === 0) groups = [{ id: nexus.targetPortGroup, relativePortIds: [nexus.relativeTargetPortId] }];
  const hdrLen = format === 1 ? 8 : 4;
  const body = Buffer.concat(groups.map(portGroupDescriptor));
  const out = Buffer.alloc(hdrLen + body.length);
  out.writeUInt32BE(out.length - 4, 0);
  if (format === 1) out[4] = 0x10; // format type 1; implicit transition time 0: unspecified
  body.copy(out, hdrLen);
  return good(clip(out, allocation));
}
