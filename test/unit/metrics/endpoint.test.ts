// The endpoint on its own: addresses, methods, a busy port, and that a
// daemon without metricsListen has no endpoint.
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Counter, Registry } from 'prom-client';
import { startController } from '../../../src/controller/daemon.js';
import { newRegistry, parseMetricsListen, startMetricsEndpoint, type MetricsEndpoint } from '../../../src/metrics/index.js';
import { parseExposition, valueOf } from './exposition.js';
import { metrics } from './scrape.js';

async function busyPort(): Promise<{ server: Server; port: number }> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('no port');
  return { server, port: addr.port };
}

describe('metrics: endpoint', () => {
  it('reads metricsListen as HOST:PORT, HOST, :PORT or PORT (the last two on loopback)', () => {
    expect(parseMetricsListen('0.0.0.0:9100', 9360)).to.deep.equal({ host: '0.0.0.0', port: 9100 });
    expect(parseMetricsListen('127.0.0.1', 9360)).to.deep.equal({ host: '127.0.0.1', port: 9360 });
    expect(parseMetricsListen(':0', 9360)).to.deep.equal({ host: '127.0.0.1', port: 0 });
    expect(parseMetricsListen('9100', 9360)).to.deep.equal({ host: '127.0.0.1', port: 9100 });
    expect(parseMetricsListen('[::1]:9100', 9360)).to.deep.equal({ host: '::1', port: 9100 });
    expect(() => parseMetricsListen('127.0.0.1:70000', 9360)).to.throw(/port must be 0-65535/);
    expect(() => parseMetricsListen('', 9360)).to.throw(/bad address/);
  });

  describe('serving a registry', () => {
    let registry: Registry;
    let ep: MetricsEndpoint;
    before(async () => {
      registry = newRegistry();
      new Counter({ name: 'test_things_total', help: 'Things with "quotes" and \\ backslashes.', labelNames: ['what'], registers: [registry] }).inc({ what: 'a "b"\\c\nd' }, 3);
      ep = await startMetricsEndpoint(registry, '127.0.0.1:0', 9360, 'test');
    });
    after(() => ep.close());

    it('serves GET /metrics in the text format, process metrics included, label values escaped', async () => {
      const e = await metrics(ep.address);
      expect(valueOf(e, 'test_things_total', { what: 'a "b"\\c\nd' })).to.equal(3);
      expect(e.types.get('process_cpu_seconds_total')).to.equal('counter');
      expect(e.types.get('nodejs_heap_size_used_bytes')).to.equal('gauge');
    });

    it('ignores a query string, answers HEAD without a body, other paths 404 and other methods 405', async () => {
      const q = await fetch(`http://${ep.address}/metrics?x=1`);
      expect(q.status).to.equal(200);
      parseExposition(await q.text());
      const head = await fetch(`http://${ep.address}/metrics`, { method: 'HEAD' });
      expect(head.status).to.equal(200);
      expect(await head.text()).to.equal('');
      const nf = await fetch(`http://${ep.address}/metric`);
      expect(nf.status).to.equal(404);
      await nf.text();
      const put = await fetch(`http://${ep.address}/metrics`, { method: 'PUT', body: 'x' });
      expect(put.status).to.equal(405);
      await put.text();
    });

    it('answers 500 naming the failure when collecting throws', async () => {
      const bad = new Registry();
      new Counter({
        name: 'broken_total',
        help: 'Fails to collect.',
        registers: [bad],
        collect() {
          throw new Error('database is closed');
        },
      });
      const ep2 = await startMetricsEndpoint(bad, '127.0.0.1:0', 9360, 'test');
      try {
        const res = await fetch(`http://${ep2.address}/metrics`);
        expect(res.status).to.equal(500);
        expect(await res.text()).to.contain('database is closed');
      } finally {
        await ep2.close();
      }
    });
  });

  it('refuses a busy port with the address in the message', async () => {
    const busy = await busyPort();
    try {
      let err: Error | undefined;
      await startMetricsEndpoint(newRegistry(), `127.0.0.1:${busy.port}`, 9360, 'agent x').catch((e: Error) => (err = e));
      expect(err?.message).to.match(new RegExp(`^agent x metrics cannot listen on 127\\.0\\.0\\.1:${busy.port}: .*EADDRINUSE`));
    } finally {
      busy.server.close();
    }
  });

  describe('in startController', () => {
    let dir: string;
    before(() => {
      dir = mkdtempSync(join(tmpdir(), 'tabula-metrics-ep-'));
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    it('has no endpoint without metricsListen', async () => {
      const h = await startController({ dbPath: join(dir, 'a.db'), listen: '127.0.0.1:0' });
      try {
        expect(h.metricsAddress).to.equal(null);
      } finally {
        await h.close();
      }
    });

    it('fails to start, and releases the database, when the metrics port is busy', async () => {
      const busy = await busyPort();
      const dbPath = join(dir, 'b.db');
      try {
        let err: Error | undefined;
        await startController({ dbPath, listen: '127.0.0.1:0', metricsListen: `127.0.0.1:${busy.port}` }).catch((e: Error) => (err = e));
        expect(err?.message).to.match(/^controller metrics cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/);
      } finally {
        busy.server.close();
      }
      // The same database opens again (nothing was left holding it), with metrics this time.
      const h = await startController({ dbPath, listen: '127.0.0.1:0', metricsListen: '127.0.0.1:0' });
      try {
        const e = await metrics(h.metricsAddress as string);
        expect(valueOf(e, 'tabula_controller_agents_connected')).to.equal(0);
      } finally {
        await h.close();
      }
    });
  });
});
