// `tabula config check [--file F] [--set KEY=VALUE]...`: validate the node's
// configuration (file, TABULA_* environment, flags) and print the effective
// result, secrets masked, or every problem, each naming its key.
import type { Argv } from 'yargs';
import {
  ConfigError,
  configFilePath,
  loadConfig,
  notApplied,
  parseSetting,
  resolveTls,
  resolveToken,
  type TabulaConfig,
} from '../config/index.js';
import { formatSize } from '../util/size.js';
import { print, printJson } from './output.js';

const MASK = '********';

/** The effective configuration as the file would spell it, secrets masked. */
export function effectiveDocument(cfg: TabulaConfig): Record<string, unknown> {
  const s = cfg.security;
  return {
    role: cfg.role,
    'data-dir': cfg.dataDir,
    ...(cfg.dataDevice ? { 'data-device': cfg.dataDevice } : {}),
    'log-level': cfg.logLevel,
    controller: {
      listen: cfg.controller.listen,
      address: cfg.controller.address,
      db: cfg.controller.db,
      ...(cfg.controller.ackTimeoutSec !== undefined ? { 'ack-timeout': cfg.controller.ackTimeoutSec } : {}),
      ...(cfg.controller.holdTimeoutSec !== undefined ? { 'hold-timeout': cfg.controller.holdTimeoutSec } : {}),
      ...(cfg.controller.commandTimeoutSec !== undefined ? { 'command-timeout': cfg.controller.commandTimeoutSec } : {}),
      ...(cfg.controller.durableIntervalSec !== undefined ? { 'durable-interval': cfg.controller.durableIntervalSec } : {}),
      ...(cfg.controller.mirrors.rebuildDelaySec !== undefined ? { mirrors: { 'rebuild-delay': cfg.controller.mirrors.rebuildDelaySec } } : {}),
      ...retentionDocument(cfg),
    },
    agent: {
      name: cfg.agent.name,
      portals: cfg.agent.portals,
      containers: cfg.agent.containers,
      ...(cfg.agent.holdTimeoutSec !== undefined ? { 'hold-timeout': cfg.agent.holdTimeoutSec } : {}),
    },
    'containers-init': cfg.containersInit.map((c) => ({
      device: c.device,
      ...(c.size !== undefined ? { size: formatSize(c.size) } : {}),
      ...(c.segmentSize !== undefined ? { 'segment-size': formatSize(c.segmentSize) } : {}),
    })),
    'all-in-one': { size: cfg.allInOne.size === undefined ? '1GiB (default, when disk0 is created)' : formatSize(cfg.allInOne.size) },
    ...(cfg.role === 'storage'
      ? {
          storage: {
            luns: cfg.storage.luns.map((l) => (l.size === undefined ? l.path : { path: l.path, size: formatSize(l.size) })),
            portal: cfg.storage.portal,
            iqn: cfg.storage.iqn,
            'block-size': cfg.storage.blockSize,
          },
        }
      : {}),
    security: {
      ...(s.token !== undefined ? { token: MASK } : {}),
      ...(s.tokenFile !== undefined ? { 'token-file': s.tokenFile } : {}),
      ...(s.tls ? { tls: { ...s.tls } } : {}),
      ...(s.chap
        ? { chap: { user: s.chap.user, secret: MASK, ...(s.chap.mutualUser ? { 'mutual-user': s.chap.mutualUser, 'mutual-secret': MASK } : {}) } }
        : {}),
      'allowed-initiators': s.allowedInitiators,
    },
  };
}

interface CheckArgs {
  file?: string;
  set?: string[];
  json: boolean;
}

export function configCommand(y: Argv): Argv {
  return y.command('config', 'the node configuration (/etc/tabula/tabula.yaml)', (c) =>
    c
      .command<CheckArgs>(
        'check',
        'validate the configuration and print the effective settings (file, then TABULA_* environment, then --set)',
        (a) =>
          a
            .option('file', { type: 'string', describe: `YAML file (default TABULA_CONFIG or ${configFilePath({ env: {} })})` })
            .option('set', { type: 'string', array: true, describe: 'override a key, e.g. --set agent.portals=[0.0.0.0:3260]' })
            .option('json', { type: 'boolean', default: false, describe: 'print the effective configuration as JSON' }) as unknown as Argv<CheckArgs>,
        async (args) => {
          try {
            const overrides: Record<string, unknown> = {};
            for (const s of args.set ?? []) {
              const [k, v] = parseSetting(s);
              overrides[k] = v;
            }
            const loaded = loadConfig({ file: args.file, overrides });
            // Referenced files must be readable by the daemon too.
            resolveToken(loaded.config);
            resolveTls(loaded.config.security.tls);
            const doc = effectiveDocument(loaded.config);
            const warnings = notApplied(loaded.config);
            if (args.json) {
              printJson({ file: loaded.file, fromEnv: loaded.fromEnv, fromFlags: loaded.fromFlags, warnings, config: doc });
              return;
            }
            const from = [loaded.file ?? `${configFilePath({ file: args.file })} (absent: defaults)`];
            if (loaded.fromEnv.length > 0) from.push(`environment: ${loaded.fromEnv.join(', ')}`);
            if (loaded.fromFlags.length > 0) from.push(`flags: ${loaded.fromFlags.join(', ')}`);
            print(`# configuration OK, from ${from.join('; ')}`);
            for (const w of warnings) print(`# warning: ${w}`);
            const { stringify } = await import('yaml');
            print(stringify(doc).trimEnd());
          } catch (e) {
            if (!(e instanceof ConfigError)) throw e;
            // Every problem on its own line, then a non-zero exit (main's fail handler adds nothing).
            process.stderr.write(`tabula: configuration invalid: ${e.source}\n${e.problems.map((p) => `  ${p}\n`).join('')}`);
            process.exit(1);
          }
        },
      )
      .demandCommand(1, 'name a config command: check'),
  );
}

/** controller.retention as the file spells it, only what was set (the rest: the controller's defaults). */
function retentionDocument(cfg: TabulaConfig): { retention?: Record<string, Record<string, number>> } {
  const out: Record<string, Record<string, number>> = {};
  for (const k of ['faults', 'events'] as const) {
    const l = cfg.controller.retention[k];
    const doc: Record<string, number> = {};
    if (l.maxRows !== undefined) doc['max-rows'] = l.maxRows;
    if (l.maxAgeDays !== undefined) doc['max-age-days'] = l.maxAgeDays;
    if (Object.keys(doc).length > 0) out[k] = doc;
  }
  return Object.keys(out).length === 0 ? {} : { retention: out };
}
