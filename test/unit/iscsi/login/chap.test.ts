import { expect } from 'chai';
import { ChapAuthenticator, ChapState, decodeBinary, selectChapAlgorithm } from '../../../../src/iscsi/login/chap.js';
import { md5Chap, unhex } from './helpers.js';

const CRED = { user: 'alice', secret: 'initiator-secret-12' };
const MUTUAL = { user: 'tabula', secret: 'target-secret-3456' };

function started(mutual: typeof MUTUAL | undefined) {
  const chap = new ChapAuthenticator(CRED, mutual);
  const step = chap.challenge('5');
  if (!step.ok) throw new Error(step.reason);
  const m = new Map(step.pairs);
  return { chap, id: Number(m.get('CHAP_I')), challenge: unhex(m.get('CHAP_C') as string), pairs: step.pairs };
}

function hex(b: Buffer): string {
  return `0x${b.toString('hex')}`;
}

describe('iscsi/login/chap', () => {
  describe('binary values', () => {
    it('decodes 0x hex (either case, odd digit count gets a leading 0) and 0b base64', () => {
      expect(decodeBinary('0x0aFF')?.toString('hex')).to.equal('0aff');
      expect(decodeBinary('0XABC')?.toString('hex')).to.equal('0abc');
      expect(decodeBinary('0bAQID')?.toString('hex')).to.equal('010203');
      expect(decodeBinary('0BAQI=')?.toString('hex')).to.equal('0102');
    });
    it('rejects anything else', () => {
      for (const v of ['0x', '0xZZ', '1234', '0bA', '0bA$==', 'abcdef', '']) expect(decodeBinary(v), v).to.equal(undefined);
    });
  });

  it('selects MD5 (5) from a CHAP_A list or nothing', () => {
    expect(selectChapAlgorithm('7,5')).to.equal(5);
    expect(selectChapAlgorithm('5')).to.equal(5);
    expect(selectChapAlgorithm('6,7')).to.equal(undefined);
  });

  it('answers CHAP_A with CHAP_A=5, an identifier and a 16-byte hex challenge', () => {
    const { pairs, id, challenge } = started(MUTUAL);
    expect(pairs.map((p) => p[0])).to.deep.equal(['CHAP_A', 'CHAP_I', 'CHAP_C']);
    expect(pairs[0][1]).to.equal('5');
    expect(id).to.be.within(0, 255);
    expect(challenge.length).to.be.at.least(16);
  });

  it('uses a fresh challenge every time', () => {
    expect(started(MUTUAL).challenge.equals(started(MUTUAL).challenge)).to.equal(false);
  });

  it('fails when CHAP_A offers no MD5', () => {
    const chap = new ChapAuthenticator(CRED, undefined);
    const s = chap.challenge('6,7');
    expect(s.ok).to.equal(false);
    expect(chap.state).to.equal(ChapState.Failed);
  });

  it('one-way: accepts the right response (hex and base64)', () => {
    const a = started(MUTUAL);
    const r = md5Chap(a.id, CRED.secret, a.challenge);
    const s = a.chap.verify(new Map([['CHAP_N', 'alice'], ['CHAP_R', hex(r).toUpperCase().replace('0X', '0x')]]));
    expect(s).to.deep.equal({ ok: true, pairs: [] });
    expect(a.chap.state).to.equal(ChapState.Done);

    const b = started(MUTUAL);
    const rb = md5Chap(b.id, CRED.secret, b.challenge);
    expect(b.chap.verify(new Map([['CHAP_N', 'alice'], ['CHAP_R', `0b${rb.toString('base64')}`]])).ok).to.equal(true);
  });

  it('mutual: answers the initiator challenge with the target credentials', () => {
    const a = started(MUTUAL);
    const theirChallenge = Buffer.from('00112233445566778899aabbccddeeff0011', 'hex');
    const s = a.chap.verify(
      new Map([
        ['CHAP_N', 'alice'],
        ['CHAP_R', hex(md5Chap(a.id, CRED.secret, a.challenge))],
        ['CHAP_I', '77'],
        ['CHAP_C', hex(theirChallenge)],
      ]),
    );
    expect(s.ok).to.equal(true);
    if (!s.ok) return;
    expect(s.pairs[0]).to.deep.equal(['CHAP_N', 'tabula']);
    expect(s.pairs[1][0]).to.equal('CHAP_R');
    expect(unhex(s.pairs[1][1]).equals(md5Chap(77, MUTUAL.secret, theirChallenge))).to.equal(true);
  });

  describe('rejections', () => {
    function verifyWith(extra: [string, string][], opts: { mutual?: typeof MUTUAL; user?: string; resp?: (id: number, c: Buffer) => string } = {}) {
      const a = started('mutual' in opts ? opts.mutual : MUTUAL);
      const resp = opts.resp ? opts.resp(a.id, a.challenge) : hex(md5Chap(a.id, CRED.secret, a.challenge));
      return { a, step: a.chap.verify(new Map([['CHAP_N', opts.user ?? 'alice'], ['CHAP_R', resp], ...extra])) };
    }

    it('wrong response', () => {
      const { step } = verifyWith([], { resp: (id, c) => hex(md5Chap(id, 'wrong-secret-000', c)) });
      expect(step.ok).to.equal(false);
    });

    it('unknown user', () => {
      const { step } = verifyWith([], { user: 'mallory' });
      expect(step).to.deep.include({ ok: false });
      if (!step.ok) expect(step.reason).to.match(/unknown CHAP user/);
    });

    it('response of the wrong length', () => {
      const { step } = verifyWith([], { resp: (id, c) => hex(Buffer.concat([md5Chap(id, CRED.secret, c), Buffer.of(0)])) });
      if (step.ok) throw new Error('accepted');
      expect(step.reason).to.match(/17 bytes/);
      const { step: s2 } = verifyWith([], { resp: () => '0x00112233' });
      expect(s2.ok).to.equal(false);
    });

    it('response that is not hex/base64', () => {
      expect(verifyWith([], { resp: () => 'hello' }).step.ok).to.equal(false);
    });

    it('missing CHAP_N or CHAP_R', () => {
      const a = started(MUTUAL);
      expect(a.chap.verify(new Map([['CHAP_N', 'alice']])).ok).to.equal(false);
    });

    it('the initiator reflecting our challenge back', () => {
      const a = started(MUTUAL);
      const s = a.chap.verify(
        new Map([
          ['CHAP_N', 'alice'],
          ['CHAP_R', hex(md5Chap(a.id, CRED.secret, a.challenge))],
          ['CHAP_I', '1'],
          ['CHAP_C', hex(a.challenge)],
        ]),
      );
      if (s.ok) throw new Error('accepted');
      expect(s.reason).to.match(/reflected/);
    });

    it('identical secrets for both directions', () => {
      const { step } = verifyWith([['CHAP_I', '1'], ['CHAP_C', hex(Buffer.alloc(16, 9))]], { mutual: { user: 'tabula', secret: CRED.secret } });
      if (step.ok) throw new Error('accepted');
      expect(step.reason).to.match(/equals/);
    });

    it('mutual CHAP asked but no target credentials configured', () => {
      const { step } = verifyWith([['CHAP_I', '1'], ['CHAP_C', hex(Buffer.alloc(16, 9))]], { mutual: undefined });
      expect(step.ok).to.equal(false);
    });

    it('initiator challenge too short or too long', () => {
      expect(verifyWith([['CHAP_I', '1'], ['CHAP_C', hex(Buffer.alloc(15, 9))]]).step.ok).to.equal(false);
      expect(verifyWith([['CHAP_I', '1'], ['CHAP_C', hex(Buffer.alloc(1025, 9))]]).step.ok).to.equal(false);
      expect(verifyWith([['CHAP_I', '1'], ['CHAP_C', hex(Buffer.alloc(1024, 9))]]).step.ok).to.equal(true);
    });

    it('CHAP_I out of range or CHAP_C without CHAP_I', () => {
      expect(verifyWith([['CHAP_I', '256'], ['CHAP_C', hex(Buffer.alloc(16, 9))]]).step.ok).to.equal(false);
      expect(verifyWith([['CHAP_C', hex(Buffer.alloc(16, 9))]]).step.ok).to.equal(false);
    });

    it('steps out of order', () => {
      const chap = new ChapAuthenticator(CRED, undefined);
      expect(chap.verify(new Map([['CHAP_N', 'alice'], ['CHAP_R', '0x00']])).ok).to.equal(false);
      const a = started(MUTUAL);
      expect(a.chap.challenge('5').ok).to.equal(false);
    });
  });
});
