import { expect } from 'chai';
import {
  LocatorError,
  formatIscsiLocator,
  isIscsiLocator,
  locatorForm,
  parseIscsiLocator,
  redactLocator,
} from '../../../src/container/iscsi-locator.js';

const IQN = 'iqn.2026-11.org.tabula:store1';

describe('iSCSI locators', () => {
  describe('parse', () => {
    it('reads the LUN form with credentials', () => {
      const l = parseIscsiLocator(`iscsi://alice%s3cret@10.0.0.5:3261/${IQN}/2`);
      expect(l).to.deep.equal({ host: '10.0.0.5', port: 3261, target: IQN, lun: 2, chap: { user: 'alice', secret: 's3cret' } });
      expect(locatorForm(l)).to.equal('lun');
    });

    it('defaults the port to 3260', () => {
      expect(parseIscsiLocator(`iscsi://store1/${IQN}/0`)).to.deep.equal({ host: 'store1', port: 3260, target: IQN, lun: 0 });
    });

    it('reads the portal and target forms, a trailing slash tolerated', () => {
      expect(parseIscsiLocator('iscsi://10.0.0.5:3260')).to.deep.equal({ host: '10.0.0.5', port: 3260 });
      expect(parseIscsiLocator('iscsi://10.0.0.5/')).to.deep.equal({ host: '10.0.0.5', port: 3260 });
      expect(locatorForm(parseIscsiLocator('iscsi://h'))).to.equal('portal');
      const t = parseIscsiLocator(`iscsi://h:3260/${IQN}/`);
      expect(t).to.deep.equal({ host: 'h', port: 3260, target: IQN });
      expect(locatorForm(t)).to.equal('target');
      expect(parseIscsiLocator(`iscsi://h/${IQN}/7/`).lun).to.equal(7);
    });

    it('reads IPv6 hosts in brackets, with and without a port', () => {
      expect(parseIscsiLocator(`iscsi://[fd00::5]:3262/${IQN}/1`)).to.deep.equal({ host: 'fd00::5', port: 3262, target: IQN, lun: 1 });
      expect(parseIscsiLocator('iscsi://[::1]')).to.deep.equal({ host: '::1', port: 3260 });
      expect(parseIscsiLocator('iscsi://[fe80::1%25eth0]:3260').host).to.equal('fe80::1%eth0');
    });

    it('percent-decodes the secret and the target name; the last @ ends the user info', () => {
      const l = parseIscsiLocator(`iscsi://bob%p%25ss%40w%2Frd%3F@h/${encodeURIComponent(IQN)}/0`);
      expect(l.chap).to.deep.equal({ user: 'bob', secret: 'p%ss@w/rd?' });
      expect(l.target).to.equal(IQN);
      expect(parseIscsiLocator('iscsi://bob%a@b@h').chap).to.deep.equal({ user: 'bob', secret: 'a@b' });
    });

    it('accepts eui. and naa. names and the scheme in any case', () => {
      expect(parseIscsiLocator('ISCSI://h/eui.0123456789abcdef/0').target).to.equal('eui.0123456789abcdef');
      expect(parseIscsiLocator('iscsi://h/naa.60014051234567890123456789abcdef').target).to.equal('naa.60014051234567890123456789abcdef');
    });

    const bad: [string, RegExp][] = [
      ['/srv/c0.img', /not an iSCSI locator/],
      ['http://h/x', /not an iSCSI locator/],
      ['iscsi://', /no host/],
      ['iscsi:///iqn.2026-11.a:b/0', /no host/],
      ['iscsi://:3260', /no host before the port/],
      ['iscsi://h:', /empty port/],
      ['iscsi://h:abc', /port 'abc' is not a number/],
      ['iscsi://h:0', /port 0 is out of range/],
      ['iscsi://h:65536', /out of range/],
      ['iscsi://fd00::5:3260', /must be in brackets/],
      ['iscsi://[fd00::5:3260', /unclosed '\['/],
      ['iscsi://[10.0.0.1]:3260', /not an IPv6 address/],
      ['iscsi://[::1]x', /unexpected 'x' after '\]'/],
      ['iscsi://h-/x', /not a host name/],
      ['iscsi://a b', /white space/],
      ['iscsi://alice@h/iqn.2026-11.a:b/0', /CHAP user 'alice' without a secret/],
      ['iscsi://@h', /empty user before '@'/],
      ['iscsi://%secret@h', /empty CHAP user/],
      ['iscsi://alice%@h', /empty CHAP secret/],
      ['iscsi://alice%50%zz@h', /stray '%' in the secret/],
      ['iscsi://alice%%C3%28@h', /not valid percent-encoded UTF-8/],
      ['iscsi://h//0', /empty target name/],
      ['iscsi://h/not-an-iqn/0', /'not-an-iqn' is not an iSCSI target name/],
      ['iscsi://h/iqn.2026-11.a:b//', /empty LUN/],
      ['iscsi://h/iqn.2026-11.a:b/x', /LUN 'x' is not a number/],
      ['iscsi://h/iqn.2026-11.a:b/-1', /LUN '-1' is not a number/],
      ['iscsi://h/iqn.2026-11.a:b/16384', /LUN 16384 is out of range 0..16383/],
      ['iscsi://h/iqn.2026-11.a:b/0/extra', /too many path parts/],
      ['iscsi://h/iqn.2026-11.a:b/0?x=1', /query/],
      ['iscsi://h/iqn.2026-11.a:b/0#f', /fragment/],
      ['iscsi://h /iqn.2026-11.a:b/0', /white space/],
    ];
    for (const [input, why] of bad) {
      it(`refuses ${input}`, () => {
        expect(() => parseIscsiLocator(input)).to.throw(LocatorError, why);
      });
    }

    it('never shows the secret in an error', () => {
      try {
        parseIscsiLocator('iscsi://alice%topsecret@h/nope/0');
        expect.fail('parsed');
      } catch (e) {
        expect((e as Error).message).to.not.include('topsecret');
        expect((e as Error).message).to.include('iscsi://alice@h/nope/0');
      }
    });
  });

  describe('format and redact', () => {
    it('writes the canonical form, which parses back to the same locator', () => {
      const cases = [
        { host: 'h', port: 3260 },
        { host: 'h', port: 3261, target: IQN },
        { host: 'fd00::5', port: 3260, target: IQN, lun: 3 },
        { host: '10.0.0.5', port: 3260, target: IQN, lun: 0, chap: { user: 'alice', secret: 'p%s@w/rd #?é' } },
      ];
      for (const l of cases) expect(parseIscsiLocator(formatIscsiLocator(l))).to.deep.equal(l);
      expect(formatIscsiLocator({ host: 'fd00::5', port: 3260, target: IQN, lun: 3 })).to.equal(`iscsi://[fd00::5]:3260/${IQN}/3`);
      expect(formatIscsiLocator(parseIscsiLocator(`iscsi://h/${IQN}/1`))).to.equal(`iscsi://h:3260/${IQN}/1`);
    });

    it('redacts the secret and keeps the user', () => {
      const l = parseIscsiLocator(`iscsi://alice%s3cret@h:3260/${IQN}/1`);
      expect(formatIscsiLocator(l, { redact: true })).to.equal(`iscsi://alice@h:3260/${IQN}/1`);
      expect(redactLocator(`iscsi://alice%s3cret@h:3260/${IQN}/1`)).to.equal(`iscsi://alice@h:3260/${IQN}/1`);
      expect(redactLocator('iscsi://alice%s3c@ret@h')).to.equal('iscsi://alice@h');
      expect(redactLocator(`iscsi://h/${IQN}/1`)).to.equal(`iscsi://h/${IQN}/1`);
      expect(redactLocator('/srv/alice%x@y')).to.equal('/srv/alice%x@y');
    });

    it('refuses what a locator cannot carry', () => {
      expect(() => formatIscsiLocator({ host: 'h', port: 3260, target: IQN, lun: 0, chap: { user: 'a%b', secret: 'x' } })).to.throw(/cannot be written/);
      expect(() => formatIscsiLocator({ host: 'h', port: 3260, lun: 0 })).to.throw(/without a target/);
    });

    it('tells a locator from a path', () => {
      expect(isIscsiLocator('iscsi://h')).to.equal(true);
      expect(isIscsiLocator('ISCSI://h')).to.equal(true);
      expect(isIscsiLocator('/dev/sdb')).to.equal(false);
      expect(isIscsiLocator('iscsi:/h')).to.equal(false);
    });
  });
});
