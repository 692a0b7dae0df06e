// Test helpers for writing expected bytes by hand, independent of the codec.

/** Bytes from hex text; whitespace is ignored. */
export function hex(text: string): Buffer {
  const clean = text.replace(/\s+/g, '');
  if (!/^([0-9a-fA-F]{2})*$/.test(clean)) throw new Error(`bad hex: ${text}`);
  return Buffer.from(clean, 'hex');
}

/** A 48-byte BHS from 12 four-byte words (one per line of the RFC 7143 figures). */
export function bhs(words: string[]): Buffer {
  if (words.length !== 12) throw new Error(`BHS needs 12 words, got ${words.length}`);
  const parts = words.map((w, i) => {
    const b = hex(w);
    if (b.length !== 4) throw new Error(`BHS word ${i} (byte ${i * 4}) is ${b.length} bytes: ${w}`);
    return b;
  });
  return Buffer.concat(parts);
}

/** Bitwise reflected CRC32C (polynomial 0x82f63b78), slow but obviously right. */
export function referenceCrc32c(buf: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of buf) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

/** Deterministic PRNG (mulberry32) so property tests are reproducible. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
