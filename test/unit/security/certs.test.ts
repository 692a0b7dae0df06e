// tabula certs: a CA and the certificates it signs, checked with node's own
// X509Certificate (not the library that made them), then used for real:
// a controller with mutual TLS on loopback, admin calls with and without a
// client certificate, and new certificate files taken while running.
import { expect } from 'chai';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AdminSession, CliError } from '../../../src/cli/admin-client.js';
import { startController, type ControllerHandle } from '../../../src/controller/daemon.js';
import { startAgent } from '../../../src/agent/index.js';
import { CertError, createCa, issueCert } from '../../../src/security/certs.js';
import { checkTlsMaterial } from '../../../src/security/tls.js';

const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

const pem = (path: string): X509Certificate => new X509Certificate(readFileSync(path));
const mode = (path: string): number => statSync(path).mode & 0o777;

describe('security: tabula certs', function () {
  this.timeout(30_000);
  let dir: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-certs-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('makes a CA: a self-signed CA certificate and a 0600 key', async () => {
    const ca = await createCa({ out: join(dir, 'ca') });
    expect(ca.cert).to.equal(join(dir, 'ca', 'ca.crt'));
    const c = pem(ca.cert);
    expect(c.ca).to.equal(true);
    expect(c.subject).to.equal('CN=Tabula CA');
    expect(c.checkIssued(c)).to.equal(true);
    expect(c.verify(c.publicKey)).to.equal(true);
    expect(mode(ca.key)).to.equal(0o600);
  });

  it('issues server and client certificates that chain to the CA, with the asked names and usages', async () => {
    const ca = pem(join(dir, 'ca', 'ca.crt'));
    const server = await issueCert({ ca: join(dir, 'ca'), name: 'ctl', out: dir, usage: 'server', sans: ['ctl.example.net', '192.0.2.7'] });
    const s = pem(server.cert);
    expect(s.ca).to.equal(false);
    expect(s.verify(ca.publicKey)).to.equal(true);
    expect(ca.checkIssued(s) || s.checkIssued(ca)).to.equal(true);
    expect(s.keyUsage).to.deep.equal([SERVER_AUTH]);
    expect(s.checkHost('ctl.example.net')).to.equal('ctl.example.net');
    expect(s.checkIP('192.0.2.7')).to.equal('192.0.2.7');
    // Explicit SANs replace the loopback defaults.
    expect(s.checkIP('127.0.0.1')).to.equal(undefined);
    expect(mode(server.key)).to.equal(0o600);

    const loop = pem((await issueCert({ ca: join(dir, 'ca'), name: 'local-ctl', out: dir, usage: 'server' })).cert);
    expect(loop.checkIP('127.0.0.1')).to.equal('127.0.0.1');
    expect(loop.checkHost('localhost')).to.equal('localhost');

    const client = pem((await issueCert({ ca: join(dir, 'ca'), name: 'admin', out: dir, usage: 'client' })).cert);
    expect(client.keyUsage).to.deep.equal([CLIENT_AUTH]);
    expect(client.subject).to.equal('CN=admin');
    expect(client.verify(ca.publicKey)).to.equal(true);

    const both = pem((await issueCert({ ca: join(dir, 'ca'), name: 'agent1', out: dir })).cert);
    expect(both.keyUsage).to.have.members([SERVER_AUTH, CLIENT_AUTH]);
    // The key matches its certificate (TLS would refuse them otherwise).
    checkTlsMaterial({ cert: readFileSync(join(dir, 'agent1.crt')), key: readFileSync(join(dir, 'agent1.key')) }, 'agent1');
  });

  it('refuses to overwrite without force, and replaces with it', async () => {
    const before = readFileSync(join(dir, 'admin.crt'), 'utf8');
    await issueCert({ ca: join(dir, 'ca'), name: 'admin', out: dir, usage: 'client' }).then(
      () => expect.fail('overwrote admin.crt'),
      (e: Error) => {
        expect(e).to.be.instanceOf(CertError);
        expect(e.message).to.match(/admin\.crt exists: refusing to overwrite it \(give --force/);
      },
    );
    await createCa({ out: join(dir, 'ca') }).then(
      () => expect.fail('overwrote the CA'),
      (e: Error) => expect(e.message).to.match(/ca\.crt exists/),
    );
    writeFileSync(join(dir, 'admin.key'), 'x', { mode: 0o644 });
    await issueCert({ ca: join(dir, 'ca'), name: 'admin', out: dir, usage: 'client', force: true });
    expect(readFileSync(join(dir, 'admin.crt'), 'utf8')).to.not.equal(before);
    expect(mode(join(dir, 'admin.key'))).to.equal(0o600);
  });

  it('names what is wrong: a bad SAN, a bad name, a missing CA, a key that is not the CA key', async () => {
    const fails = async (p: Promise<unknown>, re: RegExp): Promise<void> => {
      await p.then(
        () => expect.fail(`expected ${re}`),
        (e: Error) => {
          expect(e).to.be.instanceOf(CertError);
          expect(e.message).to.match(re);
        },
      );
    };
    await fails(issueCert({ ca: join(dir, 'ca'), name: 'x', out: dir, sans: ['bad host!'] }), /bad --san 'bad host!'/);
    await fails(issueCert({ ca: join(dir, 'ca'), name: 'a/b', out: dir }), /bad certificate name 'a\/b'/);
    await fails(issueCert({ ca: join(dir, 'none'), name: 'x', out: dir }), /cannot read CA file .*none\/ca\.crt/);
    await createCa({ out: join(dir, 'other') });
    writeFileSync(join(dir, 'mixed-ca.crt'), readFileSync(join(dir, 'ca', 'ca.crt')));
    const mixed = mkdtempSync(join(dir, 'mixed-'));
    writeFileSync(join(mixed, 'ca.crt'), readFileSync(join(dir, 'ca', 'ca.crt')));
    writeFileSync(join(mixed, 'ca.key'), readFileSync(join(dir, 'other', 'ca.key')));
    await fails(issueCert({ ca: mixed, name: 'x', out: dir }), /ca\.key is not the key of .*ca\.crt/);
    await fails(issueCert({ ca: join(dir, 'ca'), name: 'x', out: dir, days: 0 }), /bad validity 0 days/);
  });

  describe('a controller with mutual TLS on loopback', () => {
    let ctl: ControllerHandle;
    const f = (name: string): string => join(dir, name);

    before(async () => {
      await issueCert({ ca: f('ca'), name: 'tls-ctl', out: dir, usage: 'server' });
      await issueCert({ ca: f('ca'), name: 'tls-admin', out: dir, usage: 'client' });
      await issueCert({ ca: f('other'), name: 'stranger', out: dir, usage: 'client' });
      ctl = await startController({
        dbPath: f('tls.db'),
        listen: '127.0.0.1:0',
        tls: { cert: readFileSync(f('tls-ctl.crt')), key: readFileSync(f('tls-ctl.key')), ca: readFileSync(f('ca/ca.crt')) },
      });
    });
    after(async () => ctl?.close());

    const call = async (opts: { ca?: string; cert?: string; key?: string }): Promise<string> => {
      const s = new AdminSession({ controller: ctl.address, 'tls-ca': opts.ca, 'tls-cert': opts.cert, 'tls-key': opts.key }, 10_000);
      try {
        const r = await s.call('ListVdisks', {});
        return `ok ${r.vdisks.length}`;
      } catch (e) {
        expect(e).to.be.instanceOf(CliError);
        return (e as Error).message;
      } finally {
        s.close();
      }
    };

    it('answers an admin call that presents a client certificate signed by its CA', async () => {
      expect(await call({ ca: f('ca/ca.crt'), cert: f('tls-admin.crt'), key: f('tls-admin.key') })).to.equal('ok 0');
    });

    it('refuses a call without a client certificate, with one from another CA, and a plain one', async () => {
      expect(await call({ ca: f('ca/ca.crt') })).to.match(/(refused|does it take) our client certificate/);
      expect(await call({ ca: f('ca/ca.crt'), cert: f('stranger.crt'), key: f('stranger.key') })).to.match(/(refused|does it take) our client certificate/);
      expect(await call({})).to.match(/does it want TLS\? give --tls-ca/);
    });

    it('an admin that does not trust the CA refuses the controller', async () => {
      expect(await call({ ca: f('other/ca.crt'), cert: f('tls-admin.crt'), key: f('tls-admin.key') })).to.match(/certificate we do not trust/);
    });

    it('an agent registers over mutual TLS with its client certificate; one without is kept out', async () => {
      const common = { controller: ctl.address, portals: ['127.0.0.1:0'], containers: [join(dir, 'no-containers', '*')] };
      const ok = await startAgent({ ...common, name: 'tls-a1', tls: { ca: readFileSync(f('ca/ca.crt')), cert: readFileSync(f('tls-admin.crt')), key: readFileSync(f('tls-admin.key')) } });
      const no = await startAgent({ ...common, name: 'tls-a2', tls: { ca: readFileSync(f('ca/ca.crt')) } });
      try {
        const online = (name: string): boolean => ctl.admin.ListAgents({}).agents.some((a) => a.name === name && a.online);
        for (let i = 0; i < 100 && !online('tls-a1'); i++) await new Promise((r) => setTimeout(r, 100));
        expect(online('tls-a1')).to.equal(true);
        expect(online('tls-a2')).to.equal(false);
        expect(ok.reload({ tls: { ca: readFileSync(f('ca/ca.crt')) } }).needsRestart).to.deep.equal(['TLS: dropping the client certificate takes a restart']);
        expect(ok.reload({ token: 'new', tls: { ca: readFileSync(f('ca/ca.crt')), cert: readFileSync(f('tls-admin.crt')), key: readFileSync(f('tls-admin.key')) } })).to.deep.equal({
          applied: ['token (next connection to the controller)'],
          needsRestart: [],
        });
      } finally {
        await ok.close();
        await no.close();
      }
    });

    it('reload: new certificate files serve new connections; unusable ones change nothing', async () => {
      // A key that is not the certificate's: refused, and the old files keep working.
      expect(() =>
        ctl.reload({ tls: { cert: readFileSync(f('tls-ctl.crt')), key: readFileSync(f('tls-admin.key')), ca: readFileSync(f('ca/ca.crt')) } }),
      ).to.throw(/controller TLS/);
      expect(await call({ ca: f('ca/ca.crt'), cert: f('tls-admin.crt'), key: f('tls-admin.key') })).to.equal('ok 0');
      // Turning client certificates off is not a reload.
      const off = ctl.reload({ tls: { cert: readFileSync(f('tls-ctl.crt')), key: readFileSync(f('tls-ctl.key')) } });
      expect(off.applied).to.deep.equal([]);
      expect(off.needsRestart[0]).to.match(/client certificates off takes a restart/);
      // Now client certificates must come from the other CA.
      const r = ctl.reload({ tls: { cert: readFileSync(f('tls-ctl.crt')), key: readFileSync(f('tls-ctl.key')), ca: readFileSync(f('other/ca.crt')) } });
      expect(r.applied).to.have.length(1);
      expect(await call({ ca: f('ca/ca.crt'), cert: f('stranger.crt'), key: f('stranger.key') })).to.equal('ok 0');
      expect(await call({ ca: f('ca/ca.crt'), cert: f('tls-admin.crt'), key: f('tls-admin.key') })).to.match(/(refused|does it take) our client certificate/);
    });
  });
});
