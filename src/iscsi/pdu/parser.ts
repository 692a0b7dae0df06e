// Incremental PDU framing over a byte stream: push() socket chunks, call
// next() until it returns null. Received chunks are kept as a list with an
// offset into the first; a PDU part that lies within one chunk is returned as
// a subarray of it, and only parts spanning chunks are copied together.
import { crc32c, readDigest } from './digest.js';
import { decodePdu, isKnownOpcode, PduError } from './decode.js';
import { DIGEST_LENGTH, EMPTY, padLength } from './layout.js';
import { BHS_LENGTH, RejectReason } from './types.js';
import type { ParseError, ParseResult, ParserOptions, Pdu } from './types.js';

export type { ParseError, ParseOk, ParseResult, ParserOptions } from './types.js';

/**
 * Where to assemble a data segment: called with the BHS and DataSegmentLength
 * of a PDU whose header was accepted, returns a buffer of exactly that length
 * to copy the data into, or undefined for the default (a view of the received
 * chunk when the data lies in one, else a new buffer). Lets write data land in
 * its command's buffer with one copy.
 */
export type DataDestination = (bhs: Buffer, length: number) => Buffer | undefined;

const DEFAULT_MAX_DATA_SEGMENT_LENGTH = 8192;
const DEFAULT_HARD_MAX_DATA_SEGMENT_LENGTH = 1 << 20;

const enum State {
  /** Waiting for the 48 bytes of a new BHS. */
  Bhs,
  /** Framed: waiting for BHS + AHS (+ header digest). */
  Header,
  /** Header accepted: waiting for data + padding (+ data digest). */
  Data,
  /** Discarding the rest of a PDU that was rejected on its header. */
  Skip,
}

export class PduParser {
  private readonly chunks: Buffer[] = [];
  /** Index in chunks of the first chunk with unconsumed bytes. */
  private head = 0;
  /** Offset of the first unconsumed byte in chunks[head]. */
  private offset = 0;
  private total = 0;

  private headerDigestOn: boolean;
  private dataDigestOn: boolean;
  private maxData: number;
  private readonly hardMaxData: number;

  private state = State.Bhs;
  /** Settings captured when the current PDU's BHS was first examined. */
  private curHeaderDigest = false;
  private curDataDigest = false;
  private curHeaderLen = 0; // BHS + AHS
  private curDataLen = 0; // DataSegmentLength
  private curHeader: Buffer = EMPTY;
  private skip = 0;
  private fatal: ParseError | null = null;
  private destination: DataDestination | null = null;
  /** Where the current PDU's data goes, when the destination callback chose. */
  private curDest: Buffer | undefined = undefined;

  constructor(opts: ParserOptions = {}) {
    this.headerDigestOn = opts.headerDigest ?? false;
    this.dataDigestOn = opts.dataDigest ?? false;
    this.maxData = opts.maxDataSegmentLength ?? DEFAULT_MAX_DATA_SEGMENT_LENGTH;
    this.hardMaxData = opts.hardMaxDataSegmentLength ?? DEFAULT_HARD_MAX_DATA_SEGMENT_LENGTH;
  }

  /** Digests for every PDU whose BHS next() has not examined yet (they switch on right after login). */
  setDigests(header: boolean, data: boolean): void {
    this.headerDigestOn = header;
    this.dataDigestOn = data;
  }

  /** Our MaxRecvDataSegmentLength, for PDUs whose BHS next() has not examined yet. */
  setMaxDataSegmentLength(n: number): void {
    this.maxData = n;
  }

  /** Set (or clear) the callback choosing where data segments are assembled. */
  setDataDestination(fn: DataDestination | null): void {
    this.destination = fn;
  }

  /** Bytes received and not yet consumed by next(). */
  get buffered(): number {
    return this.total;
  }

  /**
   * Whether the parser still refers to bytes it was pushed: unconsumed ones,
   * or the header of a PDU whose data has not all arrived (consumed, yet kept
   * as a view of its chunk). A caller reusing its read buffer must not while
   * this holds.
   */
  get holdsInput(): boolean {
    return this.total > 0 || this.curHeader.length > 0;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** The next complete PDU or framing error, or null until more bytes arrive. */
  next(): ParseResult | null {
    if (this.fatal !== null) return this.fatal;
    for (;;) {
      switch (this.state) {
        case State.Skip: {
          const n = Math.min(this.skip, this.total);
          this.discard(n);
          this.skip -= n;
          if (this.skip !== 0) return null;
          this.state = State.Bhs;
          continue;
        }
        case State.Bhs: {
          if (this.total < BHS_LENGTH) return null;
          // Apply the settings in force now: they may have changed since the previous PDU.
          this.curHeaderDigest = this.headerDigestOn;
          this.curDataDigest = this.dataDigestOn;
          this.curHeaderLen = BHS_LENGTH + (this.peekByte(4) << 2);
          this.curDataLen = (this.peekByte(5) << 16) | (this.peekByte(6) << 8) | this.peekByte(7);
          this.state = State.Header;
          continue;
        }
        case State.Header: {
          const r = this.readHeader();
          if (r !== undefined) return r;
          if (this.state === State.Header) return null;
          continue;
        }
        case State.Data:
          return this.readData();
      }
    }
  }

  /** Returns a result to hand out, or undefined to go on (state moved) or wait (state unchanged). */
  private readHeader(): ParseResult | undefined {
    const hd = this.curHeaderDigest;
    const hlen = this.curHeaderLen;
    if (this.total < hlen + (hd ? DIGEST_LENGTH : 0)) return undefined;
    const header = this.take(hlen);
    const bhs = hlen === BHS_LENGTH ? header : header.subarray(0, BHS_LENGTH);
    if (hd) {
      const expected = this.takeU32LE();
      const actual = crc32c(header);
      if (actual !== expected) {
        // The lengths in this header cannot be trusted, so the stream cannot be resynchronised.
        this.fatal = {
          ok: false,
          fatal: true,
          reason: RejectReason.ProtocolError,
          message: `header digest mismatch on opcode 0x${(bhs[0]! & 0x3f).toString(16)}: received 0x${hex8(expected)}, computed 0x${hex8(actual)}`,
          header: bhs,
        };
        return this.fatal;
      }
    }
    const dsl = this.curDataLen;
    const op = bhs[0]! & 0x3f;
    const dataBytes = dsl === 0 ? 0 : dsl + padLength(dsl) + (this.curDataDigest ? DIGEST_LENGTH : 0);
    if (dsl > this.maxData && dsl > this.hardMaxData) {
      this.fatal = {
        ok: false,
        fatal: true,
        reason: RejectReason.ProtocolError,
        message: `DataSegmentLength ${dsl} on opcode 0x${op.toString(16)} exceeds the sanity limit ${Math.max(this.maxData, this.hardMaxData)}: stream out of step`,
        header: bhs,
      };
      return this.fatal;
    }
    if (dsl > this.maxData) {
      this.startSkip(dataBytes);
      return {
        ok: false,
        fatal: false,
        reason: RejectReason.ProtocolError,
        message: `DataSegmentLength ${dsl} on opcode 0x${op.toString(16)} itt=0x${hex8(bhs.readUInt32BE(16))} exceeds MaxRecvDataSegmentLength ${this.maxData}`,
        header: bhs,
      };
    }
    if (!isKnownOpcode(op)) {
      this.startSkip(dataBytes);
      return {
        ok: false,
        fatal: false,
        reason: RejectReason.CommandNotSupported,
        message: `unknown PDU opcode 0x${op.toString(16)} itt=0x${hex8(bhs.readUInt32BE(16))}`,
        header: bhs,
      };
    }
    this.curHeader = header;
    if (dsl !== 0 && this.destination !== null) {
      const dest = this.destination(bhs, dsl);
      if (dest !== undefined && dest.length !== dsl) throw new RangeError(`data destination of ${dest.length} bytes for a ${dsl}-byte data segment`);
      this.curDest = dest;
    }
    this.state = State.Data;
    return undefined;
  }

  private readData(): ParseResult | null {
    const dsl = this.curDataLen;
    const dd = this.curDataDigest && dsl !== 0;
    const pad = padLength(dsl);
    if (this.total < dsl + pad + (dd ? DIGEST_LENGTH : 0)) return null;
    const dest = this.curDest;
    this.curDest = undefined;
    const data = dsl === 0 ? EMPTY : dest !== undefined ? this.takeInto(dest) : this.take(dsl);
    let digestError: ParseError | null = null;
    if (dd) {
      // The pad bytes are covered by the digest as received, zero or not.
      let crc = crc32c(data);
      if (pad !== 0) crc = crc32c(this.take(pad), crc);
      const expected = this.takeU32LE();
      if (crc !== expected) {
        digestError = {
          ok: false,
          fatal: false,
          reason: RejectReason.DataDigestError,
          message: `data digest mismatch: received 0x${hex8(expected)}, computed 0x${hex8(crc)}`,
        };
      }
    } else if (pad !== 0) {
      this.discard(pad);
    }
    const header = this.curHeader;
    this.curHeader = EMPTY;
    this.state = State.Bhs;
    const bhs = header.length === BHS_LENGTH ? header : header.subarray(0, BHS_LENGTH);
    let pdu: Pdu;
    try {
      pdu = decodePdu(header, data);
    } catch (e) {
      if (!(e instanceof PduError)) throw e;
      if (digestError !== null) {
        digestError.header = bhs;
        return digestError;
      }
      return { ok: false, fatal: false, reason: e.reason, message: e.message, header: bhs };
    }
    if (digestError !== null) {
      digestError.message += ` on opcode 0x${pdu.opcode.toString(16)} itt=0x${hex8(bhs.readUInt32BE(16))}`;
      digestError.header = bhs;
      digestError.pdu = pdu;
      return digestError;
    }
    return { ok: true, pdu, header: bhs };
  }

  private startSkip(n: number): void {
    this.skip = n;
    this.state = State.Skip;
  }

  /** Byte at position i past the read position (i < total). */
  private peekByte(i: number): number {
    let idx = this.head;
    let pos = this.offset + i;
    for (;;) {
      const c = this.chunks[idx]!;
      if (pos < c.length) return c[pos]!;
      pos -= c.length;
      idx++;
    }
  }

  /** Consume n bytes (n <= total): a view when they lie in one chunk, else a copy. */
  private take(n: number): Buffer {
    const c = this.chunks[this.head]!;
    const end = this.offset + n;
    if (end <= c.length) {
      const out = c.subarray(this.offset, end);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const cur = this.chunks[this.head]!;
      const m = Math.min(n - filled, cur.length - this.offset);
      cur.copy(out, filled, this.offset, this.offset + m);
      filled += m;
      this.advance(m);
    }
    return out;
  }

  /** Consume out.length bytes (<= total) by copying them into out. */
  private takeInto(out: Buffer): Buffer {
    let filled = 0;
    while (filled < out.length) {
      const cur = this.chunks[this.head]!;
      const m = Math.min(out.length - filled, cur.length - this.offset);
      cur.copy(out, filled, this.offset, this.offset + m);
      filled += m;
      this.advance(m);
    }
    return out;
  }

  /** Consume a 4-byte little-endian digest without allocating. */
  private takeU32LE(): number {
    const c = this.chunks[this.head]!;
    if (this.offset + 4 <= c.length) {
      const v = readDigest(c, this.offset);
      this.advance(4);
      return v;
    }
    const v = (this.peekByte(0) | (this.peekByte(1) << 8) | (this.peekByte(2) << 16) | (this.peekByte(3) << 24)) >>> 0;
    this.discard(4);
    return v;
  }

  private discard(n: number): void {
    while (n > 0) {
      const m = Math.min(n, this.chunks[this.head]!.length - this.offset);
      this.advance(m);
      n -= m;
    }
  }

  /** Move the read position by n bytes within chunks[head], dropping it when used up. */
  private advance(n: number): void {
    this.offset += n;
    this.total -= n;
    if (this.offset === this.chunks[this.head]!.length) {
      this.chunks[this.head] = EMPTY; // let the consumed chunk be collected
      this.head++;
      this.offset = 0;
      if (this.head === this.chunks.length) {
        this.chunks.length = 0;
        this.head = 0;
      } else if (this.head >= 64 && this.head * 2 >= this.chunks.length) {
        // Amortised compaction: never re-shift a long tail on every consumed chunk.
        this.chunks.splice(0, this.head);
        this.head = 0;
      }
    }
  }
}

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}
