// Reconnect delays: exponential, capped, with full jitter so that a fleet of
// agents that lost the controller together does not come back in lockstep.

export interface BackoffOptions {
  /** First delay before jitter. */
  initialMs?: number;
  /** Cap on the delay before jitter. */
  maxMs?: number;
  /** Growth per failed attempt. */
  factor?: number;
  /** Fraction of the delay drawn at random: 0 = none, 1 = anywhere in [0, delay]. */
  jitter?: number;
  /** Source of randomness in [0, 1) (tests pin it). */
  random?: () => number;
}

export const DEFAULT_BACKOFF: Required<Omit<BackoffOptions, 'random'>> = {
  initialMs: 250,
  maxMs: 10_000,
  factor: 2,
  jitter: 0.5,
};

export class Backoff {
  readonly #initial: number;
  readonly #max: number;
  readonly #factor: number;
  readonly #jitter: number;
  readonly #random: () => number;
  #attempt = 0;

  constructor(opts: BackoffOptions = {}) {
    this.#initial = opts.initialMs ?? DEFAULT_BACKOFF.initialMs;
    this.#max = opts.maxMs ?? DEFAULT_BACKOFF.maxMs;
    this.#factor = opts.factor ?? DEFAULT_BACKOFF.factor;
    this.#jitter = Math.min(1, Math.max(0, opts.jitter ?? DEFAULT_BACKOFF.jitter));
    this.#random = opts.random ?? Math.random;
    if (!(this.#initial > 0) || !(this.#max >= this.#initial) || !(this.#factor >= 1)) {
      throw new RangeError(`backoff: need 0 < initialMs <= maxMs and factor >= 1 (got ${this.#initial}, ${this.#max}, ${this.#factor})`);
    }
  }

  /** Failed attempts since the last reset. */
  get attempt(): number {
    return this.#attempt;
  }

  /** The delay before the next attempt; each call counts one more failure. */
  next(): number {
    const base = Math.min(this.#max, this.#initial * this.#factor ** this.#attempt);
    if (base < this.#max) this.#attempt++;
    return Math.round(base * (1 - this.#jitter * this.#random()));
  }

  /** A connection succeeded: start again from the initial delay. */
  reset(): void {
    this.#attempt = 0;
  }
}
