// Whether the logical unit is ready, and why not: TEST UNIT READY (the
// dispatcher has already decided: a pending unit attention or a SANITIZE in
// progress fails it) and REQUEST SENSE (reports the same conditions as data).
import { clip } from './cdb.js';
import type { CommandContext } from './command-spec.js';
import { good } from './command-spec.js';
import type { ScsiRequest, ScsiResponse } from './port.js';
import { ScsiStatus } from './port.js';
import { buildSense, Sense } from './sense.js';

/** REQUEST SENSE 0x03: a pending unit attention, else sanitize progress, else NO SENSE; format from the DESC bit. */
export function requestSense(ctx: CommandContext): ScsiResponse {
  const { cdb, nexus } = ctx.req;
  const lu = ctx.lu;
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

/** REQUEST SENSE 0x03 to a LUN with no logical unit: LOGICAL UNIT NOT SUPPORTED as data (SPC-4 5.8). */
export function requestSenseNoLun(req: ScsiRequest): ScsiResponse {
  const sense = buildSense(Sense.lunNotSupported, (req.cdb[1]! & 0x01) !== 0);
  const alloc = req.cdb[4]!;
  return { status: ScsiStatus.Good, dataIn: sense.length > alloc ? sense.subarray(0, alloc) : sense };
}
