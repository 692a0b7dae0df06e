import { expect } from 'chai';
import { validateConfig, ConfigError } from '../../../src/config/schema.js';
import { flagOverrides } from '../../../src/config/flags.js';
import { agentOptions } from '../../../src/daemon/options.js';
import { AGENT_FLAGS } from '../../../src/cli/agent.js';

const ctx = { hostname: 'node7' };
const agent = (a: object): object => ({ role: 'agent', controller: { address: '10.0.0.1:7360' }, agent: { name: 'a1', ...a } });

function problems(raw: object): readonly string[] {
  try {
    validateConfig(raw, 't', ctx);
    return [];
  } catch (e) {
    return (e as ConfigError).problems ?? [(e as Error).message];
  }
}

describe('config: agent host id, rescan interval and iscsi:// locators (issue 15)', () => {
  it('host-id and rescan-interval reach the agent (0 = no periodic rescan); unset, the agent picks its defaults', () => {
    const c = validateConfig(agent({ 'host-id': 'rack1-h3', 'rescan-interval': 0, containers: ['/srv/c*.img', 'iscsi://10.0.0.9:3260'] }), 't', ctx);
    expect(agentOptions(c)).to.deep.include({ hostId: 'rack1-h3', rescanIntervalMs: 0, containers: ['/srv/c*.img', 'iscsi://10.0.0.9:3260'] });
    const d = agentOptions(validateConfig(agent({}), 't', ctx));
    expect(d).to.not.have.any.keys('hostId', 'rescanIntervalMs');
  });

  it('names a bad host id or rescan interval', () => {
    const p = problems(agent({ 'host-id': 'has space', 'rescan-interval': -1 }));
    expect(p.some((x) => x.startsWith("agent.host-id: 'has space'"))).to.equal(true);
    expect(p.some((x) => x.startsWith('agent.rescan-interval: expected seconds from 0 (off) to 86400'))).to.equal(true);
  });

  it('--containers keeps an iscsi:// URL as it is while relative paths become absolute', () => {
    const o = flagOverrides({ containers: ['iscsi://10.0.0.9:3260/iqn.2026-11.org.example:st1/0', 'rel/*.img'] }, AGENT_FLAGS);
    const got = o['agent.containers'] as string[];
    expect(got[0]).to.equal('iscsi://10.0.0.9:3260/iqn.2026-11.org.example:st1/0');
    expect(got[1]).to.match(/^\/.*\/rel\/\*\.img$/);
  });
});
