import { expect } from 'chai';
import { LoginMachine, LoginState, type LoginStep } from '../../../../src/iscsi/login/login-machine.js';
import { Opcode, Stage } from '../../../../src/iscsi/pdu/types.js';
import {
  INITIATOR,
  ISID,
  LIMITS,
  OPEN_ISCSI_OP_NORMAL,
  TARGET,
  libiscsiOpKeys,
  loginReq,
  makeEnv,
  mapOf,
  md5Chap,
  pairsOf,
  target,
  text,
  unhex,
  type ReqOpts,
  type TestEnv,
} from './helpers.js';

const CHAP = { user: 'alice', secret: 'initiator-secret-12' };
const MUTUAL = { user: 'tabula', secret: 'target-secret-3456' };

/** Keys open-iscsi accepts in a security-stage response (usr/login.c get_security_text_keys + auth keys). */
const OPEN_ISCSI_SECURITY_KEYS = new Set(['TargetAlias', 'TargetAddress', 'TargetPortalGroupTag', 'AuthMethod', 'CHAP_A', 'CHAP_I', 'CHAP_C', 'CHAP_N', 'CHAP_R']);
/** Keys open-iscsi accepts in an operational-stage response (get_op_params_text_keys). */
const OPEN_ISCSI_OP_KEYS = new Set([
  'TargetAlias', 'TargetAddress', 'TargetPortalGroupTag', 'InitialR2T', 'ImmediateData', 'MaxRecvDataSegmentLength',
  'FirstBurstLength', 'MaxBurstLength', 'HeaderDigest', 'DataDigest', 'DefaultTime2Wait', 'DefaultTime2Retain',
  'OFMarker', 'OFMarkInt', 'IFMarker', 'IFMarkInt', 'DataPDUInOrder', 'DataSequenceInOrder', 'MaxOutstandingR2T',
  'MaxConnections', 'ErrorRecoveryLevel',
]);

function ok(step: LoginStep, csg: Stage, transit: boolean, nsg?: Stage): Map<string, string> {
  const r = step.response;
  expect([r.statusClass, r.statusDetail], `status, data ${JSON.stringify(r.data.toString())}`).to.deep.equal([0, 0]);
  expect(r.opcode).to.equal(Opcode.LoginResponse);
  expect(r.csg).to.equal(csg);
  expect(r.transit).to.equal(transit);
  if (transit) expect(r.nsg).to.equal(nsg);
  expect(r.cont).to.equal(false);
  expect(r.versionMax).to.equal(0);
  expect(r.versionActive).to.equal(0);
  expect(r.isid).to.equal(ISID);
  expect(step.close).to.not.equal(true);
  return mapOf(r.data);
}

function failed(step: LoginStep, statusClass: number, statusDetail: number): void {
  const r = step.response;
  expect([r.statusClass, r.statusDetail]).to.deep.equal([statusClass, statusDetail]);
  expect(r.transit).to.equal(false);
  expect(r.data.length).to.equal(0);
  expect(step.close).to.equal(true);
  expect(step.outcome).to.equal(undefined);
}

function first(...extra: string[]): string[] {
  return [`InitiatorName=${INITIATOR}`, `TargetName=${TARGET}`, 'SessionType=Normal', ...extra];
}

function send(m: LoginMachine, o: ReqOpts & { keys?: string[] }): LoginStep {
  return m.handle(loginReq({ ...o, data: o.keys ? text(...o.keys) : o.data }));
}

/** Runs the CHAP legs (after AuthMethod=CHAP was agreed) the way libiscsi does; returns the last step. */
function chapLegs(m: LoginMachine, cred: { user: string; secret: string }, mutual?: { id: number; challenge: Buffer }): LoginStep {
  const s2 = send(m, { csg: Stage.Security, nsg: Stage.Operational, keys: ['CHAP_A=5'] });
  const c = ok(s2, Stage.Security, false);
  expect(c.get('CHAP_A')).to.equal('5');
  const id = Number(c.get('CHAP_I'));
  const challenge = unhex(c.get('CHAP_C') as string);
  expect(challenge.length).to.be.at.least(16);
  const keys = [`CHAP_N=${cred.user}`, `CHAP_R=0x${md5Chap(id, cred.secret, challenge).toString('hex')}`];
  if (mutual) keys.push(`CHAP_I=${mutual.id}`, `CHAP_C=0x${mutual.challenge.toString('hex')}`);
  return send(m, { csg: Stage.Security, nsg: Stage.Operational, transit: true, keys });
}

describe('iscsi/login/login-machine', () => {
  let env: TestEnv;
  beforeEach(() => {
    env = makeEnv();
  });

  describe('libiscsi conversations', () => {
    it('normal session without authentication: one operational PDU straight to full feature', () => {
      const m = new LoginMachine(env);
      const step = send(m, { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true, itt: 0x1234, keys: ['InitiatorAlias=host', ...libiscsiOpKeys('Normal')] });
      const keys = ok(step, Stage.Operational, true, Stage.FullFeature);
      expect(pairsOf(step.response.data)[0]).to.deep.equal(['TargetPortalGroupTag', '1']);
      expect(Object.fromEntries(keys)).to.deep.equal({
        TargetPortalGroupTag: '1',
        HeaderDigest: 'None',
        DataDigest: 'None',
        InitialR2T: 'No',
        ImmediateData: 'Yes',
        MaxBurstLength: '1048576',
        FirstBurstLength: '262144',
        DefaultTime2Wait: '2',
        DefaultTime2Retain: '0',
        MaxOutstandingR2T: '1',
        ErrorRecoveryLevel: '0',
        IFMarker: 'No',
        OFMarker: 'No',
        MaxConnections: '1',
        DataPDUInOrder: 'Yes',
        DataSequenceInOrder: 'Yes',
        MaxRecvDataSegmentLength: '262144',
      });
      expect(step.response.tsih).to.equal(7);
      expect(step.response.itt).to.equal(0x1234);
      expect(step.response.statSN).to.equal(0);
      expect(env.admitted).to.deep.equal([{ sessionType: 'Normal', initiatorName: INITIATOR, targetName: TARGET, isid: ISID, tsih: 0, cid: 0 }]);
      expect(step.outcome?.tsih).to.equal(7);
      expect(step.outcome?.isid).to.equal(ISID);
      expect(step.outcome?.cid).to.equal(0);
      expect(step.outcome?.target?.name).to.equal(TARGET);
      expect(step.outcome?.params).to.deep.include({
        sessionType: 'Normal',
        initiatorName: INITIATOR,
        initiatorAlias: 'host',
        targetName: TARGET,
        initiatorMaxRecvDataSegmentLength: 262144,
        targetMaxRecvDataSegmentLength: 262144,
        maxBurstLength: 1048576,
        firstBurstLength: 262144,
        initialR2T: false,
        immediateData: true,
        headerDigest: false,
        dataDigest: false,
      });
      expect(m.state).to.equal(LoginState.FullFeature);
    });

    it('normal session with CHAP (libiscsi repeats its identity keys in the operational PDU)', () => {
      const m = new LoginMachine(makeEnv([target({ chap: CHAP })]));
      const s1 = send(m, { csg: Stage.Security, nsg: Stage.Operational, transit: true, keys: first('AuthMethod=CHAP,None') });
      const k1 = ok(s1, Stage.Security, false);
      expect(pairsOf(s1.response.data)).to.deep.equal([
        ['TargetPortalGroupTag', '1'],
        ['AuthMethod', 'CHAP'],
      ]);
      expect(k1.size).to.equal(2);
      expect(s1.response.tsih).to.equal(0);
      const s3 = chapLegs(m, CHAP);
      ok(s3, Stage.Security, true, Stage.Operational);
      expect(s3.response.data.length).to.equal(0);
      const s4 = send(m, { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true, keys: libiscsiOpKeys('Normal') });
      ok(s4, Stage.Operational, true, Stage.FullFeature);
      expect(s4.outcome?.params.initiatorName).to.equal(INITIATOR);
    });

    it('normal session with mutual CHAP: the final security response carries our CHAP_N/CHAP_R', () => {
      const m = new LoginMachine(makeEnv([target({ chap: CHAP, mutualChap: MUTUAL })]));
      ok(send(m, { csg: Stage.Security, nsg: Stage.Operational, transit: true, keys: first('AuthMethod=CHAP,None') }), Stage.Security, false);
      const theirs = Buffer.alloc(32, 0x5a);
      const s3 = chapLegs(m, CHAP, { id: 1, challenge: theirs });
      const k3 = ok(s3, Stage.Security, true, Stage.Operational);
      expect(k3.get('CHAP_N')).to.equal('tabula');
      expect(unhex(k3.get('CHAP_R') as string).equals(md5Chap(1, MUTUAL.secret, theirs))).to.equal(true);
      const s4 = send(m, { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true, keys: libiscsiOpKeys('Normal') });
      expect(s4.outcome).to.not.equal(undefined);
    });

    it('discovery session: session-only keys answered Irrelevant, no TargetPortalGroupTag', () => {
      const m = new LoginMachine(env);
      const step = send(m, { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true, keys: libiscsiOpKeys('Discovery') });
      const keys = ok(step, Stage.Operational, true, Stage.FullFeature);
      expect(keys.has('TargetPortalGroupTag')).to.equal(false);
      for (const k of ['InitialR2T', 'ImmediateData', 'MaxBurstLength', 'FirstBurstLength', 'MaxOutstandingR2T', 'MaxConnections', 'DataPDUInOrder', 'DataSequenceInOrder']) {
        expect(keys.get(k), k).to.equal('Irrelevant');
      }
      expect(keys.get('MaxRecvDataSegmentLength')).to.equal('262144');
      expect(step.outcome?.params.sessionType).to.equal('Discovery');
      expect(step.outcome?.target).to.equal(undefined);
      expect(env.admitted[0]).to.deep.equal({ sessionType: 'Discovery', initiatorName: INITIATOR, isid: ISID, tsih: 0, cid: 0 });
    });
  });

  describe('open-iscsi conversations', () => {
    it('normal session: security (AuthMethod=None) then operational', () => {
      const m = new LoginMachine(makeEnv([target({ alias: 'disk zero' })]));
      const s1 = send(m, { csg: Stage.Security, nsg: Stage.Operational, transit: true, keys: [`InitiatorName=${INITIATOR}`, 'InitiatorAlias=host', `TargetName=${TARGET}`, 'SessionType=Normal', 'AuthMethod=None'] });
      const k1 = ok(s1, Stage.Security, true, Stage.Operational);
      expect(Object.fromEntries(k1)).to.deep.equal({ TargetAlias: 'disk zero', TargetPortalGroupTag: '1', AuthMethod: 'None' });
      for (const k of k1.keys()) expect(OPEN_ISCSI_SECURITY_KEYS.has(k), k).to.equal(true);
      expect(s1.response.tsih).to.equal(0);

      const s2 = send(m, { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true, keys: OPEN_ISCSI_OP_NORMAL });
      const k2 = ok(s2, Stage.Operational, true, Stage.FullFeature);
      for (const k of k2.keys()) expect(OPEN_ISCSI_OP_KEYS.has(k), k).to.equal(true);
      expect(k2.get('MaxConnections')).to.equal('1');
      expect(k2.get('MaxOutstandingR2T')).to.equal('1');
      expect(k2.get('ErrorRecoveryLevel')).to.equal('0');
      expect(k2.get('MaxRecvDataSegmentLength')).to.equal('262144');
      expect(k2.has('TargetPortalGroupTag')).to.equal(false);
      expect(s2.response.tsih).to.equal(7);
      expect(s2.outcome?.params.initiatorAlias).to.equal('host');
    });

    it('discovery session with default MaxRecvDataSegmentLength goes from security straight to full feature', () => {
      const m = new LoginMachine(env);
      const s = send(m, { csg: Stage.Security, nsg: Stage.FullFeature, transit: true, keys: [`InitiatorName=${INITIATOR}`, 'SessionType=Discovery', 'AuthMethod=None'] });
      expect(Object.fromEntries(ok(s, Stage.Security, true, Stage.FullFeature))).to.deep.equal({ AuthMethod: 'None' });
      expect(s.outcome?.params).to.include({ sessionType: 'Discovery', targetMaxRecvDataSegmentLength: 8192, initiatorMaxRecvDataSegmentLength: 8192 });
    });

    it('the target stops at the operational stage when it must declare a MaxRecvDataSegmentLength below 8192', () => {
      const m = new LoginMachine(makeEnv([target()], { limits: { ...LIMITS, maxRecvDataSegmentLength: 4096 } }));
      const s = send(m, { csg: Stage.Security, nsg: Stage.FullFeature, transit: true, keys: [`InitiatorName=${INITIATOR}`, 'SessionType=Discovery', 'AuthMethod=None'] });
      ok(s, Stage.Security, true, Stage.Operational);
      expect(s.outcome).to.equal(undefined);
      const s2 = send(m, { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true });
      expect(ok(s2, Stage.Operational, true, Stage.FullFeature).get('MaxRecvDataSegmentLength')).to.equal('4096');
      expect(s2.outcome?.params.targetMaxRecvDataSegmentLength).to.equal(4096);
    });

    it('discovery session through the operational stage', () => {
      const m = new LoginMachine(env);
      ok(send(m, { csg: Stage.Security, nsg: Stage.Operational, transit: true, keys: [`InitiatorName=${INITIATOR}`, 'SessionType=Discovery', 'AuthMethod=None'] }), Stage.Security, true, Stage.Operational);
      const s2 = send(m, {
        csg: Stage.Operational,
        nsg: Stage.FullFeature,
        transit: true,
        keys: ['HeaderDigest=None', 'DataDigest=None', 'DefaultTime2Wait=2', 'DefaultTime2Retain=0', 'IFMarker=No', 'OFMarker=No', 'ErrorRecoveryLevel=0', 'MaxRecvDataSegmentLength=32768'],
      });
      const k = ok(s2, Stage.Operational, true, Stage.FullFeature);
      expect(Object.fromEntries(k)).to.deep.equal({
        HeaderDigest: 'None',
        DataDigest: 'None',
        DefaultTime2Wait: '2',
        DefaultTime2Retain: '0',
        IFMarker: 'No',
        OFMarker: 'No',
        ErrorRecoveryLevel: '0',
        MaxRecvDataSegmentLength: '262144',
      });
      expect(s2.outcome?.params.initiatorMaxRecvDataSegmentLength).to.equal(32768);
    });

    it('mutual CHAP with T=0 on the response leg, then an empty PDU to leave the stage', () => {
      const m = new LoginMachine(makeEnv([target({ chap: CHAP, mutualChap: MUTUAL })]));
      ok(send(m, { csg: Stage.Security, nsg: Stage.Security, keys: first('AuthMethod=CHAP') }), Stage.Security, false);
      const c = ok(send(m, { csg: Stage.Security, nsg: Stage.Security, keys: ['CHAP_A=5'] }), Stage.Security, false);
      const id = Number(c.get('CHAP_I'));
      const ch = unhex(c.get('CHAP_C') as string);
      const theirs = Buffer.from('0123456789abcdef0123456789abcdef', 'hex');
      const s3 = send(m, {
        csg: Stage.Security,
        keys: [`CHAP_N=${CHAP.user}`, `CHAP_R=0b${md5Chap(id, CHAP.secret, ch).toString('base64')}`, 'CHAP_I=200', `CHAP_C=0b${theirs.toString('base64')}`],
      });
      const k3 = ok(s3, Stage.Security, false);
      expect(unhex(k3.get('CHAP_R') as string).equals(md5Chap(200, MUTUAL.secret, theirs))).to.equal(true);
      ok(send(m, { csg: Stage.Security, nsg: Stage.Operational, transit: true }), Stage.Security, true, Stage.Operational);
      const s5 = send(m, { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true, keys: OPEN_ISCSI_OP_NORMAL });
      expect(s5.outcome?.tsih).to.equal(7);
    });
  });

  describe('stages and transit', () => {
    it('the target transits only when asked; MaxRecvDataSegmentLength is declared once', () => {
      const m = new LoginMachine(env);
      const s1 = send(m, { csg: Stage.Operational, keys: first('HeaderDigest=CRC32C', 'MaxRecvDataSegmentLength=65536') });
      const k1 = ok(s1, Stage.Operational, false);
      expect(k1.get('HeaderDigest')).to.equal('CRC32C');
      expect(k1.get('MaxRecvDataSegmentLength')).to.equal('262144');
      expect(s1.response.nsg).to.equal(Stage.Security);
      const s2 = send(m, { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true, keys: ['DataDigest=CRC32C'] });
      const k2 = ok(s2, Stage.Operational, true, Stage.FullFeature);
      expect(Object.fromEntries(k2)).to.deep.equal({ DataDigest: 'CRC32C' });
      expect(s2.outcome?.params).to.include({ headerDigest: true, dataDigest: true, initiatorMaxRecvDataSegmentLength: 65536 });
    });

    it('offers keys the initiator left at a default we cannot accept, then completes once answered', () => {
      const m = new LoginMachine(makeEnv([target()], { limits: { ...LIMITS, immediateData: false } }));
      const s1 = send(m, { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true, keys: first('InitialR2T=Yes') });
      const k1 = ok(s1, Stage.Operational, false);
      expect(k1.get('ImmediateData')).to.equal('No');
      expect(s1.outcome).to.equal(undefined);
      const s2 = send(m, { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true, keys: ['ImmediateData=No'] });
      ok(s2, Stage.Operational, true, Stage.FullFeature);
      expect(s2.outcome?.params.immediateData).to.equal(false);
    });

    it('an offer left unanswered fails the login', () => {
      const m = new LoginMachine(makeEnv([target()], { limits: { ...LIMITS, immediateData: false } }));
      ok(send(m, { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true, keys: first() }), Stage.Operational, false);
      failed(send(m, { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true }), 2, 0);
    });

    it('does not leave the security stage in the middle of CHAP even when T is set', () => {
      const m = new LoginMachine(makeEnv([target({ chap: CHAP })]));
      ok(send(m, { csg: Stage.Security, nsg: Stage.Operational, transit: true, keys: first('AuthMethod=CHAP,None') }), Stage.Security, false);
      ok(send(m, { csg: Stage.Security, nsg: Stage.Operational, transit: true, keys: ['CHAP_A=5'] }), Stage.Security, false);
    });

    it('continued (C bit) requests get empty responses until the last piece', () => {
      const m = new LoginMachine(env);
      const whole = text(...first('AuthMethod=None'));
      const r1 = send(m, { csg: Stage.Security, cont: true, data: whole.subarray(0, 20), itt: 9 });
      const r2 = send(m, { csg: Stage.Security, cont: true, data: whole.subarray(20, 61), itt: 9 });
      for (const r of [r1, r2]) {
        ok(r, Stage.Security, false);
        expect(r.response.data.length).to.equal(0);
        expect(r.response.itt).to.equal(9);
      }
      const r3 = send(m, { csg: Stage.Security, nsg: Stage.Operational, transit: true, data: whole.subarray(61), itt: 9 });
      expect(Object.fromEntries(ok(r3, Stage.Security, true, Stage.Operational))).to.deep.equal({ TargetPortalGroupTag: '1', AuthMethod: 'None' });
    });

    it('a target with CHAP and one without, on the same portal', () => {
      const other = 'iqn.2026-11.org.tabula:open';
      const e = makeEnv([target({ chap: CHAP }), target({ name: other })]);
      const m = new LoginMachine(e);
      const s = send(m, { csg: Stage.Security, nsg: Stage.Operational, transit: true, keys: [`InitiatorName=${INITIATOR}`, `TargetName=${other}`, 'AuthMethod=CHAP,None'] });
      expect(ok(s, Stage.Security, true, Stage.Operational).get('AuthMethod')).to.equal('None');
    });

    it('X- keys in the security stage are NotUnderstood', () => {
      const m = new LoginMachine(env);
      const s = send(m, { csg: Stage.Security, keys: first('X-com.example.foo=1', 'AuthMethod=None') });
      expect(ok(s, Stage.Security, false).get('X-com.example.foo')).to.equal('NotUnderstood');
    });

    it('discovery CHAP applies to discovery sessions', () => {
      const e = makeEnv([target()], { discoveryAuth: { chap: CHAP } });
      failed(send(new LoginMachine(e), { csg: Stage.Security, nsg: Stage.FullFeature, transit: true, keys: [`InitiatorName=${INITIATOR}`, 'SessionType=Discovery', 'AuthMethod=None'] }), 2, 1);
      const m = new LoginMachine(e);
      expect(ok(send(m, { csg: Stage.Security, nsg: Stage.FullFeature, transit: true, keys: [`InitiatorName=${INITIATOR}`, 'SessionType=Discovery', 'AuthMethod=CHAP'] }), Stage.Security, false).get('AuthMethod')).to.equal('CHAP');
      const s = chapLegs(m, CHAP);
      ok(s, Stage.Security, true, Stage.Operational);
    });
  });

  describe('errors', () => {
    it('02/07 when InitiatorName is missing', () => {
      failed(send(new LoginMachine(env), { csg: Stage.Security, keys: [`TargetName=${TARGET}`, 'AuthMethod=None'] }), 2, 7);
    });

    it('02/07 when a normal session has no TargetName', () => {
      failed(send(new LoginMachine(env), { csg: Stage.Security, keys: [`InitiatorName=${INITIATOR}`, 'AuthMethod=None'] }), 2, 7);
    });

    it('02/03 for an unknown target', () => {
      failed(send(new LoginMachine(env), { csg: Stage.Security, keys: [`InitiatorName=${INITIATOR}`, 'TargetName=iqn.2000-01.com.nowhere:x'] }), 2, 3);
    });

    it('02/02 when the initiator is not on the target ACL; ACL match ignores case', () => {
      const e = makeEnv([target({ allowedInitiators: ['iqn.2026-01.org.example:other'] })]);
      failed(send(new LoginMachine(e), { csg: Stage.Operational, keys: first() }), 2, 2);
      const e2 = makeEnv([target({ allowedInitiators: [INITIATOR.toUpperCase()] })]);
      ok(send(new LoginMachine(e2), { csg: Stage.Operational, keys: first() }), Stage.Operational, false);
    });

    it('02/05 when version 0 is not in the initiator range', () => {
      const step = send(new LoginMachine(env), { csg: Stage.Operational, versionMin: 1, versionMax: 2, keys: first() });
      failed(step, 2, 5);
      expect(step.response.versionMax).to.equal(0);
      expect(step.response.versionActive).to.equal(0);
    });

    it('02/09 for an unknown SessionType', () => {
      failed(send(new LoginMachine(env), { csg: Stage.Operational, keys: [`InitiatorName=${INITIATOR}`, 'SessionType=Bogus'] }), 2, 9);
    });

    describe('authentication failures (02/01)', () => {
      const chapEnv = () => makeEnv([target({ chap: CHAP })]);
      it('CHAP required, initiator offers only None', () => {
        failed(send(new LoginMachine(chapEnv()), { csg: Stage.Security, nsg: Stage.Operational, transit: true, keys: first('AuthMethod=None') }), 2, 1);
      });
      it('CHAP required, initiator skips the security stage', () => {
        failed(send(new LoginMachine(chapEnv()), { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true, keys: libiscsiOpKeys('Normal') }), 2, 1);
      });
      it('CHAP required, initiator leaves the security stage without AuthMethod', () => {
        failed(send(new LoginMachine(chapEnv()), { csg: Stage.Security, nsg: Stage.Operational, transit: true, keys: first() }), 2, 1);
      });
      it('no CHAP configured, initiator offers only CHAP', () => {
        failed(send(new LoginMachine(env), { csg: Stage.Security, nsg: Stage.Operational, transit: true, keys: first('AuthMethod=CHAP') }), 2, 1);
      });
      it('wrong secret, unknown user, unsupported algorithm', () => {
        for (const cred of [{ user: CHAP.user, secret: 'not-the-secret-123' }, { user: 'mallory', secret: CHAP.secret }]) {
          const m = new LoginMachine(chapEnv());
          ok(send(m, { csg: Stage.Security, keys: first('AuthMethod=CHAP,None') }), Stage.Security, false);
          failed(chapLegs(m, cred), 2, 1);
        }
        const m = new LoginMachine(chapEnv());
        ok(send(m, { csg: Stage.Security, keys: first('AuthMethod=CHAP,None') }), Stage.Security, false);
        failed(send(m, { csg: Stage.Security, keys: ['CHAP_A=7'] }), 2, 1);
      });
      it('mutual CHAP asked of a target without mutual credentials; reflected challenge', () => {
        const m = new LoginMachine(chapEnv());
        ok(send(m, { csg: Stage.Security, keys: first('AuthMethod=CHAP') }), Stage.Security, false);
        failed(chapLegs(m, CHAP, { id: 3, challenge: Buffer.alloc(16, 1) }), 2, 1);

        const m2 = new LoginMachine(makeEnv([target({ chap: CHAP, mutualChap: MUTUAL })]));
        ok(send(m2, { csg: Stage.Security, keys: first('AuthMethod=CHAP') }), Stage.Security, false);
        const c = ok(send(m2, { csg: Stage.Security, keys: ['CHAP_A=5'] }), Stage.Security, false);
        const id = Number(c.get('CHAP_I'));
        const ch = unhex(c.get('CHAP_C') as string);
        const s = send(m2, { csg: Stage.Security, transit: true, nsg: Stage.Operational, keys: [`CHAP_N=${CHAP.user}`, `CHAP_R=0x${md5Chap(id, CHAP.secret, ch).toString('hex')}`, 'CHAP_I=1', `CHAP_C=0x${ch.toString('hex')}`] });
        failed(s, 2, 1);
      });
    });

    it('02/00 when ISID, TSIH or CID change during the login', () => {
      for (const change of [{ isid: ISID + 1 }, { tsih: 5 }, { cid: 1 }]) {
        const m = new LoginMachine(env);
        ok(send(m, { csg: Stage.Security, keys: first('AuthMethod=None') }), Stage.Security, false);
        failed(send(m, { csg: Stage.Security, ...change }), 2, 0);
        expect(m.state).to.equal(LoginState.Failed);
      }
    });

    it('02/00 for operational keys in the security stage and security keys in the operational stage', () => {
      failed(send(new LoginMachine(env), { csg: Stage.Security, keys: first('AuthMethod=None', 'MaxBurstLength=65536') }), 2, 0);
      failed(send(new LoginMachine(env), { csg: Stage.Operational, keys: first('AuthMethod=None') }), 2, 0);
      failed(send(new LoginMachine(env), { csg: Stage.Operational, keys: first('SendTargets=All') }), 2, 0);
    });

    it('02/00 for a key given twice in one text or negotiated again later', () => {
      failed(send(new LoginMachine(env), { csg: Stage.Operational, keys: first('MaxBurstLength=65536', 'MaxBurstLength=65536') }), 2, 0);
      const m = new LoginMachine(env);
      ok(send(m, { csg: Stage.Operational, keys: first('MaxBurstLength=65536') }), Stage.Operational, false);
      failed(send(m, { csg: Stage.Operational, keys: ['MaxBurstLength=65536'] }), 2, 0);
    });

    it('02/00 for an identity key redeclared with another value', () => {
      const m = new LoginMachine(env);
      ok(send(m, { csg: Stage.Security, nsg: Stage.Operational, transit: true, keys: first('AuthMethod=None') }), Stage.Security, true, Stage.Operational);
      failed(send(m, { csg: Stage.Operational, keys: ['InitiatorName=iqn.2026-01.org.example:someone-else'] }), 2, 0);
    });

    it('02/00 for malformed text', () => {
      failed(send(new LoginMachine(env), { csg: Stage.Operational, data: Buffer.from(`InitiatorName=${INITIATOR}\0garbage\0`) }), 2, 0);
    });

    it('02/00 for bad stage fields: T with C, NSG not above CSG, reserved stage, going back', () => {
      failed(send(new LoginMachine(env), { csg: Stage.Security, transit: true, cont: true, nsg: Stage.Operational, keys: first() }), 2, 0);
      failed(send(new LoginMachine(env), { csg: Stage.Operational, transit: true, nsg: Stage.Operational, keys: first() }), 2, 0);
      failed(send(new LoginMachine(env), { csg: Stage.Security, transit: true, nsg: 2 as Stage, keys: first() }), 2, 0);
      failed(send(new LoginMachine(env), { csg: Stage.FullFeature, keys: first() }), 2, 0);
      const m = new LoginMachine(env);
      ok(send(m, { csg: Stage.Security, nsg: Stage.Operational, transit: true, keys: first('AuthMethod=None') }), Stage.Security, true, Stage.Operational);
      failed(send(m, { csg: Stage.Security, keys: [] }), 2, 0);
    });

    it('passes on the refusal of admit() and closes', () => {
      const e = makeEnv([target()], {}, { ok: false, statusClass: 2, statusDetail: 6 });
      const step = send(new LoginMachine(e), { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true, keys: libiscsiOpKeys('Normal') });
      failed(step, 2, 6);
    });

    it('a request after the login ended is refused (02/0b)', () => {
      const m = new LoginMachine(env);
      failed(send(m, { csg: Stage.Operational, keys: [] }), 2, 7);
      failed(send(m, { csg: Stage.Operational, keys: first() }), 2, 0x0b);
    });

    it('a non-leading connection (TSIH set) negotiates only connection keys and is admitted with its TSIH', () => {
      const m = new LoginMachine(makeEnv([target()], {}, { ok: true, tsih: 42 }));
      const s = send(m, { csg: Stage.Operational, nsg: Stage.FullFeature, transit: true, tsih: 42, cid: 1, keys: first('MaxBurstLength=65536', 'HeaderDigest=CRC32C') });
      const k = ok(s, Stage.Operational, true, Stage.FullFeature);
      expect(k.get('MaxBurstLength')).to.equal('Irrelevant');
      expect(k.get('HeaderDigest')).to.equal('CRC32C');
      expect(s.response.tsih).to.equal(42);
      expect(s.outcome).to.deep.include({ tsih: 42, cid: 1 });
    });
  });
});
