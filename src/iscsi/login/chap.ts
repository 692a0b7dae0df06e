// CHAP with MD5 (RFC 1994, as profiled by RFC 7143 12.1.3), target side.
// Response = MD5(identifier byte || secret || challenge).

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { TargetAuth } from './environment.js';
import { parseNumber } from './keys.js';
import type { TextPair } from './text.js';

export const CHAP_MD5 = 5;
export const CHAP_MD5_RESPONSE_BYTES = 16;
/** What we send; RFC 7143 12.1.3 wants challenges of at least 16 bytes... */
export const CHAP_CHALLENGE_BYTES = 16;
/** ...and we hold the initiator's (mutual) challenge to the same floor and a 1024-byte ceiling. */
export const CHAP_MIN_CHALLENGE_BYTES = 16;
export const CHAP_MAX_CHALLENGE_BYTES = 1024;

/** Decodes a binary value: 0x/0X hex (an odd digit count gets a leading 0) or 0b/0B base64. */
export function decodeBinary(value: string): Buffer | undefined {
  const prefix = value.slice(0, 2);
  const body = value.slice(2);
  if (body.length === 0) return undefined;
  if (prefix === '0x' || prefix === '0X') {
    if (!/^[0-9a-fA-F]+$/.test(body)) return undefined;
    return Buffer.from(body.length % 2 ? `0${body}` : body, 'hex');
  }
  if (prefix === '0b' || prefix === '0B') {
    if (body.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(body)) return undefined;
    return Buffer.from(body, 'base64');
  }
  return undefined;
}

export function encodeHex(bytes: Buffer): string {
  return `0x${bytes.toString('hex')}`;
}

export function chapResponse(identifier: number, secret: string, challenge: Buffer): Buffer {
  return createHash('md5').update(Buffer.of(identifier & 0xff)).update(secret, 'utf8').update(challenge).digest();
}

/** Picks MD5 (5) from a CHAP_A list, or undefined when it is not offered. */
export function selectChapAlgorithm(value: string): number | undefined {
  return value.split(',').some((a) => parseNumber(a.trim()) === CHAP_MD5) ? CHAP_MD5 : undefined;
}

export const enum ChapState {
  AwaitAlgorithm,
  AwaitResponse,
  Done,
  Failed,
}

export type ChapStep = { ok: true; pairs: TextPair[] } | { ok: false; reason: string };

/**
 * One CHAP exchange on one connection: challenge() answers CHAP_A, verify()
 * checks CHAP_N/CHAP_R and, for mutual CHAP, answers the initiator's
 * CHAP_I/CHAP_C with our own CHAP_N/CHAP_R.
 */
export class ChapAuthenticator {
  private st = ChapState.AwaitAlgorithm;
  private identifier = 0;
  private challengeBytes: Buffer = Buffer.alloc(0);

  constructor(
    private readonly credentials: TargetAuth,
    private readonly mutual: TargetAuth | undefined,
    private readonly random: (n: number) => Buffer = randomBytes,
  ) {}

  get state(): ChapState {
    return this.st;
  }

  /** Answers CHAP_A=<list> with CHAP_A=5, CHAP_I and a fresh CHAP_C. */
  challenge(chapA: string | undefined): ChapStep {
    if (this.st !== ChapState.AwaitAlgorithm) return this.fail('CHAP_A out of sequence');
    if (chapA === undefined) return this.fail('CHAP_A missing');
    if (selectChapAlgorithm(chapA) === undefined) return this.fail(`no supported CHAP algorithm in CHAP_A=${chapA}`);
    const rnd = this.random(CHAP_CHALLENGE_BYTES + 1);
    this.identifier = rnd[0];
    this.challengeBytes = rnd.subarray(1);
    this.st = ChapState.AwaitResponse;
    return {
      ok: true,
      pairs: [
        ['CHAP_A', String(CHAP_MD5)],
        ['CHAP_I', String(this.identifier)],
        ['CHAP_C', encodeHex(this.challengeBytes)],
      ],
    };
  }

  /** Checks CHAP_N/CHAP_R (and CHAP_I/CHAP_C for mutual CHAP) from `keys`. */
  verify(keys: ReadonlyMap<string, string>): ChapStep {
    if (this.st !== ChapState.AwaitResponse) return this.fail('CHAP response out of sequence');
    const name = keys.get('CHAP_N');
    const resp = keys.get('CHAP_R');
    if (name === undefined || resp === undefined) return this.fail('CHAP_N or CHAP_R missing');
    if (name !== this.credentials.user) return this.fail(`unknown CHAP user ${JSON.stringify(name)}`);
    const got = decodeBinary(resp);
    if (!got) return this.fail('CHAP_R is not a hex or base64 value');
    if (got.length !== CHAP_MD5_RESPONSE_BYTES) return this.fail(`CHAP_R is ${got.length} bytes, MD5 needs ${CHAP_MD5_RESPONSE_BYTES}`);
    const want = chapResponse(this.identifier, this.credentials.secret, this.challengeBytes);
    if (!timingSafeEqual(got, want)) return this.fail(`wrong CHAP response for user ${JSON.stringify(name)}`);

    const mi = keys.get('CHAP_I');
    const mc = keys.get('CHAP_C');
    if (mi === undefined && mc === undefined) {
      this.st = ChapState.Done;
      return { ok: true, pairs: [] };
    }
    if (mi === undefined || mc === undefined) return this.fail('mutual CHAP needs both CHAP_I and CHAP_C');
    if (!this.mutual) return this.fail('initiator asked for mutual CHAP but the target has no mutual credentials');
    if (this.mutual.secret === this.credentials.secret) {
      return this.fail('mutual CHAP secret equals the initiator secret (RFC 7143 12.1.3 forbids it)');
    }
    const id = parseNumber(mi);
    if (id === undefined || id > 255) return this.fail(`bad CHAP_I ${JSON.stringify(mi)}`);
    const theirs = decodeBinary(mc);
    if (!theirs) return this.fail('CHAP_C is not a hex or base64 value');
    if (theirs.length < CHAP_MIN_CHALLENGE_BYTES || theirs.length > CHAP_MAX_CHALLENGE_BYTES) {
      return this.fail(`CHAP_C of ${theirs.length} bytes (allowed ${CHAP_MIN_CHALLENGE_BYTES}..${CHAP_MAX_CHALLENGE_BYTES})`);
    }
    if (theirs.equals(this.challengeBytes)) return this.fail('initiator reflected the target challenge');
    this.st = ChapState.Done;
    return {
      ok: true,
      pairs: [
        ['CHAP_N', this.mutual.user],
        ['CHAP_R', encodeHex(chapResponse(id, this.mutual.secret, theirs))],
      ],
    };
  }

  private fail(reason: string): ChapStep {
    this.st = ChapState.Failed;
    return { ok: false, reason };
  }
}
