// Fetching and waiting on a metrics endpoint in tests.
import { expect } from 'chai';
import { parseExposition, valueOf, type Exposition } from './exposition.js';

export async function scrape(address: string): Promise<{ status: number; type: string | null; text: string }> {
  const res = await fetch(`http://${address}/metrics`);
  return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
}

/** GET /metrics, checked (200, text format 0.0.4) and parsed. */
export async function metrics(address: string): Promise<Exposition> {
  const r = await scrape(address);
  expect(r.status).to.equal(200);
  expect(r.type).to.match(/^text\/plain; version=0\.0\.4/);
  return parseExposition(r.text);
}

/** Polls the endpoint until `name{labels}` reads `want`; returns that scrape. */
export async function untilValue(address: string, name: string, labels: Record<string, string>, want: number, ms = 5000): Promise<Exposition> {
  const deadline = Date.now() + ms;
  for (;;) {
    const e = await metrics(address);
    if (valueOf(e, name, labels) === want) return e;
    if (Date.now() > deadline) throw new Error(`${name}${JSON.stringify(labels)} is ${valueOf(e, name, labels)}, not ${want}, after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 30));
  }
}
