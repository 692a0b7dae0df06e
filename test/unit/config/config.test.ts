import { expect } from 'chai';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ConfigError,
  loadConfig,
  notApplied,
  parseSetting,
  validateConfig,
  type TabulaConfig,
} from '../../../src/config/index.js';

const ctx = { hostname: 'node7' };

function problems(raw: unknown): string[] {
  try {
    validateConfig(raw, 'test.yaml', ctx);
  } catch (e) {
    expect(e).to.be.instanceOf(ConfigError);
    return [...(e as ConfigError).problems];
  }
  throw new Error('expected the configuration to be refused');
}

describe('config: validation', () => {
  it('an empty file is an all-in-one node on loopback with defaults', () => {
    const c = validateConfig(null, 'test.yaml', ctx);
    expect(c.role).to.equal('all-in-one');
    expect(c.dataDir).to.equal('/var/lib/tabula');
    expect(c.controller.listen).to.equal('127.0.0.1:7360');
    expect(c.controller.db).to.equal('/var/lib/tabula/controller.db');
    expect(c.agent).to.deep.include({ name: 'local', portals: ['0.0.0.0:3260'], containers: ['/var/lib/tabula/containers/*'] });
    // Unset: disk0 gets the default size when created and is never grown by a restart.
    expect(c.allInOne.size).to.equal(undefined);
    expect(c.containersInit).to.deep.equal([]);
  });

  it('an agent takes its name from the host and its containers from containers-init', () => {
    const c = validateConfig(
      { role: 'agent', controller: { address: '10.0.0.1' }, 'containers-init': ['/dev/vdb', { device: '/dev/vdc', size: '10GiB' }] },
      'test.yaml',
      ctx,
    );
    expect(c.agent.name).to.equal('node7');
    expect(c.controller.address).to.equal('10.0.0.1:7360');
    expect(c.agent.containers).to.deep.equal(['/dev/vdb', '/dev/vdc']);
    expect(c.containersInit).to.deep.equal([
      { device: '/dev/vdb', size: undefined, segmentSize: undefined },
      { device: '/dev/vdc', size: 10 * 1024 ** 3, segmentSize: undefined },
    ]);
  });

  it('names every bad key in one pass', () => {
    expect(
      problems({
        role: 'agent',
        controller: { adress: '1.2.3.4:7360', 'ack-timeout': 0 },
        agent: { portals: ['0.0.0.0:3260', 'x:70000'], containers: ['relative/*'], name: 'bad name' },
        'containers-init': [{ size: '1GiB' }],
        security: { chap: { user: 'u', secret: 'short' }, 'allowed-initiators': ['not-an-iqn'] },
      }),
    ).to.deep.equal([
      'controller.adress: unknown key (did you mean controller.address?)',
      'controller.ack-timeout: expected seconds, more than 0 and at most 3600, got 0',
      'controller.address: required when role is agent (HOST:PORT of the controller)',
      "agent.name: 'bad name' must be 1-64 of A-Z a-z 0-9 . _ -",
      "agent.portals[1]: 'x:70000' is not HOST:PORT (port 0-65535)",
      "agent.containers[0]: 'relative/*' must be an absolute path or glob",
      'containers-init[0].device: required (the block device to label, e.g. /dev/disk/by-id/...)',
      'security.chap.secret: at least 12 characters (initiators such as Windows refuse shorter ones)',
      "security.allowed-initiators[0]: 'not-an-iqn' is not an iSCSI name (iqn.YYYY-MM.domain..., eui.…, naa.…)",
    ]);
  });

  it('refuses an unknown role, a bad size and a controller beyond loopback without a token', () => {
    expect(problems({ role: 'master' })).to.deep.equal(["role: 'master' is not one of controller, agent, all-in-one, storage"]);
    expect(problems({ 'all-in-one': { size: '12 parsecs' } })[0]).to.match(/^all-in-one\.size: bad size '12 parsecs'/);
    expect(problems({ role: 'controller' })).to.deep.equal([
      'security.token: required when controller.listen (0.0.0.0:7360) is beyond loopback (or give security.token-file, or mutual TLS: security.tls with ca)',
    ]);
    expect(problems({ role: 'controller', security: { token: 'a', 'token-file': '/etc/tabula/token' } })).to.deep.equal([
      'security.token-file: give security.token or security.token-file, not both',
    ]);
    expect(problems([1, 2])).to.deep.equal(['expected a mapping of keys at the top, got a list']);
  });
});

describe('config: file, environment and flags', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-config-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('environment overrides the file and flags override both', () => {
    const f = join(dir, 'tabula.yaml');
    writeFileSync(f, 'role: agent\ncontroller:\n  address: 10.0.0.1:7360\nagent:\n  portals: [10.0.0.2:3260]\nsecurity:\n  token-file: /etc/tabula/token\n');
    const l = loadConfig({
      file: f,
      env: { TABULA_PORTAL: '10.0.0.3:3260, 10.0.0.4:3260', TABULA_TOKEN: 's3cret' },
      overrides: { 'controller.address': '10.0.0.9:7360', 'agent.name': undefined },
      hostname: 'h1',
    });
    expect(l.file).to.equal(f);
    expect(l.config.agent.portals).to.deep.equal(['10.0.0.3:3260', '10.0.0.4:3260']);
    expect(l.config.controller.address).to.equal('10.0.0.9:7360');
    // TABULA_TOKEN replaces the file's token-file rather than conflicting with it.
    expect(l.config.security).to.deep.include({ token: 's3cret', tokenFile: undefined });
    expect(l.fromEnv).to.deep.equal(['agent.portals', 'security.token']);
    expect(l.fromFlags).to.deep.equal(['controller.address']);
  });

  it('a missing default file means defaults; a missing named file is an error', () => {
    expect(loadConfig({ env: { TABULA_ROLE: 'all-in-one' }, file: undefined, requireFile: false }).config.role).to.equal('all-in-one');
    expect(() => loadConfig({ file: join(dir, 'nope.yaml'), env: {} })).to.throw(ConfigError, /nope\.yaml: no such file/);
  });

  it('a YAML syntax error names the line', () => {
    const f = join(dir, 'bad.yaml');
    writeFileSync(f, 'role: agent\ncontroller:\n  address: [unclosed\n');
    expect(() => loadConfig({ file: f, env: {} })).to.throw(ConfigError, /bad\.yaml: line \d+ column \d+/);
  });

  it('--set KEY=VALUE reads the value as YAML', () => {
    expect(parseSetting('agent.portals=[a:1, b:2]')).to.deep.equal(['agent.portals', ['a:1', 'b:2']]);
    expect(parseSetting('controller.ack-timeout=5')).to.deep.equal(['controller.ack-timeout', 5]);
    expect(() => parseSetting('novalue')).to.throw(ConfigError, /expected KEY=VALUE/);
  });
});

describe('config: settings accepted but not applied', () => {
  const base = (raw: object): TabulaConfig => validateConfig(raw, 't', ctx);

  it('says which accepted settings are not applied yet', () => {
    const c = base({ security: { chap: { user: 'u', secret: 'twelve-chars' }, 'allowed-initiators': ['iqn.2026-01.com.example:h1'] } });
    // CHAP and the agent-wide initiator list are both enforced by the agent now.
    expect(notApplied(c)).to.deep.equal([]);
  });
});
