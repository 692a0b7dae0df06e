// iSCSI text data (RFC 7143 6.1): UTF-8 "key=value" pairs, each terminated by
// a NUL, possibly spread over several PDUs with the C (continue) bit.

import { MAX_KEY_LENGTH, maxValueLength } from './keys.js';

export type TextPair = [key: string, value: string];

/** Malformed text data; the caller answers with a protocol error / initiator error. */
export class TextError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TextError';
  }
}

/** Keys that may legitimately repeat in one text (SendTargets answers). */
const REPEATABLE = new Set(['TargetAddress', 'TargetName', 'TargetAlias']);

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Parses a complete text (all continuation pieces joined). Empty strings
 * between NULs are skipped (some initiators pad); the last pair may lack its
 * NUL. Throws TextError on a pair without '=', an empty or over-long key, an
 * over-long value, bad UTF-8, or a key given twice.
 */
export function parseText(data: Buffer): TextPair[] {
  const pairs: TextPair[] = [];
  const seen = new Set<string>();
  let start = 0;
  while (start < data.length) {
    let end = data.indexOf(0, start);
    if (end < 0) end = data.length;
    if (end > start) {
      const pair = parsePair(data, start, end);
      if (seen.has(pair[0]) && !REPEATABLE.has(pair[0])) throw new TextError(`key ${pair[0]} given twice`);
      seen.add(pair[0]);
      pairs.push(pair);
    }
    start = end + 1;
  }
  return pairs;
}

function parsePair(data: Buffer, start: number, end: number): TextPair {
  const eq = data.indexOf(0x3d /* = */, start);
  if (eq < 0 || eq >= end) {
    throw new TextError(`malformed text pair (no '='): ${JSON.stringify(data.subarray(start, Math.min(end, start + 64)).toString('latin1'))}`);
  }
  const keyLen = eq - start;
  if (keyLen === 0) throw new TextError('empty key name');
  if (keyLen > MAX_KEY_LENGTH) throw new TextError(`key name longer than ${MAX_KEY_LENGTH} bytes`);
  let key: string;
  let value: string;
  try {
    key = utf8.decode(data.subarray(start, eq));
    value = utf8.decode(data.subarray(eq + 1, end));
  } catch {
    throw new TextError(`text pair at offset ${start} is not valid UTF-8`);
  }
  const limit = maxValueLength(key);
  if (end - eq - 1 > limit) throw new TextError(`value of ${key} longer than ${limit} bytes`);
  return [key, value];
}

/** "k=v\0k=v\0..." in one buffer. */
export function serializeText(pairs: Iterable<readonly [string, string]>): Buffer {
  const parts: string[] = [];
  for (const [k, v] of pairs) parts.push(k, '=', v, '\0');
  return Buffer.from(parts.join(''), 'utf8');
}

/** Views of at most maxSegment bytes each (for C-bit continuation); no copies. */
export function splitText(data: Buffer, maxSegment: number): Buffer[] {
  if (maxSegment <= 0) throw new RangeError(`splitText: segment size ${maxSegment}`);
  const out: Buffer[] = [];
  for (let off = 0; off < data.length; off += maxSegment) out.push(data.subarray(off, off + maxSegment));
  return out;
}

export type AccumulateResult =
  | { kind: 'partial' }
  | { kind: 'complete'; data: Buffer }
  | { kind: 'overflow'; size: number };

/**
 * Joins the data segments of a sequence of PDUs sent with the C bit. A pair
 * may be split anywhere, even inside a UTF-8 sequence, so pieces are joined
 * as bytes before parsing. The single-PDU case returns the segment itself.
 */
export class TextAccumulator {
  private pieces: Buffer[] = [];
  private size = 0;

  /** RFC 7143 6.1 asks for at least 8192 bytes per negotiation sequence; default 64 KiB. */
  constructor(private readonly limit = 65536) {}

  /** Bytes received so far in an unfinished sequence. */
  get pending(): number {
    return this.size;
  }

  push(data: Buffer, cont: boolean): AccumulateResult {
    this.size += data.length;
    if (this.size > this.limit) {
      const size = this.size;
      this.reset();
      return { kind: 'overflow', size };
    }
    if (cont) {
      this.pieces.push(data);
      return { kind: 'partial' };
    }
    if (this.pieces.length === 0) {
      this.size = 0;
      return { kind: 'complete', data };
    }
    this.pieces.push(data);
    const joined = Buffer.concat(this.pieces, this.size);
    this.reset();
    return { kind: 'complete', data: joined };
  }

  reset(): void {
    this.pieces = [];
    this.size = 0;
  }
}
