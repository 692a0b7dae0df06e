// Commands about the medium of a disk that has no removable medium and no
// defects to report: START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL, READ
// DEFECT DATA(10/12).
import { alloc16, alloc32, clip } from './cdb.js';
import type { CommandContext } from './command-spec.js';
import { good } from './command-spec.js';
import type { ScsiResponse } from './port.js';
import { ScsiError } from './sense.js';

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
