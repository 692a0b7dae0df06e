// Small SPC/SBC commands: REQUEST SENSE, TEST UNIT READY, START STOP UNIT,
// PREVENT ALLOW MEDIUM REMOVAL, READ DEFECT DATA, REPORT LUNS and
// REPORT TARGET PORT GROUPS.
import { alloc16, alloc32, clip } from './cdb.js';
import type { CommandContext } from './command-types.js';
import { good } from './command-types.js';
import type { PortGroup } from './lu-context.js';
import { asDeviceLu } from './lu-context.js';
import { buildSense, ScsiError, Sense } from './sense.js';
import type { ScsiResponse } from './types.js';

/** REQUEST SENSE 0x03: a pending unit attention, else sanitize progress, else NO SENSE; format from the DESC bit. */
export function requestSense(ctx: CommandContext): ScsiResponse {
  const { cdb, nexus } = ctx.req;
  const lu = asDeviceLu(ctx.lu);
  const desc = (cdb[1]! & 0x01) !== 0;
  const allocation = cdb[4]!;
  const ua = lu.takeUnitAttention(nexus);
  let sense: Buffer;
  if (ua) {
    sense = buildSense(ua, desc);
  } else {
    const busy = lu.busy();
    if (busy) {
      const progress = busy.progress();
      sense = buildSense(busy.sense, desc, progress === undefined ? {} : { progress });
    } else {
      sense = buildSense(Sense.noAdditionalSense, desc);
    }
  }
  return good(clip(sense, allocation));
}

/** TEST UNIT READY 0x00: readiness (unit attention, sanitize) is decided by the dispatcher. */
export function testUnitReady(): ScsiResponse {
  return good();
}

/** START STOP UNIT 0x1b: accepted; a stop without NO_FLUSH flushes. The medium cannot be ejected. */
export async function startStopUnit(ctx: CommandContext): Promise<ScsiResponse> {
  const { cdb } = ctx.req;
  const b4 = cdb[4]!;
  const powerCondition = b4 >> 4;
  const loej = (b4 & 0x02) !== 0;
  const start = (b4 & 0x01) !== 0;
  const noFlush = (b4 & 0x04) !== 0;
  if (![0x0, 0x1, 0x2, 0x3, 0x5, 0x7, 0xa, 0xb].includes(powerCondition)) throw ScsiError.cdb(4, 7, `power condition ${powerCondition}`);
  // a non-removable medium cannot be loaded or ejected
  if (powerCondition === 0 && loej && !start) throw ScsiError.cdb(4, 1, 'the medium is not removable');
  if (powerCondition === 0 && !start && !noFlush) await ctx.lu.device.flush();
  return good();
}

/** PREVENT ALLOW MEDIUM REMOVAL 0x1e: the medium is not removable, so there is nothing to prevent. */
export function preventAllowMediumRemoval(): ScsiResponse {
  return good();
}

/** READ DEFECT DATA(10) 0x37 and (12) 0xb7: an empty list in the requested format. */
export function readDefectData(ctx: CommandContext): ScsiResponse {
  const { cdb } = ctx.req;
  const twelve = cdb[0] === 0xb7;
  const flags = (twelve ? cdb[1]! : cdb[2]!) & 0x1f;
  if (twelve) {
    const b = Buffer.alloc(8);
    b[1] = flags;
    return good(clip(b, alloc32(cdb, 6)));
  }
  const b = Buffer.alloc(4);
  b[1] = flags;
  return good(clip(b, alloc16(cdb, 7)));
}

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

/** REPORT TARGET PORT GROUPS 0xa3/0x0a: implicit ALUA, every group active/optimized. */
export function reportTargetPortGroups(ctx: CommandContext): ScsiResponse {
  const { cdb, nexus } = ctx.req;
  const lu = asDeviceLu(ctx.lu);
  const extended = (cdb[1]! >> 5) === 1;
  if (cdb[1]! >> 5 > 1) throw ScsiError.cdb(1, 7, 'parameter data format');
  const allocation = alloc32(cdb, 6);
  let groups: readonly PortGroup[] = lu.portGroups();
  if (groups.length === 0) groups = [{ id: nexus.targetPortGroup, relativePortIds: [nexus.relativeTargetPortId] }];
  const descs = groups.map((g) => {
    const d = Buffer.alloc(8 + g.relativePortIds.length * 4);
    d[0] = 0x80; // PREF, asymmetric access state 0h: active/optimized
    d[1] = 0x01; // AO_SUP
    d.writeUInt16BE(g.id & 0xffff, 2);
    d[7] = g.relativePortIds.length;
    g.relativePortIds.forEach((p, i) => d.writeUInt16BE(p & 0xffff, 8 + i * 4 + 2));
    return d;
  });
  const hdrLen = extended ? 8 : 4;
  const body = Buffer.concat(descs);
  const out = Buffer.alloc(hdrLen + body.length);
  out.writeUInt32BE(out.length - 4, 0);
  if (extended) out[4] = 0x10; // format type 1, implicit transition time 0
  body.copy(out, hdrLen);
  return good(clip(out, allocation));
}
