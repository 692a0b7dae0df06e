// A small seeded PRNG for tests and benches: the same seed gives the same
// layouts, tables and fuzz inputs on every run.

/** mulberry32: a number in [0, 1) per call. Good enough for layouts and property tests, not for crypto. */
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
