// agent.iscsi / --iscsi-*: the agent's initiator settings for iscsi://
// containers, from the file, the flags and a secret file, to the options the
// agent's container scanner gets.
import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { commandLoader } from '../../../src/config/flags.js';
import { ConfigError, validateConfig } from '../../../src/config/index.js';
import { agentOptions, iscsiClient } from '../../../src/daemon/options.js';
import { AGENT_FLAGS } from '../../../src/cli/agent.js';
import { iscsiSecretFile } from '../../../src/cli/daemon-flags.js';
import { restartNeeded } from '../../../src/daemon/run.js';

const ctx = { hostname: 'node7' };
const agent = (a: object) => validateConfig({ role: 'agent', controller: { address: 'ctl:7360' }, agent: a }, 't', ctx);

function problems(a: object): string[] {
  try {
    agent(a);
  } catch (e) {
    if (e instanceof ConfigError) return [...e.problems];
    throw e;
  }
  return [];
}

describe('config: agent.iscsi', () => {
  it('maps every key to the initiator options, the hold from agent.hold-timeout', () => {
    const c = agent({
      'hold-timeout': 8,
      iscsi: {
        'initiator-name': 'iqn.2024-01.io.tabula:agent.node7',
        'mutual-chap-user': 'storage',
        'mutual-chap-secret': 'storage-secret-1',
        digest: 'crc32c',
        'queue-depth': 64,
        sessions: 2,
        'command-timeout': 3,
      },
    });
    expect(iscsiClient(c)).to.deep.equal({
      initiatorName: 'iqn.2024-01.io.tabula:agent.node7',
      mutualChap: { user: 'storage', secret: 'storage-secret-1' },
      headerDigest: 'CRC32C',
      dataDigest: 'CRC32C',
      queueDepth: 64,
      sessions: 2,
      commandTimeoutMs: 3000,
      holdMs: 8000,
    });
    expect(agentOptions(c).containerOptions).to.deep.equal({ iscsi: iscsiClient(c) });
  });

  it('a change takes a restart (SIGHUP says so)', () => {
    expect(restartNeeded('agent', agent({}), agent({ iscsi: { 'queue-depth': 8 } }))).to.deep.equal(['agent.iscsi']);
    expect(restartNeeded('agent', agent({ iscsi: { sessions: 2 } }), agent({ iscsi: { sessions: 2 } }))).to.deep.equal([]);
  });

  it('without the section the agent gets no initiator options (the defaults apply)', () => {
    expect(agentOptions(agent({})).containerOptions).to.equal(undefined);
    expect(agent({}).agent.iscsi).to.deep.equal({});
  });

  it('names every bad key', () => {
    expect(
      problems({
        'hold-timeout': 4,
        iscsi: { 'initiator-name': 'agent7', 'mutual-chap-user': 'x', digest: 'md5', 'queue-depth': 0, sessions: 'many', 'command-timeout': 4, 'queue-dept': 3 },
      }),
    ).to.deep.equal([
      'agent.iscsi.queue-dept: unknown key (did you mean agent.iscsi.queue-depth?)',
      "agent.iscsi.initiator-name: 'agent7' is not an iSCSI name (iqn.YYYY-MM.domain..., eui.…, naa.…)",
      'agent.iscsi: give both mutual-chap-user and mutual-chap-secret, or neither',
      "agent.iscsi.digest: 'md5' is not one of none, crc32c, prefer",
      "agent.iscsi.queue-depth: expected a whole number from 1 to 1024, got '0'",
      "agent.iscsi.sessions: expected a whole number from 1 to 16, got 'many'",
      'agent.iscsi.command-timeout: 4 s must be shorter than agent.hold-timeout (4 s), so a lost command is retried within the hold',
    ]);
    expect(problems({ iscsi: { 'mutual-chap-user': 'u', 'mutual-chap-secret': 'short' } })).to.deep.equal([
      'agent.iscsi.mutual-chap-secret: at least 12 characters (targets such as tgtd and LIO refuse shorter ones)',
    ]);
  });

  it('--iscsi-* flags set the same keys; the secret may come from a file or TABULA_ISCSI_MUTUAL_CHAP_SECRET', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tabula-iscsi-flags-'));
    try {
      const secretFile = join(dir, 'secret');
      writeFileSync(secretFile, 'from-the-file-1\nignored\n');
      const args: Record<string, unknown> = {
        controller: 'ctl:7360',
        name: 'a1',
        portal: ['0.0.0.0:3260'],
        containers: ['iscsi://st1:3260'],
        'iscsi-initiator-name': 'iqn.2024-01.io.tabula:agent.a1',
        'iscsi-mutual-chap-user': 'storage',
        'iscsi-mutual-chap-secret-file': secretFile,
        'iscsi-digest': 'prefer',
        'iscsi-queue-depth': 16,
        'iscsi-command-timeout': 2,
      };
      iscsiSecretFile(args, {});
      const cfg = commandLoader({ role: 'agent', specs: AGENT_FLAGS, args, env: {} })().config;
      expect(iscsiClient(cfg)).to.deep.equal({
        initiatorName: 'iqn.2024-01.io.tabula:agent.a1',
        mutualChap: { user: 'storage', secret: 'from-the-file-1' },
        headerDigest: 'prefer',
        dataDigest: 'prefer',
        queueDepth: 16,
        commandTimeoutMs: 2000,
      });
      const fromEnv: Record<string, unknown> = {};
      iscsiSecretFile(fromEnv, { TABULA_ISCSI_MUTUAL_CHAP_SECRET: 'from-the-env-12' });
      expect(fromEnv['iscsi-mutual-chap-secret']).to.equal('from-the-env-12');
      expect(() => iscsiSecretFile({ 'iscsi-mutual-chap-secret': 'x', 'iscsi-mutual-chap-secret-file': secretFile }, {})).to.throw(/not both/);
      expect(() => iscsiSecretFile({ 'iscsi-mutual-chap-secret-file': join(dir, 'none') }, {})).to.throw(/ENOENT/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
