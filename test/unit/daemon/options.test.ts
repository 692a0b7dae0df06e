import { expect } from 'chai';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateConfig, type TabulaConfig } from '../../../src/config/index.js';
import { agentOptions, applianceOptions, controllerOptions } from '../../../src/daemon/options.js';

const ctx = { hostname: 'node7' };

describe('daemon: options from the configuration', () => {
  const base = (raw: object): TabulaConfig => validateConfig(raw, 't', ctx);

  it('maps seconds to milliseconds and reads the token file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tabula-config-'));
    try {
      writeFileSync(join(dir, 'token'), 'tok-en\nignored\n');
      const c = base({ role: 'controller', controller: { 'ack-timeout': 2.5, 'hold-timeout': 10 }, security: { 'token-file': join(dir, 'token') } });
      expect(controllerOptions(c)).to.deep.equal({
        dbPath: '/var/lib/tabula/controller.db',
        listen: '0.0.0.0:7360',
        token: 'tok-en',
        tls: undefined,
        ackTimeoutMs: 2500,
        holdTimeoutMs: 10000,
        metricsListen: undefined,
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('agent and all-in-one options', () => {
    const a = base({ role: 'agent', controller: { address: 'ctl:7360' }, agent: { 'hold-timeout': 3, containers: '/dev/sd[b-d]' } });
    expect(agentOptions(a)).to.deep.equal({
      controller: 'ctl:7360',
      name: 'node7',
      portals: ['0.0.0.0:3260'],
      containers: ['/dev/sd[b-d]'],
      holdTimeoutMs: 3000,
      token: undefined,
      tls: undefined,
      metricsListen: undefined,
    });
    const u = base({ 'all-in-one': { size: '256MiB' }, 'data-dir': '/srv/t' });
    expect(applianceOptions(u)).to.deep.equal({
      data: '/srv/t',
      portal: '0.0.0.0:3260',
      controllerListen: '127.0.0.1:7360',
      size: 256 * 1024 ** 2,
      token: undefined,
      holdTimeoutMs: undefined,
      controllerMetricsListen: undefined,
      agentMetricsListen: undefined,
    });
    // Without all-in-one.size a restart never grows disk0 to the default.
    expect(applianceOptions(base({})).size).to.equal(undefined);
    const m = base({ controller: { 'metrics-listen': '127.0.0.1:9100' }, agent: { 'metrics-listen': '127.0.0.1:9101' } });
    expect(applianceOptions(m)).to.include({ controllerMetricsListen: '127.0.0.1:9100', agentMetricsListen: '127.0.0.1:9101' });
  });

  it('gives the agent and the all-in-one node security.allowed-initiators, with or without CHAP', () => {
    const list = ['iqn.2026-01.com.example:h1', 'iqn.2026-01.com.example:h2'];
    const c = base({ security: { 'allowed-initiators': list } });
    expect(agentOptions(c).iscsiAuth).to.deep.equal({ allowedInitiators: list });
    expect(applianceOptions(c).iscsiAuth).to.deep.equal({ allowedInitiators: list });
    expect(agentOptions(base({})).iscsiAuth).to.equal(undefined);
  });

  it('gives the agent and the all-in-one node security.chap as their iSCSI login settings', () => {
    const c = base({ security: { chap: { user: 'u', secret: 'twelve-chars', 'mutual-user': 't', 'mutual-secret': 'other-twelve' } } });
    const want = { chap: { user: 'u', secret: 'twelve-chars' }, mutualChap: { user: 't', secret: 'other-twelve' } };
    expect(agentOptions(c).iscsiAuth).to.deep.equal(want);
    expect(applianceOptions(c).iscsiAuth).to.deep.equal(want);
  });
});
