// The error a promise rejects with, for tests that inspect it (its class,
// code or message) rather than only that it failed.

/** Resolves with the rejection's error; fails the test when `p` resolves instead. */
export async function rejects(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a rejection');
}
