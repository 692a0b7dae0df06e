// CRC32C header and data digests (RFC 7143 13.1, examples in RFC 3720 B.4).
// On the wire the digest is the CRC value in little-endian byte order: the
// RFC example "32 bytes of zeros -> aa 36 91 8a" is CRC 0x8a9136aa, and Linux
// (crc32c shash writes cpu_to_le32) and libiscsi put the bytes out the same way.
import { crc32c as nativeCrc32c } from '@node-rs/crc32';
import { ZERO_PADS, padLength } from './layout.js';

/**
 * CRC32C of buf. Pass a previous result as seed to continue over more bytes:
 * crc32c(b, crc32c(a)) === crc32c(concat(a, b)).
 */
export function crc32c(buf: Uint8Array, seed?: number): number {
  return nativeCrc32c(buf, seed);
}

/** Header digest over the BHS and any AHS (the bytes before the digest). */
export function headerDigest(header: Uint8Array): number {
  return nativeCrc32c(header);
}

/** Data digest over the data segment and its zero padding. */
export function dataDigest(data: Uint8Array): number {
  const crc = nativeCrc32c(data);
  const pad = padLength(data.length);
  return pad === 0 ? crc : nativeCrc32c(ZERO_PADS[pad]!, crc);
}

/** Write a digest in wire order (little-endian). */
export function writeDigest(buf: Buffer, offset: number, crc: number): void {
  buf.writeUInt32LE(crc >>> 0, offset);
}

/** Read a digest in wire order (little-endian). */
export function readDigest(buf: Buffer, offset: number): number {
  return buf.readUInt32LE(offset);
}
