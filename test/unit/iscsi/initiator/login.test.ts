// The initiator's login state machine, driven against the target's own pure
// login machine (src/iscsi/login) and against hand-made responses for the
// rejects and oddities a foreign target may produce.
import { expect } from 'chai';
import { InitiatorLogin, InitiatorLoginState, LoginRedirect, loginStatusName, parseTargetAddress, type LoginOptions, type LoginResult } from '../../../../src/iscsi/initiator/login.js';
import { TransportError } from '../../../../src/iscsi/initiator/transport.js';
import { LoginMachine, type LoginEnvironment } from '../../../../src/iscsi/login/login-machine.js';
import { Opcode, Stage, type LoginRequest, type LoginResponse } from '../../../../src/iscsi/pdu/types.js';
import { INITIATOR, ISID, TARGET, makeEnv, mapOf, md5Chap, target, text, unhex } from '../login/helpers.js';

const CHAP = { user: 'alice', secret: 'alice-secret-1' };
const MUTUAL = { user: 'target', secret: 'target-secret-2' };

function base(over: Partial<LoginOptions> = {}): LoginOptions {
  return { initiatorName: INITIATOR, targetName: TARGET, isid: ISID, ...over };
}

/** Runs both machines to the end; returns the outcome and every request the initiator sent. */
function converse(init: InitiatorLogin, env: LoginEnvironment): { result: LoginResult; requests: LoginRequest[] } {
  const machine = new LoginMachine(env);
  const requests: LoginRequest[] = [];
  let req = init.start();
  let statSN = 100;
  for (let i = 0; i < 20; i++) {
    requests.push(req);
    const step = machine.handle(req);
    const resp: LoginResponse = { ...step.response, statSN: statSN++, expCmdSN: 5, maxCmdSN: 36 };
    const next = init.receive(resp);
    if (next.kind === 'done') return { result: next.result, requests };
    req = next.pdu;
  }
  throw new Error('login did not converge');
}

function response(over: Partial<LoginResponse> & { data?: Buffer }): LoginResponse {
  return {
    opcode: Opcode.LoginResponse,
    immediate: false,
    ahs: [],
    data: Buffer.alloc(0),
    transit: false,
    cont: false,
    csg: Stage.Security,
    nsg: Stage.Security,
    versionMax: 0,
    versionActive: 0,
    isid: ISID,
    tsih: 0,
    itt: 0,
    statSN: 1,
    expCmdSN: 0,
    maxCmdSN: 0,
    statusClass: 0,
    statusDetail: 0,
    ...over,
  };
}

function expectTransport(fn: () => unknown, kind: string, re?: RegExp): void {
  try {
    fn();
  } catch (e) {
    expect(e).to.be.instanceOf(TransportError);
    expect((e as TransportError).kind, (e as Error).message).to.equal(kind);
    if (re) expect((e as Error).message).to.match(re);
    return;
  }
  throw new Error(`expected TransportError(${kind})`);
}

describe('iSCSI initiator login machine', () => {
  it('logs in without authentication and takes the negotiated values', () => {
    const init = new InitiatorLogin(base({ initialR2T: true, immediateData: false, maxRecvDataSegmentLength: 65536 }));
    const { result, requests } = converse(init, makeEnv());
    expect(init.state).to.equal(InitiatorLoginState.FullFeature);
    expect(result.tsih).to.equal(7);
    expect(result.isid).to.equal(ISID);
    const first = mapOf(requests[0]!.data);
    expect(first.get('InitiatorName')).to.equal(INITIATOR);
    expect(first.get('TargetName')).to.equal(TARGET);
    expect(first.get('AuthMethod')).to.equal('None');
    expect(requests.every((r) => r.isid === ISID && r.tsih === 0)).to.equal(true);
    const p = result.params;
    expect(p.initialR2T).to.equal(true);
    expect(p.immediateData).to.equal(false);
    expect(p.maxRecvDataSegmentLength).to.equal(65536);
    expect(p.targetMaxRecvDataSegmentLength).to.equal(262144);
    expect(p.maxBurstLength).to.equal(1048576);
    expect(p.headerDigest).to.equal(false);
    expect(p.errorRecoveryLevel).to.equal(0);
    expect(p.targetPortalGroupTag).to.equal(1);
    // ExpStatSN acknowledges the last login response.
    expect(result.expStatSN).to.equal(100 + requests.length);
    expect(result.maxCmdSN).to.equal(36);
  });

  it('negotiates CRC32C digests when asked and unsolicited data when allowed', () => {
    const { result } = converse(new InitiatorLogin(base({ headerDigest: 'CRC32C', dataDigest: 'prefer', initialR2T: false, immediateData: true })), makeEnv());
    expect(result.params.headerDigest).to.equal(true);
    expect(result.params.dataDigest).to.equal(true);
    expect(result.params.initialR2T).to.equal(false);
    expect(result.params.immediateData).to.equal(true);
    expect(result.params.firstBurstLength).to.equal(262144);
  });

  it('answers the CHAP challenge (MD5) and verifies the target for mutual CHAP', () => {
    const env = makeEnv([target({ chap: CHAP, mutualChap: MUTUAL })]);
    const init = new InitiatorLogin(base({ chap: CHAP, mutualChap: MUTUAL }), (n) => Buffer.alloc(n, 0x5a));
    const { result, requests } = converse(init, env);
    expect(result.tsih).to.equal(7);
    const withResponse = requests.map((r) => mapOf(r.data)).find((m) => m.has('CHAP_R'));
    expect(withResponse?.get('CHAP_N')).to.equal(CHAP.user);
    expect(withResponse?.get('CHAP_I')).to.equal(String(0x5a));
    expect(unhex(withResponse?.get('CHAP_C') as string).equals(Buffer.alloc(16, 0x5a))).to.equal(true);
  });

  it('computes the CHAP response as MD5(id || secret || challenge)', () => {
    const init = new InitiatorLogin(base({ chap: CHAP }));
    init.start();
    const r1 = init.receive(response({ data: text('AuthMethod=CHAP') }));
    expect(r1.kind).to.equal('send');
    if (r1.kind !== 'send') return;
    expect(mapOf(r1.pdu.data).get('CHAP_A')).to.equal('5');
    const challenge = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
    const r2 = init.receive(response({ data: text('CHAP_A=5', 'CHAP_I=17', `CHAP_C=0x${challenge.toString('hex')}`), statSN: 2 }));
    if (r2.kind !== 'send') throw new Error('expected a request');
    const keys = mapOf(r2.pdu.data);
    expect(unhex(keys.get('CHAP_R') as string).equals(md5Chap(17, CHAP.secret, challenge))).to.equal(true);
    expect(r2.pdu.transit).to.equal(true);
    expect(r2.pdu.nsg).to.equal(Stage.Operational);
    expect(r2.pdu.expStatSN).to.equal(3);
  });

  it('fails as auth with a wrong secret (the target refuses)', () => {
    const env = makeEnv([target({ chap: CHAP })]);
    expectTransport(() => converse(new InitiatorLogin(base({ chap: { user: CHAP.user, secret: 'wrong-secret-99' } })), env), 'auth', /AuthenticationFailure \(0x0201\)/);
  });

  it('fails as auth when the target wants CHAP and we have no credentials', () => {
    expectTransport(() => converse(new InitiatorLogin(base()), makeEnv([target({ chap: CHAP })])), 'auth');
  });

  it('fails as auth when the target answers mutual CHAP wrongly', () => {
    const env = makeEnv([target({ chap: CHAP, mutualChap: { user: MUTUAL.user, secret: 'another-secret-3' } })]);
    expectTransport(() => converse(new InitiatorLogin(base({ chap: CHAP, mutualChap: MUTUAL })), env), 'auth', /mutual CHAP/);
  });

  it('names the status of a login reject and maps it to a kind', () => {
    const init = new InitiatorLogin(base());
    init.start();
    expectTransport(() => init.receive(response({ statusClass: 2, statusDetail: 3 })), 'login', /NotFound \(0x0203\)/);
    expect(init.state).to.equal(InitiatorLoginState.Failed);
    const busy = new InitiatorLogin(base());
    busy.start();
    expectTransport(() => busy.receive(response({ statusClass: 3, statusDetail: 1 })), 'unreachable', /ServiceUnavailable/);
    expect(loginStatusName({ statusClass: 2, statusDetail: 0x42 })).to.equal('InitiatorError (0x0242)');
  });

  it('reports a redirection with the portal to go to', () => {
    const init = new InitiatorLogin(base());
    init.start();
    try {
      init.receive(response({ statusClass: 1, statusDetail: 1, data: text('TargetAddress=[fe80::1]:3261,2') }));
      throw new Error('expected a redirect');
    } catch (e) {
      expect(e).to.be.instanceOf(LoginRedirect);
      expect((e as LoginRedirect).to).to.deep.equal({ host: 'fe80::1', port: 3261 });
      expect((e as Error).message).to.match(/TargetMovedTemporarily/);
    }
    expect(parseTargetAddress('10.0.0.2')).to.deep.equal({ host: '10.0.0.2', port: 3260 });
    expect(parseTargetAddress('st1.example:3262,1')).to.deep.equal({ host: 'st1.example', port: 3262 });
    expect(parseTargetAddress('host:99999')).to.equal(undefined);
  });

  it('asks for the rest of a text the target continues (C bit)', () => {
    const init = new InitiatorLogin(base());
    init.start();
    const r = init.receive(response({ cont: true, data: Buffer.from('AuthMeth') }));
    if (r.kind !== 'send') throw new Error('expected a request');
    expect(r.pdu.data.length).to.equal(0);
    expect(r.pdu.transit).to.equal(false);
    const r2 = init.receive(response({ data: Buffer.from('od=None\0'), transit: true, nsg: Stage.Operational, statSN: 2 }));
    if (r2.kind !== 'send') throw new Error('expected a request');
    expect(r2.pdu.csg).to.equal(Stage.Operational);
    expect(mapOf(r2.pdu.data).get('ErrorRecoveryLevel')).to.equal('0');
  });

  it('answers keys the target offers on its own and reaches full feature', () => {
    const init = new InitiatorLogin(base());
    init.start();
    const r = init.receive(response({ data: text('AuthMethod=None'), transit: true, nsg: Stage.Operational }));
    if (r.kind !== 'send') throw new Error('expected a request');
    const opResp = { csg: Stage.Operational, nsg: Stage.FullFeature, statSN: 2, tsih: 9 };
    const r2 = init.receive(response({ ...opResp, data: text('HeaderDigest=None', 'DataDigest=None', 'MaxRecvDataSegmentLength=8192', 'TaskReporting=RFC3720', 'MaxBurstLength=65536'), transit: false }));
    if (r2.kind !== 'send') throw new Error('expected a request');
    expect(mapOf(r2.pdu.data).get('TaskReporting')).to.equal('NotUnderstood');
    const r3 = init.receive(response({ ...opResp, statSN: 3, transit: true }));
    if (r3.kind !== 'done') throw new Error('expected the end of login');
    expect(r3.result.params.maxBurstLength).to.equal(65536);
    expect(r3.result.params.firstBurstLength).to.equal(65536);
    expect(r3.result.params.targetMaxRecvDataSegmentLength).to.equal(8192);
    expect(r3.result.tsih).to.equal(9);
  });

  it('refuses a target that insists on error recovery, a foreign ITT and a refused CRC32C', () => {
    const toOperational = (o: Partial<LoginOptions> = {}): InitiatorLogin => {
      const init = new InitiatorLogin(base(o));
      init.start();
      init.receive(response({ data: text('AuthMethod=None'), transit: true, nsg: Stage.Operational }));
      return init;
    };
    const fin = { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true, statSN: 2, tsih: 3 };
    expectTransport(() => toOperational().receive(response({ ...fin, data: text('ErrorRecoveryLevel=1') })), 'protocol', /ErrorRecoveryLevel/);
    expectTransport(() => toOperational({ headerDigest: 'CRC32C' }).receive(response({ ...fin, data: text('HeaderDigest=None') })), 'login', /CRC32C/);
    expectTransport(() => toOperational().receive(response({ ...fin, itt: 77 })), 'protocol', /ITT/);
    expectTransport(() => toOperational().receive(response({ ...fin, tsih: 0 })), 'protocol', /TSIH 0/);
  });

  it('runs a discovery login without a target name', () => {
    const { result, requests } = converse(new InitiatorLogin(base({ sessionType: 'Discovery', targetName: undefined })), makeEnv());
    expect(mapOf(requests[0]!.data).get('SessionType')).to.equal('Discovery');
    expect(mapOf(requests[0]!.data).has('TargetName')).to.equal(false);
    expect(result.tsih).to.not.equal(undefined);
  });
});
