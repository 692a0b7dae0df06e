// `tabula agent`: the agent daemon for real deployments. Serves the vdisks the
// controller exports on this agent through its iSCSI portals, from the
// containers its globs find; keeps serving while the controller is away.
import { readFileSync } from 'node:fs';
import type { Argv } from 'yargs';
import { formatAddress, startAgent } from '../agent/index.js';
import type { AgentIscsiAuth } from '../agent/targets.js';
import { log } from '../util/log.js';
import { parseHostPort } from '../util/size.js';
import { runUntilSignal } from './signals.js';

interface AgentArgs {
  controller?: string;
  name?: string;
  portal?: string[];
  containers?: string[];
  'hold-timeout'?: number;
  token?: string;
}

function need<T>(v: T | undefined, what: string): T {
  if (v === undefined || (Array.isArray(v) && v.length === 0)) throw new Error(`missing ${what}`);
  return v;
}

/**
 * Registers `tabula agent`. `sub` lets admin subcommands (`tabula agent ls`)
 * live under the same word; the daemon's options are therefore checked in
 * its handler rather than demanded by yargs.
 */
export function agentCommand(y: Argv, sub?: (a: Argv) => Argv): Argv {
  return y.command<AgentArgs>(
    'agent',
    'run the agent daemon: serve exported vdisks over iSCSI from local containers',
    (a) => {
      const b = a
        .option('controller', { type: 'string', describe: 'controller address HOST:PORT' })
        .option('name', { type: 'string', describe: 'agent name, unique per agent ([A-Za-z0-9._-]{1,64})' })
        .option('portal', { type: 'string', array: true, describe: 'iSCSI portal HOST:PORT to listen on (repeatable)' })
        .option('containers', { type: 'string', array: true, describe: 'globs of container files or block devices' })
        .option('hold-timeout', { type: 'number', describe: 'seconds a faulted I/O is held before NOT READY (default: the controller\'s, 10)' })
        .option('token', { type: 'string', describe: 'shared secret the controller requires (or TABULA_TOKEN)' });
      return (sub ? sub(chapOptions(b)) : chapOptions(b)) as unknown as Argv<AgentArgs>;
    },
    async (args) => {
      const controller = need(args.controller, '--controller HOST:PORT');
      parseHostPort(controller, 7360); // a one-line error for a bad address, before anything starts
      const name = need(args.name, '--name NAME');
      const portals = need(args.portal, '--portal HOST:PORT');
      const containers = need(args.containers, '--containers GLOB...');
      const hold = args['hold-timeout'];
      if (hold !== undefined && (!Number.isFinite(hold) || hold <= 0 || hold > 3600)) {
        throw new Error(`--hold-timeout ${hold} out of range: give seconds, more than 0 and at most 3600`);
      }
      const agent = await startAgent({
        controller,
        name,
        portals,
        containers,
        holdTimeoutMs: hold === undefined ? undefined : Math.round(hold * 1000),
        token: args.token ?? process.env.TABULA_TOKEN,
        iscsiAuth: chapSettings(args as ChapArgs),
      });
      process.stdout.write(`agent ${agent.name} serving on ${agent.portals.map(formatAddress).join(', ')}\n`);
      await runUntilSignal(async (signal) => {
        log.info('stopping agent', { signal });
        await agent.close();
      });
    },
  );
}

// ---- iSCSI CHAP (agent-local; applies to every target the agent serves and to discovery) ----

export interface ChapArgs {
  'chap-user'?: string;
  'chap-secret'?: string;
  'chap-secret-file'?: string;
  'mutual-user'?: string;
  'mutual-secret'?: string;
  'mutual-secret-file'?: string;
}

/** RFC 7143 12.1.3 asks for secrets of at least 96 bits; initiators such as Windows enforce 12 characters. */
export const MIN_CHAP_SECRET = 12;

function chapOptions(a: Argv): Argv {
  return a
    .option('chap-user', { type: 'string', describe: 'CHAP: user name initiators must log in with (every target and discovery)' })
    .option('chap-secret', { type: 'string', describe: 'CHAP: their secret (or --chap-secret-file, or TABULA_CHAP_SECRET)' })
    .option('chap-secret-file', { type: 'string', describe: 'CHAP: file holding the secret (first line)' })
    .option('mutual-user', { type: 'string', describe: 'mutual CHAP: user name the agent answers with' })
    .option('mutual-secret', { type: 'string', describe: 'mutual CHAP: the agent\'s secret (or --mutual-secret-file, or TABULA_MUTUAL_SECRET)' })
    .option('mutual-secret-file', { type: 'string', describe: 'mutual CHAP: file holding the agent\'s secret (first line)' });
}

function secretOf(value: string | undefined, file: string | undefined, envName: string, option: string, env: NodeJS.ProcessEnv): string | undefined {
  if (value !== undefined && file !== undefined) throw new Error(`give --${option} or --${option}-file, not both`);
  if (file !== undefined) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new Error(`--${option}-file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    const line = text.split(/\r?\n/)[0] ?? '';
    if (line === '') throw new Error(`--${option}-file ${file}: the first line is empty`);
    return line;
  }
  return value ?? (env[envName] || undefined);
}

/** The agent's CHAP settings from its flags, files and environment; one-line errors for incomplete ones. */
export function chapSettings(args: ChapArgs, env: NodeJS.ProcessEnv = process.env): AgentIscsiAuth {
  const secret = secretOf(args['chap-secret'], args['chap-secret-file'], 'TABULA_CHAP_SECRET', 'chap-secret', env);
  const mutualSecret = secretOf(args['mutual-secret'], args['mutual-secret-file'], 'TABULA_MUTUAL_SECRET', 'mutual-secret', env);
  const user = args['chap-user'];
  const mutualUser = args['mutual-user'];
  const out: AgentIscsiAuth = {};
  if (user !== undefined || args['chap-secret'] !== undefined || args['chap-secret-file'] !== undefined) {
    if (!user) throw new Error('--chap-secret needs --chap-user');
    if (secret === undefined) throw new Error('--chap-user needs a secret: --chap-secret, --chap-secret-file or TABULA_CHAP_SECRET');
    if (secret.length < MIN_CHAP_SECRET) throw new Error(`the CHAP secret must be at least ${MIN_CHAP_SECRET} characters (it has ${secret.length})`);
    out.chap = { user, secret };
  }
  if (mutualUser !== undefined || args['mutual-secret'] !== undefined || args['mutual-secret-file'] !== undefined) {
    if (out.chap === undefined) throw new Error('mutual CHAP needs --chap-user and a CHAP secret as well');
    if (!mutualUser) throw new Error('--mutual-secret needs --mutual-user');
    if (mutualSecret === undefined) throw new Error('--mutual-user needs a secret: --mutual-secret, --mutual-secret-file or TABULA_MUTUAL_SECRET');
    if (mutualSecret.length < MIN_CHAP_SECRET) throw new Error(`the mutual CHAP secret must be at least ${MIN_CHAP_SECRET} characters (it has ${mutualSecret.length})`);
    if (mutualSecret === out.chap.secret) throw new Error('the mutual CHAP secret must differ from the CHAP secret (RFC 7143 12.1.3)');
    out.mutualChap = { user: mutualUser, secret: mutualSecret };
  }
  return out;
}
