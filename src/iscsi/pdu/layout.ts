// Framing arithmetic shared by the decoder, encoder and stream parser
// (RFC 7143 11.2: BHS, AHS, digests, 4-byte padding).

/** CRC32C digest size on the wire. */
export const DIGEST_LENGTH = 4;

/** DataSegmentLength is a 24-bit field. */
export const MAX_DATA_SEGMENT_LENGTH = 0xffffff;

/** TotalAHSLength is an 8-bit count of 4-byte words. */
export const MAX_AHS_BYTES = 255 * 4;

/** Bytes of padding that follow a segment of length n. */
export function padLength(n: number): number {
  return (4 - (n & 3)) & 3;
}

/** A zero-length Buffer shared by every PDU without a data segment. */
export const EMPTY = Buffer.alloc(0);

/** Zero padding of 0..3 bytes; shared, never written. */
export const ZERO_PADS: readonly Buffer[] = [EMPTY, Buffer.alloc(1), Buffer.alloc(2), Buffer.alloc(3)];
