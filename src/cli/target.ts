// `tabula target`: serve files or block devices as LUN 0..n-1 of one iSCSI
// target, without the controller or tables. Useful by itself, a storage node
// for agents that reach containers over iSCSI, and the baseline for the
// table-driven path. The command checks its flags; src/daemon/file-target.ts
// serves.
import type { Argv } from 'yargs';
import { parseHostPort, parseSize } from '../util/size.js';
import { parseCredentials } from './credentials.js';

export const DEFAULT_TARGET_IQN = 'iqn.2026-11.org.tabula:target';

interface TargetArgs {
  file: string[];
  size?: string[];
  portal: string;
  iqn: string;
  chap?: string;
  'mutual-chap'?: string;
  'block-size': number;
  'allow-initiator'?: string[];
  'read-only': boolean;
}

/**
 * The size of each file from the repeated --size: none, one for every file,
 * or one per file in order.
 */
export function sizesPerFile(files: readonly string[], sizes: readonly string[] | undefined): (number | undefined)[] {
  if (sizes === undefined || sizes.length === 0) return files.map(() => undefined);
  const parsed = sizes.map((s) => parseSize(s));
  if (parsed.length === 1) return files.map(() => parsed[0]);
  if (parsed.length !== files.length) {
    throw new Error(`--size given ${parsed.length} times for ${files.length} files: give one size for all, or one per --file in order`);
  }
  return parsed;
}

export function targetCommand(y: Argv): Argv {
  return y.command<TargetArgs>(
    'target',
    'serve files or block devices as LUN 0..n-1 of an iSCSI target',
    (a) =>
      a
        .option('file', {
          type: 'string',
          array: true,
          demandOption: true,
          describe: 'backing file or block device (repeatable: LUN 0, 1, ... in order; a file is created sparse if missing and --size is given)',
        })
        .option('size', { type: 'string', array: true, describe: 'create or grow the files to this size (e.g. 1GiB): once for all, or once per --file' })
        .option('portal', { type: 'string', default: '127.0.0.1:3260', describe: 'HOST:PORT to listen on' })
        .option('iqn', { type: 'string', default: DEFAULT_TARGET_IQN, describe: 'target name' })
        .option('chap', { type: 'string', describe: 'USER:SECRET the initiator must present (CHAP)' })
        .option('mutual-chap', { type: 'string', describe: 'USER:SECRET the target presents (mutual CHAP)' })
        .option('block-size', { type: 'number', default: 512, choices: [512, 4096], describe: 'logical block size of every LUN' })
        .option('allow-initiator', { type: 'string', array: true, describe: 'initiator IQN allowed to log in (repeatable; default: any)' })
        .option('read-only', { type: 'boolean', default: false, describe: 'refuse writes (DATA PROTECT)' }) as unknown as Argv<TargetArgs>,
    async (args) => {
      const portal = parseHostPort(args.portal, 3260);
      const files = args.file.map(String);
      const sizes = sizesPerFile(files, args.size?.map(String));
      const chap = args.chap ? parseCredentials(args.chap, '--chap') : undefined;
      const mutualChap = args['mutual-chap'] ? parseCredentials(args['mutual-chap'], '--mutual-chap') : undefined;
      if (mutualChap && !chap) throw new Error('--mutual-chap needs --chap as well');
      // The iSCSI and SCSI stacks load only for this command (CLI start-up).
      const { runFileTarget } = await import('../daemon/file-target.js');
      await runFileTarget({
        luns: files.map((file, i) => ({ file, size: sizes[i] })),
        blockSize: args['block-size'] as 512 | 4096,
        readOnly: args['read-only'],
        iqn: args.iqn,
        host: portal.host,
        port: portal.port,
        chap,
        mutualChap,
        allowedInitiators: args['allow-initiator'] ?? null,
      });
    },
  );
}
