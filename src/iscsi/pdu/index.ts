// Public API of the iSCSI PDU codec: pure functions of bytes, no I/O.
export * from './types.js';
export { PduError } from './pdu-error.js';
export { decodePdu, peekOpcode, dataSegmentLength, totalAhsLength, itt, isKnownOpcode } from './decode.js';
export { encodePdu, encodeHeader, senseSegment, rejectData } from './encode.js';
export { PduParser } from './parser.js';
export { crc32c, headerDigest, dataDigest, readDigest, writeDigest } from './digest.js';
export { decodeLun, encodeLun } from './lun.js';
export { padLength, DIGEST_LENGTH, MAX_DATA_SEGMENT_LENGTH } from './layout.js';
