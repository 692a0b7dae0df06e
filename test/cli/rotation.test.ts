// Rotating the controller's secrets with SIGHUP, end to end, with a real
// controller and real agents (issue 19):
// - token: the controller's token file goes from A to B and the controller
//   is sent SIGHUP. Admins and agents with A are refused from then on; an
//   agent told B (its token file rewritten and SIGHUP: the next connection
//   uses it) registers again after the controller restarts, and an agent
//   started with B registers; one that keeps A stays out.
// - TLS: the controller's certificate and key files are replaced by a new
//   pair from the same CA and the controller is sent SIGHUP. New
//   connections are served the new certificate (read with a TLS client),
//   admins and agents that trust the CA connect, and the agent already
//   connected stays registered.
import { expect } from 'chai';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { describeRun } from '../support/bounded-run.js';
import { waitFor } from '../support/process.js';
import { expectOneLineError, freeLoopbackPort, startDaemon, tabula, tabulaOk, type Daemon } from './harness.js';

interface AgentRow {
  name: string;
  online: boolean;
}

/** The certificate a new TLS connection to 127.0.0.1:port is served (SHA-256 fingerprint). */
function servedFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, ALPNProtocols: ['h2'], rejectUnauthorized: false }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.end();
      resolve(fp);
    });
    s.setTimeout(10_000, () => {
      s.destroy();
      reject(new Error('TLS handshake timed out'));
    });
    s.on('error', reject);
  });
}

const fingerprintOf = (pemFile: string): string => new X509Certificate(readFileSync(pemFile)).fingerprint256;

describe('tabula CLI: SIGHUP rotation of the token and the TLS certificate, with agents', function () {
  this.timeout(300_000);
  let dir: string;
  const daemons: Daemon[] = [];
  const start = async (args: readonly string[], ready: RegExp, log: string): Promise<Daemon> => {
    const d = await startDaemon(args, ready, join(dir, log));
    daemons.push(d);
    return d;
  };

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-cli-rotate-'));
    mkdirSync(join(dir, 'containers'));
  });
  after(async () => {
    for (const d of daemons) await d.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Polls (bounded) until `probe` holds. */
  const until = (what: string, probe: () => Promise<boolean>, ms = 60_000): Promise<boolean> => waitFor(what, ms, async () => ((await probe()) ? true : undefined), 250);

  it('token: after SIGHUP the old token is refused to admins and agents; agents with the new one register', async () => {
    const port = await freeLoopbackPort();
    const at = ['--controller', `127.0.0.1:${port}`];
    const ctlToken = join(dir, 'ctl.token');
    const aToken = join(dir, 'a.token');
    const cfg = join(dir, 'ctl.yaml');
    writeFileSync(ctlToken, 'token-A-1111\n');
    writeFileSync(aToken, 'token-A-1111\n');
    writeFileSync(cfg, `controller:\n  listen: 127.0.0.1:${port}\n  db: ${join(dir, 'tok.db')}\nsecurity:\n  token-file: ${ctlToken}\n`);
    const startCtl = (): Promise<Daemon> => start(['controller', '--config', cfg], /controller listening on/, 'ctl.log');
    let ctl = await startCtl();
    const agentArgs = async (name: string, token: string[]): Promise<string[]> => [
      'agent', ...at, '--name', name, '--portal', `127.0.0.1:${await freeLoopbackPort()}`, '--containers', join(dir, 'containers', '*.img'), ...token,
    ];
    const a = await start(await agentArgs('a', ['--token-file', aToken]), /agent a serving on/, 'agent-a.log');
    const agents = async (token: string): Promise<AgentRow[]> => JSON.parse(await tabulaOk(['agent', 'ls', ...at, '--token', token, '--json'])) as AgentRow[];
    const online = async (token: string, name: string): Promise<boolean> => (await agents(token)).some((x) => x.name === name && x.online);
    await until('agent a registered with token A', () => online('token-A-1111', 'a'));

    // Rotate the controller's token: A is refused from now on, B works.
    writeFileSync(ctlToken, 'token-B-2222\n');
    ctl.signal('SIGHUP');
    await until('the controller takes token B', async () => (await tabula(['vdisk', 'ls', ...at, '--token', 'token-B-2222'])).exitCode === 0);
    expectOneLineError(await tabula(['vdisk', 'ls', ...at, '--token', 'token-A-1111']), /bad authorization token/);
    // The stream agent a opened with A stays up (a token is checked when a call starts).
    expect(await online('token-B-2222', 'a')).to.equal(true);
    // An agent that comes with A is refused: it never registers.
    const c = await start(await agentArgs('c', ['--token', 'token-A-1111']), /agent c serving on/, 'agent-c.log');
    await until('agent c refused', async () => /controller link down.*bad authorization token/.test(c.log()));
    expect(await online('token-B-2222', 'c')).to.equal(false);

    // Agent a is told B (its token file, SIGHUP: used from its next connection) and the controller restarts:
    // a comes back with B; c, still on A, stays out; an agent started with B registers.
    writeFileSync(aToken, 'token-B-2222\n');
    a.signal('SIGHUP');
    await until('agent a reloaded its token', async () => /SIGHUP: configuration reloaded: .*token/.test(a.log()));
    await ctl.stop();
    ctl = await startCtl();
    await until('agent a back with token B', () => online('token-B-2222', 'a'));
    await start(await agentArgs('d', ['--token', 'token-B-2222']), /agent d serving on/, 'agent-d.log');
    await until('agent d registered with token B', () => online('token-B-2222', 'd'));
    expect(await online('token-B-2222', 'c')).to.equal(false);
    expect(c.log()).to.match(/bad authorization token/);
  });

  it('TLS: after SIGHUP new connections get the new certificate; admins and agents that trust the CA connect', async () => {
    const port = await freeLoopbackPort();
    const at = ['--controller', `127.0.0.1:${port}`];
    const ca = join(dir, 'ca');
    await tabulaOk(['certs', 'ca', '--out', ca]);
    await tabulaOk(['certs', 'issue', '--ca', ca, '--name', 'ctl', '--out', dir, '--server', '--san', '127.0.0.1']);
    const next = join(dir, 'next');
    await tabulaOk(['certs', 'issue', '--ca', ca, '--name', 'ctl', '--out', next, '--server', '--san', '127.0.0.1']);
    const crt = join(dir, 'ctl.crt');
    const key = join(dir, 'ctl.key');
    const oldFp = fingerprintOf(crt);
    const newFp = fingerprintOf(join(next, 'ctl.crt'));
    expect(newFp).to.not.equal(oldFp);
    const ctl = await start(
      ['controller', '--db', join(dir, 'tls.db'), '--listen', `127.0.0.1:${port}`, '--tls-cert', crt, '--tls-key', key],
      /controller listening on/,
      'tls-ctl.log',
    );
    const admin = (args: string[]) => tabula([...args, ...at, '--tls-ca', join(ca, 'ca.crt')]);
    expect(await servedFingerprint(port)).to.equal(oldFp);
    const agentArgs = async (name: string): Promise<string[]> => [
      'agent', ...at, '--controller-ca', join(ca, 'ca.crt'), '--name', name, '--portal', `127.0.0.1:${await freeLoopbackPort()}`, '--containers', join(dir, 'containers', '*.img'),
    ];
    await start(await agentArgs('t1'), /agent t1 serving on/, 'agent-t1.log');
    const online = async (name: string): Promise<boolean> => {
      const r = await admin(['agent', 'ls', '--json']);
      if (r.exitCode !== 0) throw new Error(describeRun(r));
      return (JSON.parse(r.stdout) as AgentRow[]).some((x) => x.name === name && x.online);
    };
    await until('agent t1 registered over TLS', () => online('t1'));

    // The new pair in place of the old files, then SIGHUP.
    copyFileSync(join(next, 'ctl.crt'), crt);
    copyFileSync(join(next, 'ctl.key'), key);
    ctl.signal('SIGHUP');
    await until('new connections get the new certificate', async () => (await servedFingerprint(port)) === newFp);
    await until('SIGHUP logged', async () => /SIGHUP: configuration reloaded: .*TLS certificate and key/.test(ctl.log()));
    const ls = await admin(['vdisk', 'ls']);
    expect(ls.exitCode, describeRun(ls)).to.equal(0);
    await start(await agentArgs('t2'), /agent t2 serving on/, 'agent-t2.log');
    await until('agent t2 registered over TLS with the new certificate', () => online('t2'));
    expect(await online('t1'), 'the agent connected before stays registered').to.equal(true);
  });
});
