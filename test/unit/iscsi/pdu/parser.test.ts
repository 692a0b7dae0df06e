import { expect } from 'chai';
import { encodePdu } from '../../../../src/iscsi/pdu/encode.js';
import { PduParser } from '../../../../src/iscsi/pdu/parser.js';
import { Opcode, RejectReason } from '../../../../src/iscsi/pdu/types.js';
import type { DataOut, DigestSettings, ParseResult, Pdu } from '../../../../src/iscsi/pdu/types.js';
import { bhs, hex, prng, referenceCrc32c } from './hex.js';
import { vectors, wire } from './vectors.js';

function le32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

/** Wire bytes built by hand from a vector (independent of encodePdu's digest code). */
function wireWithDigests(header: Buffer, data: Buffer, d: DigestSettings, padByte = 0): Buffer {
  const parts = [header];
  if (d.header) parts.push(le32(referenceCrc32c(header)));
  if (data.length > 0) {
    const pad = Buffer.alloc((4 - (data.length % 4)) % 4, padByte);
    parts.push(data, pad);
    if (d.data) parts.push(le32(referenceCrc32c(Buffer.concat([data, pad]))));
  }
  return Buffer.concat(parts);
}

/** Feed chunks, draining next() after each push as a connection would. */
function parseAll(parser: PduParser, chunks: Buffer[]): ParseResult[] {
  const out: ParseResult[] = [];
  for (const c of chunks) {
    parser.push(c);
    for (let r = parser.next(); r !== null; r = parser.next()) {
      out.push(r);
      if (!r.ok && r.fatal) return out;
    }
  }
  return out;
}

function splitRandom(buf: Buffer, rnd: () => number, maxChunk: number): Buffer[] {
  const out: Buffer[] = [];
  let off = 0;
  while (off < buf.length) {
    const n = 1 + Math.floor(rnd() * maxChunk);
    out.push(buf.subarray(off, off + n));
    off += n;
  }
  return out;
}

function bytesOneByOne(buf: Buffer): Buffer[] {
  return Array.from({ length: buf.length }, (_, i) => buf.subarray(i, i + 1));
}

/** A random sequence of PDUs: the vectors with random data segments and tags. */
function randomPdus(rnd: () => number, count: number): Pdu[] {
  const out: Pdu[] = [];
  for (let i = 0; i < count; i++) {
    const v = vectors[Math.floor(rnd() * vectors.length)]!;
    const len = rnd() < 0.3 ? 0 : Math.floor(rnd() * 600);
    const data = Buffer.from(Array.from({ length: len }, () => Math.floor(rnd() * 256)));
    out.push({ ...v.pdu, data } as Pdu);
  }
  return out;
}

function expectOk(r: ParseResult | null | undefined): Pdu {
  expect(r, 'a result').to.not.equal(null);
  if (!r!.ok) expect.fail(`expected a PDU, got ${r!.reason}: ${r!.message}`);
  return r!.pdu;
}

describe('iSCSI PDU stream parser', () => {
  it('parses every vector from its hand-written bytes', () => {
    const parser = new PduParser({});
    const results = parseAll(parser, vectors.map(wire));
    expect(results).to.have.length(vectors.length);
    results.forEach((r, i) => {
      expect(expectOk(r), vectors[i]!.name).to.deep.equal(vectors[i]!.pdu);
      expect((r as { header: Buffer }).header.toString('hex')).to.equal(vectors[i]!.header.subarray(0, 48).toString('hex'));
    });
    expect(parser.buffered).to.equal(0);
  });

  it('returns null until the whole PDU including digests is buffered', () => {
    const v = vectors[0]!;
    const d = { header: true, data: true };
    const bytes = wireWithDigests(v.header, v.data, d);
    const parser = new PduParser({ headerDigest: true, dataDigest: true });
    parser.push(bytes.subarray(0, bytes.length - 1));
    expect(parser.next()).to.equal(null);
    expect(parser.buffered).to.equal(bytes.length - 1 - 52); // BHS and header digest consumed
    parser.push(bytes.subarray(bytes.length - 1));
    expect(expectOk(parser.next())).to.deep.equal(v.pdu);
    expect(parser.next()).to.equal(null);
    expect(parser.buffered).to.equal(0);
  });

  for (const d of [
    { header: false, data: false },
    { header: true, data: false },
    { header: false, data: true },
    { header: true, data: true },
  ]) {
    it(`parses any split of the stream identically (header digest ${d.header}, data digest ${d.data})`, () => {
      for (let seed = 1; seed <= 25; seed++) {
        const rnd = prng(seed * 31 + (d.header ? 1 : 0) + (d.data ? 2 : 0));
        const pdus = randomPdus(rnd, 20);
        const stream = Buffer.concat(pdus.flatMap((p) => encodePdu(p, d)));
        const splits = [[stream], splitRandom(stream, rnd, 7), splitRandom(stream, rnd, 200), splitRandom(stream, rnd, 3000)];
        if (seed <= 3) splits.push(bytesOneByOne(stream));
        for (const chunks of splits) {
          const parser = new PduParser({ headerDigest: d.header, dataDigest: d.data });
          const results = parseAll(parser, chunks);
          expect(results.map(expectOk), `seed ${seed}, ${chunks.length} chunks`).to.deep.equal(pdus);
          expect(parser.buffered).to.equal(0);
        }
      }
    });
  }

  it('hands out zero-copy views when a PDU lies inside one chunk', () => {
    const d = { header: true, data: true };
    const pdus = randomPdus(prng(99), 10).map((p) => ({ ...p, data: Buffer.alloc(100, 1) }) as Pdu);
    const chunk = Buffer.concat([Buffer.alloc(8192), ...pdus.flatMap((p) => encodePdu(p, d))]).subarray(8192);
    const parser = new PduParser({ headerDigest: true, dataDigest: true });
    const results = parseAll(parser, [chunk]);
    expect(results).to.have.length(10);
    for (const r of results) {
      const pdu = expectOk(r);
      for (const view of [pdu.data, (r as { header: Buffer }).header]) {
        expect(view.buffer).to.equal(chunk.buffer);
        expect(view.byteOffset).to.be.within(chunk.byteOffset, chunk.byteOffset + chunk.length);
      }
    }
  });

  it('copies only the PDU that spans chunks', () => {
    const [a, b] = [vectors[0]!, vectors[7]!];
    const bytes = Buffer.concat([wire(a), wire(b)]);
    const first = bytes.subarray(0, wire(a).length + 10);
    const second = bytes.subarray(first.length);
    const parser = new PduParser({});
    const [ra, rb] = parseAll(parser, [first, second]);
    expect(expectOk(ra).data.buffer).to.equal(first.buffer); // whole in chunk 1: a view
    expect(expectOk(rb)).to.deep.equal(b.pdu); // header spans: copied, still right
  });

  it('assembles data where the destination callback says, split or not, with digests checked', () => {
    const d = { header: true, data: true };
    const withData = vectors.filter((v) => v.pdu.data.length === 0).slice(0, 3).map((v, i) => ({ ...v.pdu, data: Buffer.alloc(37 + i, 0x30 + i) }) as Pdu);
    const bytes = Buffer.concat(withData.flatMap((p) => encodePdu(p, d)));
    const parser = new PduParser({ headerDigest: true, dataDigest: true });
    const seen: { opcode: number; length: number }[] = [];
    const dests: Buffer[] = [];
    parser.setDataDestination((bhsBytes, length) => {
      seen.push({ opcode: bhsBytes[0]! & 0x3f, length });
      if (seen.length === 2) return undefined; // the second PDU keeps the default
      const slab = Buffer.alloc(length + 8, 0xee);
      dests.push(slab);
      return slab.subarray(4, 4 + length);
    });
    const results = parseAll(parser, bytesOneByOne(bytes));
    expect(results).to.have.length(3);
    expect(seen).to.deep.equal(withData.map((p) => ({ opcode: p.opcode, length: p.data.length })));
    results.forEach((r, i) => expect(expectOk(r).data).to.deep.equal(withData[i]!.data));
    expect(expectOk(results[0]).data.buffer).to.equal(dests[0]!.buffer);
    expect(expectOk(results[2]).data.buffer).to.equal(dests[1]!.buffer);
    expect(dests[0]!.subarray(0, 4)).to.deep.equal(Buffer.alloc(4, 0xee)); // only the given range is written
    expect(dests[0]!.subarray(4 + 37)).to.deep.equal(Buffer.alloc(4, 0xee));
  });

  it('applies digest settings from the next PDU on (login then full feature phase)', () => {
    const login = vectors.find((v) => v.pdu.opcode === Opcode.LoginRequest)!;
    const nop = vectors[0]!;
    const d = { header: true, data: true };
    const bytes = Buffer.concat([wire(login), wireWithDigests(nop.header, nop.data, d)]);
    const parser = new PduParser({});
    parser.push(bytes); // both PDUs arrive in one chunk
    expect(expectOk(parser.next())).to.deep.equal(login.pdu);
    parser.setDigests(true, true);
    expect(expectOk(parser.next())).to.deep.equal(nop.pdu);
    expect(parser.next()).to.equal(null);
  });

  it('treats a header digest mismatch as fatal, and stays failed', () => {
    const v = vectors[0]!;
    const bytes = wireWithDigests(v.header, v.data, { header: true, data: false });
    bytes[20] ^= 0x01; // flip a TTT bit
    const parser = new PduParser({ headerDigest: true });
    parser.push(bytes);
    const r = parser.next();
    expect(r).to.include({ ok: false, fatal: true, reason: RejectReason.ProtocolError });
    expect((r as { message: string }).message).to.match(/header digest mismatch/);
    parser.push(wire(v));
    expect(parser.next()).to.equal(r);
  });

  it('reports a data digest mismatch with header and PDU, consumes it, and goes on', () => {
    const [v, next] = [vectors[7]!, vectors[0]!];
    const d = { header: true, data: true };
    const bad = wireWithDigests(v.header, v.data, d);
    bad[52] ^= 0xff; // first data byte
    const bytes = Buffer.concat([bad, wireWithDigests(next.header, next.data, d)]);
    for (const chunks of [[bytes], bytesOneByOne(bytes)]) {
      const results = parseAll(new PduParser({ headerDigest: true, dataDigest: true }), chunks);
      expect(results).to.have.length(2);
      const r = results[0]!;
      if (r.ok) expect.fail('expected a data digest error');
      expect(r.fatal).to.equal(false);
      expect(r.reason).to.equal(RejectReason.DataDigestError);
      expect(r.message).to.match(/data digest mismatch.* on opcode 0x5 itt=0x00000042/);
      expect(r.header!.toString('hex')).to.equal(v.header.toString('hex'));
      expect(r.pdu!.opcode).to.equal(Opcode.DataOut);
      expect((r.pdu as DataOut).itt).to.equal(0x42);
      expect(expectOk(results[1])).to.deep.equal(next.pdu);
    }
  });

  it('covers the padding bytes as received by the data digest', () => {
    const v = vectors[7]!; // 7 data bytes, 1 pad byte
    const d = { header: false, data: true };
    const parser = new PduParser({ dataDigest: true });
    parser.push(wireWithDigests(v.header, v.data, d, 0x5a)); // non-zero pad, digest over it
    expect(expectOk(parser.next())).to.deep.equal(v.pdu);
  });

  it('skips a data segment above MaxRecvDataSegmentLength with a non-fatal error', () => {
    const big = { ...vectors[7]!.pdu, data: Buffer.alloc(1001, 3) } as Pdu;
    const next = vectors[0]!;
    for (const d of [{ header: false, data: false }, { header: true, data: true }]) {
      const bytes = Buffer.concat([...encodePdu(big, d), ...encodePdu(next.pdu, d)]);
      for (const chunks of [[bytes], bytesOneByOne(bytes), splitRandom(bytes, prng(5), 100)]) {
        const parser = new PduParser({ headerDigest: d.header, dataDigest: d.data, maxDataSegmentLength: 1000 });
        const results = parseAll(parser, chunks);
        expect(results).to.have.length(2);
        expect(results[0]).to.include({ ok: false, fatal: false, reason: RejectReason.ProtocolError });
        expect((results[0] as { message: string }).message).to.match(/DataSegmentLength 1001 .* exceeds MaxRecvDataSegmentLength 1000/);
        expect((results[0] as { header: Buffer }).header.readUInt32BE(16)).to.equal(0x42);
        expect(expectOk(results[1])).to.deep.equal(next.pdu);
        expect(parser.buffered).to.equal(0);
      }
    }
  });

  it('honours setMaxDataSegmentLength for later PDUs', () => {
    const v = vectors[6]!; // Text Request, 16 data bytes
    const parser = new PduParser({ maxDataSegmentLength: 8 });
    parser.push(wire(v));
    expect(parser.next()).to.include({ ok: false, fatal: false });
    parser.setMaxDataSegmentLength(16);
    parser.push(wire(v));
    expect(expectOk(parser.next())).to.deep.equal(v.pdu);
  });

  it('treats a data segment above the sanity limit as fatal', () => {
    const h = Buffer.from(vectors[0]!.header);
    h.writeUIntBE(0x200000, 5, 3); // 2 MiB
    const parser = new PduParser({ maxDataSegmentLength: 8192, hardMaxDataSegmentLength: 1 << 20 });
    parser.push(h);
    const r = parser.next();
    expect(r).to.include({ ok: false, fatal: true, reason: RejectReason.ProtocolError });
    expect((r as { message: string }).message).to.match(/sanity limit/);
  });

  it('rejects an unknown opcode as not supported and skips its data', () => {
    const unknown = bhs([
      '1c 80 00 00', // opcode 0x1c: not defined
      '00 00 00 05', // DataSegmentLength 5
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 77', // ITT
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
    ]);
    const next = vectors[0]!;
    for (const d of [{ header: false, data: false }, { header: true, data: true }]) {
      const bytes = Buffer.concat([
        wireWithDigests(unknown, hex('01 02 03 04 05'), d),
        wireWithDigests(next.header, next.data, d),
      ]);
      for (const chunks of [[bytes], bytesOneByOne(bytes)]) {
        const results = parseAll(new PduParser({ headerDigest: d.header, dataDigest: d.data }), chunks);
        expect(results).to.have.length(2);
        expect(results[0]).to.include({ ok: false, fatal: false, reason: RejectReason.CommandNotSupported });
        expect((results[0] as { message: string }).message).to.match(/unknown PDU opcode 0x1c itt=0x00000077/);
        expect((results[0] as { header: Buffer }).header.toString('hex')).to.equal(unknown.toString('hex'));
        expect(expectOk(results[1])).to.deep.equal(next.pdu);
      }
    }
  });

  it('reports malformed AHS as a non-fatal error and goes on', () => {
    const h = Buffer.concat([vectors[0]!.header, hex('00 09 40 00')]);
    h[4] = 1; // 4 bytes of AHS, whose AHSLength claims 9
    const bytes = Buffer.concat([h, vectors[0]!.data, wire(vectors[1]!)]);
    const results = parseAll(new PduParser({}), bytesOneByOne(bytes));
    expect(results).to.have.length(2);
    expect(results[0]).to.include({ ok: false, fatal: false, reason: RejectReason.ProtocolError });
    expect((results[0] as { message: string }).message).to.match(/AHS type 64 length 9/);
    expect(expectOk(results[1])).to.deep.equal(vectors[1]!.pdu);
  });

  it('parses AHS split across chunks', () => {
    const v = vectors[3]!; // SCSI Command with two AHS
    const parser = new PduParser({ headerDigest: true });
    const results = parseAll(parser, bytesOneByOne(wireWithDigests(v.header, v.data, { header: true, data: false })));
    expect(results.map(expectOk)).to.deep.equal([v.pdu]);
  });

  it('ignores empty chunks', () => {
    const parser = new PduParser({});
    parser.push(Buffer.alloc(0));
    expect(parser.next()).to.equal(null);
    expect(parser.buffered).to.equal(0);
  });
});
