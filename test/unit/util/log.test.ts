import { expect } from 'chai';
import { debugEnabled, log, setLogLevel } from '../../../src/util/log.js';

describe('util: log level checks', () => {
  const before = log.level;
  after(() => setLogLevel(before));

  it('debugEnabled() agrees with winston for every level', () => {
    for (const l of ['error', 'warn', 'info', 'http', 'verbose', 'debug', 'silly']) {
      setLogLevel(l);
      expect(debugEnabled(), l).to.equal(log.isDebugEnabled());
    }
    setLogLevel('debug');
    expect(debugEnabled()).to.equal(true);
    setLogLevel('info');
    expect(debugEnabled()).to.equal(false);
  });
});
