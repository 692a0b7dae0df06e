import { expect } from 'chai';
import { formatTargetAddress, sendTargets } from '../../../../src/iscsi/login/discovery.js';
import { INITIATOR, makeEnv, target } from './helpers.js';

const A = 'iqn.2026-11.org.tabula:a';
const B = 'iqn.2026-11.org.tabula:b';
const C = 'iqn.2026-11.org.tabula:c';

function env() {
  return makeEnv([
    target({ name: A, portals: [{ address: '10.0.0.1', port: 3260, tpgt: 1 }, { address: 'fe80::1', port: 3261, tpgt: 2 }] }),
    target({ name: B, portals: [{ address: 'storage.example', port: 3260, tpgt: 1 }], allowedInitiators: ['iqn.2026-01.org.example:other'] }),
    target({ name: C, portals: [{ address: '10.0.0.3', port: 3260, tpgt: 5 }], allowedInitiators: [INITIATOR] }),
  ]);
}

describe('iscsi/login/discovery', () => {
  it('formats addresses, IPv6 in brackets', () => {
    expect(formatTargetAddress({ address: '10.0.0.1', port: 3260, tpgt: 1 })).to.equal('10.0.0.1:3260,1');
    expect(formatTargetAddress({ address: '2001:db8::7', port: 860, tpgt: 3 })).to.equal('[2001:db8::7]:860,3');
    expect(formatTargetAddress({ address: '[2001:db8::7]', port: 860, tpgt: 3 })).to.equal('[2001:db8::7]:860,3');
  });

  it('SendTargets=All lists every target the initiator may see, each with all its portals', () => {
    const out = sendTargets('All', env(), INITIATOR).toString('latin1');
    expect(out).to.equal(
      `TargetName=${A}\0TargetAddress=10.0.0.1:3260,1\0TargetAddress=[fe80::1]:3261,2\0` + `TargetName=${C}\0TargetAddress=10.0.0.3:3260,5\0`,
    );
  });

  it('a target name returns that target only, if visible', () => {
    expect(sendTargets(C, env(), INITIATOR).toString('latin1')).to.equal(`TargetName=${C}\0TargetAddress=10.0.0.3:3260,5\0`);
    expect(sendTargets(B, env(), INITIATOR).length).to.equal(0);
    expect(sendTargets('iqn.2000-01.com.nowhere:x', env(), INITIATOR).length).to.equal(0);
    expect(sendTargets(B, env(), 'IQN.2026-01.ORG.EXAMPLE:OTHER').toString('latin1')).to.equal(`TargetName=${B}\0TargetAddress=storage.example:3260,1\0`);
  });

  it('"All" is refused in a normal session; an empty value in a discovery session returns nothing', () => {
    expect(sendTargets('All', env(), INITIATOR, 'Normal').toString('latin1')).to.equal('SendTargets=Reject\0');
    expect(sendTargets('', env(), INITIATOR, 'Discovery').length).to.equal(0);
    expect(sendTargets(A, env(), INITIATOR, 'Normal').toString('latin1')).to.match(/^TargetName=iqn.2026-11.org.tabula:a\0/);
  });

  it('without a target listing, All answers nothing', () => {
    const e = env();
    delete e.targets;
    expect(sendTargets('All', e, INITIATOR).length).to.equal(0);
  });
});
