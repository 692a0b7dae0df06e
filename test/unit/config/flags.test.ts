// Daemon commands' configuration: flags > TABULA_* environment > --config
// file > defaults, errors that name the flag, the key and the file, and
// which changed settings a SIGHUP cannot apply.
import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { commandLoader, describeConfigError, flagOverrides, type FlagSpec } from '../../../src/config/flags.js';
import { ConfigError, loadConfig, validateConfig } from '../../../src/config/index.js';
import { securitySettings } from '../../../src/daemon/options.js';
import { restartNeeded } from '../../../src/daemon/run.js';
import { CONTROLLER_FLAGS } from '../../../src/cli/controller.js';
import { AGENT_FLAGS } from '../../../src/cli/agent.js';

const ctx = { hostname: 'node7' };

describe('config: daemon commands (flags, environment, --config)', () => {
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-flags-'));
    file = join(dir, 'tabula.yaml');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const controller = (args: Record<string, unknown>, env: NodeJS.ProcessEnv = {}, withFile = true) =>
    commandLoader({
      role: 'controller',
      specs: CONTROLLER_FLAGS,
      args,
      file: withFile ? file : undefined,
      env,
      defaultsWithoutFile: { 'controller.listen': '127.0.0.1:7360' },
      requiredWithoutFile: { 'controller.db': 'Missing required argument: db' },
    })();

  it('flags beat the environment, which beats the file, which beats defaults', () => {
    writeFileSync(file, 'controller:\n  listen: 127.0.0.1:7001\n  db: /srv/a.db\n  ack-timeout: 4\nlog-level: debug\nsecurity:\n  token: from-file\n');
    const fileOnly = controller({}).config;
    expect(fileOnly.controller).to.deep.include({ listen: '127.0.0.1:7001', db: '/srv/a.db', ackTimeoutSec: 4 });
    expect(fileOnly.role).to.equal('controller');
    expect(fileOnly.security.token).to.equal('from-file');
    expect(fileOnly.controller.holdTimeoutSec).to.equal(undefined); // default

    const env = { TABULA_CONTROLLER_LISTEN: '127.0.0.1:7002', TABULA_TOKEN: 'from-env', TABULA_LOG_LEVEL: 'warn' };
    const withEnv = controller({}, env).config;
    expect(withEnv.controller.listen).to.equal('127.0.0.1:7002');
    expect(withEnv.security.token).to.equal('from-env');
    expect(withEnv.logLevel).to.equal('warn');
    expect(withEnv.controller.db).to.equal('/srv/a.db');

    const l = controller({ listen: '127.0.0.1:7003', 'token-file': join(dir, 'tok'), 'ack-timeout': 9, 'metrics-listen': ':0' }, env);
    expect(l.config.controller).to.deep.include({ listen: '127.0.0.1:7003', ackTimeoutSec: 9, metricsListen: ':0' });
    // A token file given by flag replaces the environment's token rather than conflicting with it.
    expect(l.config.security).to.deep.include({ token: undefined, tokenFile: join(dir, 'tok') });
    expect(l.fromFlags).to.include.members(['controller.listen', 'security.token-file', 'controller.ack-timeout', 'controller.metrics-listen']);
  });

  it("without a file the command's own defaults apply; with one, the file's (as for the systemd service)", () => {
    expect(controller({ db: 'rel.db' }, {}, false).config.controller).to.deep.include({ listen: '127.0.0.1:7360', db: resolve('rel.db') });
    writeFileSync(file, 'security:\n  token: t\n');
    expect(controller({}).config.controller).to.deep.include({ listen: '0.0.0.0:7360', db: '/var/lib/tabula/controller.db' });
    expect(() => controller({}, {}, false)).to.throw('Missing required argument: db');
  });

  it('TABULA_CONFIG names the file when --config does not; relative paths are read from the working directory', () => {
    writeFileSync(file, 'controller:\n  db: /srv/b.db\n  listen: 127.0.0.1:7360\n');
    expect(controller({}, { TABULA_CONFIG: file }, false).config.controller.db).to.equal('/srv/b.db');
    const l = controller({ 'tls-cert': 'c.pem', 'tls-key': 'k.pem', 'tls-ca': 'ca.pem' }, { TABULA_TOKEN_FILE: 'tok' });
    expect(l.config.security.tls).to.deep.equal({ cert: resolve('c.pem'), key: resolve('k.pem'), ca: resolve('ca.pem') });
    expect(l.config.security.tokenFile).to.equal(resolve('tok'));
  });

  it('errors name the flag for flag values, and the key and the file for file values, on one line', () => {
    writeFileSync(file, 'controller:\n  lisen: 1.2.3.4:1\n  hold-timeout: 0\nsecurity:\n  token: t\n');
    let err: Error | undefined;
    try {
      controller({ 'ack-timeout': -1, 'metrics-listen': 'x:99999' });
    } catch (e) {
      err = e as Error;
    }
    expect(err?.message).to.equal(
      "--ack-timeout: expected seconds, more than 0 and at most 3600, got -1; --metrics-listen: 'x:99999' is not HOST:PORT, :PORT or PORT (port 0-65535); " +
        `${file}: controller.lisen: unknown key (did you mean controller.listen?); controller.hold-timeout: expected seconds, more than 0 and at most 3600, got 0`,
    );
    expect(err?.message).to.not.contain('\n');
    expect(() => commandLoader({ role: 'controller', specs: CONTROLLER_FLAGS, args: {}, file: join(dir, 'nope.yaml') })()).to.throw(/nope\.yaml: no such file/);
  });

  it("a file that names another role is refused by the other role's command", () => {
    writeFileSync(file, 'role: agent\ncontroller:\n  address: 10.0.0.1:7360\n');
    expect(() => controller({})).to.throw(`${file}: role: the configuration says 'agent', but this starts the controller daemon`);
    const a = commandLoader({ role: 'agent', specs: AGENT_FLAGS, args: { 'controller-ca': '/etc/tabula/ca.crt' }, file })();
    expect(a.config.agent.name).to.match(/./);
    expect(a.config.security.tls).to.deep.equal({ cert: undefined, key: undefined, ca: '/etc/tabula/ca.crt' });
  });

  it('beyond loopback: a token or mutual TLS is required; TLS without a client CA is not enough', () => {
    const v = (raw: object): string[] => {
      try {
        validateConfig(raw, 't.yaml', ctx);
        return [];
      } catch (e) {
        return [...(e as ConfigError).problems];
      }
    };
    const listen = { listen: '0.0.0.0:7360' };
    expect(v({ role: 'controller', controller: listen, security: { tls: { cert: '/c', key: '/k', ca: '/ca' } } })).to.deep.equal([]);
    expect(v({ role: 'controller', controller: listen, security: { tls: { cert: '/c', key: '/k' } } })[0]).to.match(/^security\.token: required/);
    expect(v({ role: 'controller', security: { token: 't', tls: { ca: '/ca' } } })).to.deep.equal([
      "security.tls.cert: required with security.tls (the controller's certificate, with security.tls.key)",
    ]);
    expect(v({ role: 'agent', controller: { address: 'c:1' }, security: { tls: { cert: '/c' } } })).to.deep.equal([
      'security.tls.key: give the certificate and its key together',
      "security.tls.ca: required on an agent (the CA of the controller's certificate)",
    ]);
  });

  it('flag overrides: lists stay lists, paths become absolute, absent flags are left out', () => {
    const specs: FlagSpec[] = [
      { flag: 'portal', key: 'agent.portals', list: true },
      { flag: 'containers', key: 'agent.containers', list: true, path: true },
      { flag: 'name', key: 'agent.name' },
    ];
    expect(flagOverrides({ portal: 'a:1', containers: ['c/*', '/d/*'] }, specs)).to.deep.equal({
      'agent.portals': ['a:1'],
      'agent.containers': [resolve('c/*'), '/d/*'],
    });
    const e = new ConfigError('f.yaml', ["agent.portals[1]: 'x' is not HOST:PORT", 'agent.name: bad']);
    expect(describeConfigError(e, specs, ['agent.portals'])).to.equal("--portal[1]: 'x' is not HOST:PORT; f.yaml: agent.name: bad");
  });

  it('security settings are read from their files each time (what SIGHUP applies)', () => {
    const tok = join(dir, 'token');
    writeFileSync(tok, 'one\n');
    writeFileSync(file, `security:\n  token-file: ${tok}\n`);
    const cfg = loadConfig({ file, env: {}, role: 'controller' }).config;
    expect(securitySettings(cfg).token).to.equal('one');
    writeFileSync(tok, 'two\n');
    expect(securitySettings(cfg).token).to.equal('two');
    writeFileSync(tok, '\n');
    expect(() => securitySettings(cfg)).to.throw(ConfigError, /is empty/);
  });

  it('names the settings that changed and take a restart, per role', () => {
    const a = validateConfig({ role: 'controller', controller: { listen: '127.0.0.1:1', 'ack-timeout': 3 }, 'log-level': 'info' }, 't', ctx);
    const b = validateConfig({ role: 'controller', controller: { listen: '127.0.0.1:2', 'ack-timeout': 3 }, 'log-level': 'debug', agent: { name: 'x' } }, 't', ctx);
    expect(restartNeeded('controller', a, b)).to.deep.equal(['controller.listen']);
    // The log level is no restart: SIGHUP applies it.
    expect(restartNeeded('agent', a, b)).to.deep.equal(['agent.name']);
    expect(restartNeeded('controller', a, a)).to.deep.equal([]);
    const chap = validateConfig({ role: 'agent', controller: { address: 'c:1' }, security: { chap: { user: 'u', secret: 'twelve-chars' } } }, 't', ctx);
    const noChap = validateConfig({ role: 'agent', controller: { address: 'c:1' } }, 't', ctx);
    expect(restartNeeded('agent', noChap, chap)).to.deep.equal(['security.chap']);
  });
});
