// The daemons' security and configuration from the command line, as real
// processes: one-line errors for bad flags and files, `tabula certs`, a
// controller with mutual TLS reached by admin commands, and SIGHUP taking a
// new token from the token file while the old one stops working.
import { expect } from 'chai';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeRun } from '../support/bounded-run.js';
import { expectOneLineError, freeLoopbackPort, startDaemon, tabula, tabulaOk, type Daemon } from './harness.js';

describe('tabula CLI: security and configuration', function () {
  this.timeout(180_000);
  let dir: string;
  const daemons: Daemon[] = [];

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-cli-sec-'));
  });
  after(async () => {
    for (const d of daemons) await d.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('flag and file errors: one line naming the flag, the key or the file', async () => {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'controller:\n  listn: 127.0.0.1:1\n');
    const [open, both, half, missing, badFile, agentCa, badMetrics] = await Promise.all([
      tabula(['controller', '--db', join(dir, 'x.db'), '--listen', '0.0.0.0:0']),
      tabula(['controller', '--db', join(dir, 'x.db'), '--token', 'a', '--token-file', join(dir, 't')]),
      tabula(['controller', '--db', join(dir, 'x.db'), '--tls-cert', join(dir, 'c.pem')]),
      tabula(['controller', '--config', join(dir, 'nope.yaml')]),
      tabula(['controller', '--config', bad]),
      tabula(['agent', '--controller', '127.0.0.1:1', '--name', 'a', '--portal', '127.0.0.1:0', '--containers', 'x', '--tls-cert', '/c', '--tls-key', '/k']),
      tabula(['controller', '--db', join(dir, 'x.db'), '--metrics-listen', 'nowhere:99999']),
    ]);
    expectOneLineError(open, /security\.token: required when controller\.listen \(0\.0\.0\.0:0\) is beyond loopback/);
    expectOneLineError(both, /give --token or --token-file, not both/);
    expectOneLineError(half, /security\.tls\.key: give the certificate and its key together/);
    expectOneLineError(missing, /nope\.yaml: no such file/);
    expectOneLineError(badFile, /bad\.yaml: controller\.listn: unknown key \(did you mean controller\.listen\?\)/);
    expectOneLineError(agentCa, /security\.tls\.ca: required on an agent/);
    expectOneLineError(badMetrics, /--metrics-listen: 'nowhere:99999' is not HOST:PORT/);
  });

  it('tabula certs: a CA, a server and a client certificate; no overwriting without --force', async () => {
    await tabulaOk(['certs', 'ca', '--out', join(dir, 'ca')]);
    await tabulaOk(['certs', 'issue', '--ca', join(dir, 'ca'), '--name', 'ctl', '--out', dir, '--server', '--san', '127.0.0.1']);
    const client = JSON.parse(await tabulaOk(['certs', 'issue', '--ca', join(dir, 'ca'), '--name', 'admin', '--out', dir, '--client', '--json'])) as {
      key: string;
      subject: string;
    };
    expect(client.subject).to.equal('CN=admin');
    expect(statSync(client.key).mode & 0o777).to.equal(0o600);
    expectOneLineError(await tabula(['certs', 'issue', '--ca', join(dir, 'ca'), '--name', 'admin', '--out', dir]), /admin\.crt exists: refusing to overwrite/);
    expectOneLineError(await tabula(['certs', 'issue', '--ca', join(dir, 'ca'), '--name', 'x', '--out', dir, '--server', '--client']), /mutually exclusive/);
  });

  it('a controller with mutual TLS: admin commands with a client certificate work, without one they are refused', async () => {
    const port = await freeLoopbackPort();
    const d = await startDaemon(
      ['controller', '--db', join(dir, 'tls.db'), '--listen', `127.0.0.1:${port}`, '--tls-cert', join(dir, 'ctl.crt'), '--tls-key', join(dir, 'ctl.key'), '--tls-ca', join(dir, 'ca', 'ca.crt')],
      /controller listening on/,
      join(dir, 'tls.log'),
    );
    daemons.push(d);
    const at = ['--controller', `127.0.0.1:${port}`];
    const out = await tabulaOk(['vdisk', 'ls', ...at, '--tls-ca', join(dir, 'ca', 'ca.crt'), '--tls-cert', join(dir, 'admin.crt'), '--tls-key', join(dir, 'admin.key')]);
    expect(out.trim()).to.equal('no vdisks');
    // The same through the environment.
    const env = { TABULA_TLS_CA: join(dir, 'ca', 'ca.crt'), TABULA_TLS_CERT: join(dir, 'admin.crt'), TABULA_TLS_KEY: join(dir, 'admin.key') };
    expect((await tabulaOk(['vdisk', 'ls', ...at], env)).trim()).to.equal('no vdisks');
    expectOneLineError(await tabula(['vdisk', 'ls', ...at, '--tls-ca', join(dir, 'ca', 'ca.crt')]), /client certificate/);
    expectOneLineError(await tabula(['vdisk', 'ls', ...at]), /does it want TLS\?/);
    expectOneLineError(await tabula(['vdisk', 'ls', ...at, '--tls-ca', join(dir, 'ca', 'ca.crt'), '--tls-cert', join(dir, 'admin.crt')]), /--tls-cert and --tls-key together/);
  });

  it('SIGHUP: a new token in the token file replaces the old one; a bad configuration changes nothing', async () => {
    const port = await freeLoopbackPort();
    const tokenFile = join(dir, 'token');
    const cfg = join(dir, 'ctl.yaml');
    writeFileSync(tokenFile, 'old-token-1\n');
    writeFileSync(cfg, `controller:\n  listen: 127.0.0.1:${port}\n  db: ${join(dir, 'hup.db')}\nsecurity:\n  token-file: ${tokenFile}\n`);
    const d = await startDaemon(['controller', '--config', cfg], /controller listening on/, join(dir, 'hup.log'));
    daemons.push(d);
    const at = ['--controller', `127.0.0.1:${port}`];
    const ls = (token: string) => tabula(['vdisk', 'ls', ...at, '--token', token]);
    expect((await ls('old-token-1')).exitCode).to.equal(0);
    expectOneLineError(await ls('new-token-2'), /refused the request: bad authorization token/);

    writeFileSync(tokenFile, 'new-token-2\n');
    d.signal('SIGHUP');
    // Reload is asynchronous to us: wait until the new token is taken (bounded).
    let r = await ls('new-token-2');
    for (let i = 0; i < 50 && r.exitCode !== 0; i++) {
      await new Promise((res) => setTimeout(res, 200));
      r = await ls('new-token-2');
    }
    expect(r.exitCode, describeRun(r)).to.equal(0);
    expectOneLineError(await ls('old-token-1'), /bad authorization token/);

    // A configuration that does not validate: logged, and the running one stays.
    writeFileSync(cfg, 'controller:\n  listen: [\n');
    d.signal('SIGHUP');
    for (let i = 0; i < 50 && !/configuration not reloaded/.test(d.log()); i++) await new Promise((res) => setTimeout(res, 200));
    expect(d.log()).to.match(/SIGHUP: configuration not reloaded, the running one stays: .*ctl\.yaml: line \d+/);
    expect((await ls('new-token-2')).exitCode).to.equal(0);
    expect(d.child.exitCode).to.equal(null);
  });
});
