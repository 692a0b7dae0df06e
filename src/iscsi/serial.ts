// RFC 1982 serial number arithmetic on 32-bit sequence numbers (CmdSN, StatSN, DataSN).

export function snAdd(a: number, n: number): number {
  return (a + n) >>> 0;
}

/** a < b in serial arithmetic. */
export function snLt(a: number, b: number): boolean {
  return a !== b && ((b - a) >>> 0) < 0x80000000;
}

export function snLte(a: number, b: number): boolean {
  return a === b || snLt(a, b);
}

/** a <= x <= b in serial arithmetic. */
export function snInWindow(x: number, lo: number, hi: number): boolean {
  return snLte(lo, x) && snLte(x, hi);
}
