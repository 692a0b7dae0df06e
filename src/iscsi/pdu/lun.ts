// SAM-5 single-level LUN addressing (SAM-5 4.7) for the 8-byte LUN field.
// Linux's int_to_scsilun and libiscsi both use peripheral device addressing
// for LUN < 256 and flat space addressing above, second to fourth levels zero.

const LOWER_LEVELS = 0xffffffffffffn;

/**
 * The LUN number in an 8-byte LUN field, or -1 when the field uses another
 * address method, a non-zero bus, or more than one level (not ours to serve).
 */
export function decodeLun(raw: bigint): number {
  // Commands address the same LUN over and over: no BigInt arithmetic for a repeat.
  if (raw === lastRaw) return lastLun;
  const lun = decodeLunField(raw);
  lastRaw = raw;
  lastLun = lun;
  return lun;
}

let lastRaw = 0n;
let lastLun = 0;

function decodeLunField(raw: bigint): number {
  if ((raw & LOWER_LEVELS) !== 0n) return -1;
  const first = Number((raw >> 48n) & 0xffffn);
  switch (first >>> 14) {
    case 0: // peripheral device: 00b, 6-bit bus (must be 0), 8-bit LUN
      return first > 0xff ? -1 : first;
    case 1: // flat space: 01b, 14-bit LUN
      return first & 0x3fff;
    default:
      return -1;
  }
}

/** The 8-byte LUN field for lun (0..16383). */
export function encodeLun(lun: number): bigint {
  if (!Number.isInteger(lun) || lun < 0 || lun > 0x3fff) {
    throw new RangeError(`LUN ${lun} out of range for single-level addressing (0..16383)`);
  }
  const first = lun < 256 ? lun : 0x4000 | lun;
  return BigInt(first) << 48n;
}
