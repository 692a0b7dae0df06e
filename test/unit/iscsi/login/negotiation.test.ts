import { expect } from 'chai';
import { OperationalNegotiator, type NegotiationStep } from '../../../../src/iscsi/login/negotiation.js';
import type { TargetLimits } from '../../../../src/iscsi/login/environment.js';
import { keyDef, KEYS, parseNumber } from '../../../../src/iscsi/login/keys.js';
import { INITIATOR, LIMITS, OPEN_ISCSI_OP_NORMAL, TARGET } from './helpers.js';

type Pair = [string, string];

function pairs(...lines: string[]): Pair[] {
  return lines.map((l) => {
    const i = l.indexOf('=');
    return [l.slice(0, i), l.slice(i + 1)];
  });
}

function answers(step: NegotiationStep): Record<string, string> {
  if (!step.ok) throw new Error(`negotiation failed: ${step.reason}`);
  return Object.fromEntries(step.responses);
}

function neg(limits: Partial<TargetLimits> = {}, type: 'Normal' | 'Discovery' = 'Normal', leading = true) {
  return new OperationalNegotiator({ ...LIMITS, ...limits }, type, leading);
}

const ID = { sessionType: 'Normal' as const, initiatorName: INITIATOR, targetName: TARGET };

describe('iscsi/login/keys', () => {
  it('has a row for every RFC 7143 key and the CHAP keys', () => {
    for (const k of [
      'AuthMethod', 'HeaderDigest', 'DataDigest', 'MaxConnections', 'SendTargets', 'TargetName', 'InitiatorName',
      'TargetAlias', 'InitiatorAlias', 'TargetAddress', 'TargetPortalGroupTag', 'InitialR2T', 'ImmediateData',
      'MaxRecvDataSegmentLength', 'MaxBurstLength', 'FirstBurstLength', 'DefaultTime2Wait', 'DefaultTime2Retain',
      'MaxOutstandingR2T', 'DataPDUInOrder', 'DataSequenceInOrder', 'ErrorRecoveryLevel', 'SessionType',
      'TaskReporting', 'iSCSIProtocolLevel', 'OFMarker', 'IFMarker', 'OFMarkInt', 'IFMarkInt',
      'CHAP_A', 'CHAP_I', 'CHAP_C', 'CHAP_N', 'CHAP_R',
    ]) {
      expect(KEYS.has(k), k).to.equal(true);
    }
  });

  it('records result functions, scopes and defaults from RFC 7143', () => {
    expect(keyDef('MaxBurstLength')).to.include({ kind: 'min', scope: 'session', use: 'leading', defaultValue: '262144' });
    expect(keyDef('DefaultTime2Wait')).to.include({ kind: 'max', defaultValue: '2' });
    expect(keyDef('DefaultTime2Retain')).to.include({ kind: 'min', defaultValue: '20' });
    expect(keyDef('InitialR2T')).to.include({ kind: 'or', defaultValue: 'Yes' });
    expect(keyDef('ImmediateData')).to.include({ kind: 'and', defaultValue: 'Yes' });
    expect(keyDef('HeaderDigest')).to.include({ kind: 'list', scope: 'connection', use: 'login' });
    expect(keyDef('MaxRecvDataSegmentLength')).to.include({ kind: 'declarative', scope: 'connection', defaultValue: '8192' });
    expect(keyDef('MaxRecvDataSegmentLength')?.range).to.deep.equal({ min: 512, max: 16777215 });
    expect(keyDef('AuthMethod')).to.include({ use: 'security' });
    expect(keyDef('SendTargets')).to.include({ use: 'ffp' });
    expect(keyDef('X-com.example.foo')).to.equal(undefined);
  });

  it('parses decimal and hex numbers, nothing else', () => {
    expect(parseNumber('0')).to.equal(0);
    expect(parseNumber('8192')).to.equal(8192);
    expect(parseNumber('0x2000')).to.equal(8192);
    expect(parseNumber('08192')).to.equal(undefined);
    expect(parseNumber('-1')).to.equal(undefined);
    expect(parseNumber('12a')).to.equal(undefined);
    expect(parseNumber('')).to.equal(undefined);
    expect(parseNumber(' 1')).to.equal(undefined);
  });
});

describe('iscsi/login/negotiation', () => {
  describe('numerical keys', () => {
    it('min function: answers the lower of offer and target limit', () => {
      const a = answers(neg({ maxBurstLength: 1048576 }).negotiate(pairs('MaxBurstLength=16776192')));
      expect(a.MaxBurstLength).to.equal('1048576');
      const b = answers(neg({ maxBurstLength: 1048576 }).negotiate(pairs('MaxBurstLength=65536')));
      expect(b.MaxBurstLength).to.equal('65536');
    });

    it('max function: DefaultTime2Wait answers the higher value', () => {
      expect(answers(neg({ defaultTime2Wait: 5 }).negotiate(pairs('DefaultTime2Wait=2'))).DefaultTime2Wait).to.equal('5');
      expect(answers(neg({ defaultTime2Wait: 5 }).negotiate(pairs('DefaultTime2Wait=10'))).DefaultTime2Wait).to.equal('10');
    });

    it('DefaultTime2Retain is min', () => {
      expect(answers(neg({ defaultTime2Retain: 20 }).negotiate(pairs('DefaultTime2Retain=0'))).DefaultTime2Retain).to.equal('0');
    });

    it('ErrorRecoveryLevel is always 0, MaxConnections always 1', () => {
      const a = answers(neg().negotiate(pairs('ErrorRecoveryLevel=2', 'MaxConnections=8')));
      expect(a).to.deep.include({ ErrorRecoveryLevel: '0', MaxConnections: '1' });
    });

    it('MaxOutstandingR2T is limited by the target', () => {
      expect(answers(neg({ maxOutstandingR2T: 4 }).negotiate(pairs('MaxOutstandingR2T=16'))).MaxOutstandingR2T).to.equal('4');
    });

    it('accepts hex-constant numbers', () => {
      expect(answers(neg().negotiate(pairs('MaxBurstLength=0x10000'))).MaxBurstLength).to.equal('65536');
    });

    it('out of range or malformed values are answered Reject and keep the default', () => {
      const n = neg();
      const a = answers(n.negotiate(pairs('MaxBurstLength=256', 'MaxOutstandingR2T=0', 'DefaultTime2Wait=3601', 'ErrorRecoveryLevel=abc')));
      expect(a).to.deep.equal({ MaxBurstLength: 'Reject', MaxOutstandingR2T: 'Reject', DefaultTime2Wait: 'Reject', ErrorRecoveryLevel: 'Reject' });
      const r = n.result(ID);
      expect(r.maxBurstLength).to.equal(262144);
      expect(r.maxOutstandingR2T).to.equal(1);
      expect(r.defaultTime2Wait).to.equal(2);
    });

    it('an offer of Reject/Irrelevant/NotUnderstood is not a value', () => {
      expect(answers(neg().negotiate(pairs('MaxBurstLength=Irrelevant'))).MaxBurstLength).to.equal('Reject');
    });

    it('iSCSIProtocolLevel answers at most 1', () => {
      expect(answers(neg().negotiate(pairs('iSCSIProtocolLevel=2'))).iSCSIProtocolLevel).to.equal('1');
    });
  });

  describe('Boolean keys', () => {
    it('InitialR2T is OR', () => {
      expect(answers(neg({ initialR2T: false }).negotiate(pairs('InitialR2T=No'))).InitialR2T).to.equal('No');
      expect(answers(neg({ initialR2T: true }).negotiate(pairs('InitialR2T=No'))).InitialR2T).to.equal('Yes');
      expect(answers(neg({ initialR2T: false }).negotiate(pairs('InitialR2T=Yes'))).InitialR2T).to.equal('Yes');
    });

    it('ImmediateData is AND', () => {
      expect(answers(neg({ immediateData: true }).negotiate(pairs('ImmediateData=Yes'))).ImmediateData).to.equal('Yes');
      expect(answers(neg({ immediateData: false }).negotiate(pairs('ImmediateData=Yes'))).ImmediateData).to.equal('No');
      expect(answers(neg({ immediateData: true }).negotiate(pairs('ImmediateData=No'))).ImmediateData).to.equal('No');
    });

    it('DataPDUInOrder / DataSequenceInOrder are OR with our Yes', () => {
      const a = answers(neg().negotiate(pairs('DataPDUInOrder=No', 'DataSequenceInOrder=No')));
      expect(a).to.deep.equal({ DataPDUInOrder: 'Yes', DataSequenceInOrder: 'Yes' });
    });

    it('a non-Boolean value is Rejected', () => {
      expect(answers(neg().negotiate(pairs('InitialR2T=yes'))).InitialR2T).to.equal('Reject');
    });
  });

  describe('list keys', () => {
    it('picks the first value of the initiator list that we support', () => {
      const a = answers(neg().negotiate(pairs('HeaderDigest=CRC32C,None', 'DataDigest=None,CRC32C')));
      expect(a).to.deep.equal({ HeaderDigest: 'CRC32C', DataDigest: 'None' });
      const r = neg();
      r.negotiate(pairs('HeaderDigest=CRC32C,None', 'DataDigest=None,CRC32C'));
      expect(r.result(ID)).to.include({ headerDigest: true, dataDigest: false });
    });

    it('skips unknown values, Rejects when none is acceptable', () => {
      expect(answers(neg().negotiate(pairs('HeaderDigest=MD5,None'))).HeaderDigest).to.equal('None');
      expect(answers(neg().negotiate(pairs('HeaderDigest=MD5'))).HeaderDigest).to.equal('Reject');
    });

    it('TaskReporting: only RFC3720', () => {
      expect(answers(neg().negotiate(pairs('TaskReporting=FastAbort,RFC3720'))).TaskReporting).to.equal('RFC3720');
      expect(answers(neg().negotiate(pairs('TaskReporting=FastAbort'))).TaskReporting).to.equal('Reject');
    });
  });

  describe('FirstBurstLength', () => {
    it('is limited by the target and by MaxBurstLength', () => {
      const a = answers(neg({ firstBurstLength: 262144, maxBurstLength: 131072 }).negotiate(pairs('FirstBurstLength=262144', 'MaxBurstLength=16776192')));
      expect(a).to.deep.equal({ FirstBurstLength: '131072', MaxBurstLength: '131072' });
    });

    it('is Irrelevant when InitialR2T=Yes and ImmediateData=No (even when they follow it)', () => {
      const a = answers(neg().negotiate(pairs('FirstBurstLength=65536', 'InitialR2T=Yes', 'ImmediateData=No')));
      expect(a.FirstBurstLength).to.equal('Irrelevant');
    });

    it('is relevant with InitialR2T=Yes and ImmediateData=Yes', () => {
      expect(answers(neg().negotiate(pairs('InitialR2T=Yes', 'ImmediateData=Yes', 'FirstBurstLength=65536'))).FirstBurstLength).to.equal('65536');
    });

    it('never exceeds MaxBurstLength in the result', () => {
      const n = neg({ maxBurstLength: 4096 });
      n.negotiate(pairs('MaxBurstLength=4096'));
      expect(n.result(ID).firstBurstLength).to.equal(4096);
    });
  });

  describe('MaxRecvDataSegmentLength', () => {
    it('records the initiator declaration without answering, declares ours once', () => {
      const n = neg({ maxRecvDataSegmentLength: 65536 });
      expect(answers(n.negotiate(pairs('MaxRecvDataSegmentLength=262144')))).to.deep.equal({});
      expect(n.declarations()).to.deep.equal([['MaxRecvDataSegmentLength', '65536']]);
      expect(n.declarations()).to.deep.equal([]);
      expect(n.result(ID)).to.include({ initiatorMaxRecvDataSegmentLength: 262144, targetMaxRecvDataSegmentLength: 65536 });
    });

    it('defaults to 8192 both ways', () => {
      expect(neg().result(ID)).to.include({ initiatorMaxRecvDataSegmentLength: 8192, targetMaxRecvDataSegmentLength: 8192 });
    });

    it('an invalid declaration is a protocol error', () => {
      const s = neg().negotiate(pairs('MaxRecvDataSegmentLength=100'));
      expect(s.ok).to.equal(false);
    });
  });

  describe('rules about where keys may appear', () => {
    it('unknown and X- / X# keys are NotUnderstood', () => {
      expect(answers(neg().negotiate(pairs('X-com.example.Foo=1', 'X#Bar=2', 'Unknown=3')))).to.deep.equal({
        'X-com.example.Foo': 'NotUnderstood',
        'X#Bar': 'NotUnderstood',
        Unknown: 'NotUnderstood',
      });
    });

    it('obsolete marker keys: markers No, intervals Reject (never NotUnderstood)', () => {
      const a = answers(neg().negotiate(pairs('IFMarker=Yes', 'OFMarker=No', 'IFMarkInt=2048~8192', 'OFMarkInt=2048')));
      expect(a).to.deep.equal({ IFMarker: 'No', OFMarker: 'No', IFMarkInt: 'Reject', OFMarkInt: 'Reject' });
    });

    it('a key negotiated twice (across PDUs) is a protocol error', () => {
      const n = neg();
      answers(n.negotiate(pairs('MaxBurstLength=65536')));
      const s = n.negotiate(pairs('MaxBurstLength=65536'));
      expect(s.ok).to.equal(false);
      if (!s.ok) expect(s.reason).to.match(/twice/);
      const m = neg();
      answers(m.negotiate(pairs('MaxRecvDataSegmentLength=8192')));
      expect(m.negotiate(pairs('MaxRecvDataSegmentLength=8192')).ok).to.equal(false);
    });

    it('security keys, SendTargets and target-only keys are protocol errors', () => {
      for (const p of ['AuthMethod=None', 'CHAP_A=5', 'SendTargets=All', 'TargetPortalGroupTag=1', 'TargetAddress=1.2.3.4', 'TargetAlias=x']) {
        expect(neg().negotiate(pairs(p)).ok, p).to.equal(false);
      }
    });

    it('identity keys are left to the login machine', () => {
      expect(answers(neg().negotiate(pairs(`InitiatorName=${INITIATOR}`, 'SessionType=Normal', `TargetName=${TARGET}`)))).to.deep.equal({});
    });

    it('discovery sessions answer Irrelevant for session keys they do not use', () => {
      const n = neg({}, 'Discovery');
      const a = answers(
        n.negotiate(
          pairs(
            'HeaderDigest=None', 'DataDigest=None', 'InitialR2T=No', 'ImmediateData=Yes', 'MaxBurstLength=16776192',
            'FirstBurstLength=262144', 'MaxOutstandingR2T=1', 'MaxConnections=1', 'DataPDUInOrder=Yes',
            'DataSequenceInOrder=Yes', 'DefaultTime2Wait=2', 'ErrorRecoveryLevel=0', 'MaxRecvDataSegmentLength=32768',
          ),
        ),
      );
      expect(a).to.deep.equal({
        HeaderDigest: 'None',
        DataDigest: 'None',
        InitialR2T: 'Irrelevant',
        ImmediateData: 'Irrelevant',
        MaxBurstLength: 'Irrelevant',
        FirstBurstLength: 'Irrelevant',
        MaxOutstandingR2T: 'Irrelevant',
        MaxConnections: 'Irrelevant',
        DataPDUInOrder: 'Irrelevant',
        DataSequenceInOrder: 'Irrelevant',
        DefaultTime2Wait: '2',
        ErrorRecoveryLevel: '0',
      });
      expect(n.targetOffers()).to.deep.equal([]);
      expect(n.result({ sessionType: 'Discovery', initiatorName: INITIATOR })).to.include({
        sessionType: 'Discovery',
        initiatorMaxRecvDataSegmentLength: 32768,
      });
    });

    it('leading-only keys on an added connection are Irrelevant; connection keys still negotiate', () => {
      const a = answers(neg({}, 'Normal', false).negotiate(pairs('MaxBurstLength=65536', 'HeaderDigest=CRC32C')));
      expect(a).to.deep.equal({ MaxBurstLength: 'Irrelevant', HeaderDigest: 'CRC32C' });
    });
  });

  describe('target offers', () => {
    it('offers nothing when the initiator offered everything (open-iscsi)', () => {
      const n = neg({ immediateData: false, firstBurstLength: 8192, maxBurstLength: 65536 });
      answers(n.negotiate(pairs(...OPEN_ISCSI_OP_NORMAL)));
      expect(n.targetOffers()).to.deep.equal([]);
      expect(n.result(ID)).to.include({ immediateData: false, firstBurstLength: 8192, maxBurstLength: 65536 });
    });

    it('offers the keys whose RFC default we cannot accept, once, and checks the answers', () => {
      const n = neg({ immediateData: false, firstBurstLength: 8192, maxBurstLength: 65536 });
      answers(n.negotiate(pairs('MaxRecvDataSegmentLength=8192')));
      expect(n.needsOffers).to.equal(true);
      const offers = n.targetOffers();
      // FirstBurstLength becomes Irrelevant with ImmediateData=No and the default InitialR2T=Yes.
      expect(offers).to.deep.equal([
        ['MaxBurstLength', '65536'],
        ['ImmediateData', 'No'],
      ]);
      expect(n.targetOffers()).to.deep.equal([]);
      expect(n.unansweredOffers).to.deep.equal(['MaxBurstLength', 'ImmediateData']);
      expect(answers(n.negotiate(pairs('MaxBurstLength=32768', 'ImmediateData=No')))).to.deep.equal({});
      expect(n.unansweredOffers).to.deep.equal([]);
      expect(n.result(ID)).to.include({ maxBurstLength: 32768, immediateData: false });
    });

    it('offers FirstBurstLength when it stays relevant and our limit is below 65536', () => {
      const n = neg({ firstBurstLength: 16384 });
      answers(n.negotiate(pairs('InitialR2T=No', 'ImmediateData=Yes', 'MaxBurstLength=262144')));
      expect(n.targetOffers()).to.deep.equal([['FirstBurstLength', '16384']]);
    });

    it('an answer that breaks the result function is a protocol error', () => {
      const n = neg({ immediateData: false });
      n.targetOffers();
      expect(n.negotiate(pairs('ImmediateData=Yes')).ok).to.equal(false);
    });
  });

  it('produces the full parameter set for an open-iscsi normal session', () => {
    const n = neg();
    const a = answers(n.negotiate(pairs(...OPEN_ISCSI_OP_NORMAL)));
    expect(a).to.deep.equal({
      HeaderDigest: 'None',
      DataDigest: 'None',
      DefaultTime2Wait: '2',
      DefaultTime2Retain: '0',
      IFMarker: 'No',
      OFMarker: 'No',
      ErrorRecoveryLevel: '0',
      InitialR2T: 'No',
      ImmediateData: 'Yes',
      MaxBurstLength: '1048576',
      FirstBurstLength: '262144',
      MaxOutstandingR2T: '1',
      MaxConnections: '1',
      DataPDUInOrder: 'Yes',
      DataSequenceInOrder: 'Yes',
    });
    expect(n.result({ ...ID, initiatorAlias: 'host' })).to.deep.equal({
      headerDigest: false,
      dataDigest: false,
      initiatorMaxRecvDataSegmentLength: 262144,
      targetMaxRecvDataSegmentLength: 8192,
      maxBurstLength: 1048576,
      firstBurstLength: 262144,
      initialR2T: false,
      immediateData: true,
      maxOutstandingR2T: 1,
      dataPDUInOrder: true,
      dataSequenceInOrder: true,
      defaultTime2Wait: 2,
      defaultTime2Retain: 0,
      errorRecoveryLevel: 0,
      maxConnections: 1,
      sessionType: 'Normal',
      initiatorName: INITIATOR,
      initiatorAlias: 'host',
      targetName: TARGET,
    });
  });
});
