// `tabula certs ca|issue`: a private CA and the certificates for mutual TLS
// on the controller API (src/security/certs.ts does the work).
import type { Argv } from 'yargs';
import type { CertUsage, WrittenFiles } from '../security/certs.js';
import { CliError, quietLogs } from './admin-client.js';
import { print, printJson } from './output.js';

interface CaArgs {
  out: string;
  name?: string;
  days?: number;
  force: boolean;
  json: boolean;
}

interface IssueArgs extends CaArgs {
  ca: string;
  name: string;
  san?: string[];
  client?: boolean;
  server?: boolean;
}

function report(w: WrittenFiles, json: boolean): void {
  if (json) {
    printJson({ cert: w.cert, key: w.key, subject: w.subject, notAfter: w.notAfter.toISOString(), sans: w.sans });
    return;
  }
  print(`certificate ${w.cert}`);
  print(`key         ${w.key} (mode 0600)`);
  print(`subject     ${w.subject}${w.sans.length > 0 ? `, ${w.sans.join(', ')}` : ''}; valid until ${w.notAfter.toISOString().slice(0, 10)}`);
}

// Loaded on use: the X.509 library is most of what `tabula` would load at
// start, and no other command needs it.
type Certs = typeof import('../security/certs.js');

async function cliErrors<T>(fn: (certs: Certs) => Promise<T>): Promise<T> {
  const certs = await import('../security/certs.js');
  try {
    return await fn(certs);
  } catch (e) {
    if (e instanceof certs.CertError) throw new CliError(e.message);
    throw e;
  }
}

export function certsCommand(y: Argv): Argv {
  return y.command('certs', 'make a CA and certificates for TLS on the controller API', (c) =>
    c
      .command<CaArgs>(
        'ca',
        'make a CA: DIR/ca.crt and DIR/ca.key',
        (a) =>
          a
            .option('out', { type: 'string', demandOption: true, describe: 'directory for ca.crt and ca.key' })
            .option('name', { type: 'string', describe: 'common name of the CA (default "Tabula CA")' })
            .option('days', { type: 'number', describe: 'validity in days (default 3650)' })
            .option('force', { type: 'boolean', default: false, describe: 'replace existing files' })
            .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON' }) as unknown as Argv<CaArgs>,
        async (args) => {
          quietLogs();
          report(await cliErrors(({ createCa }) => createCa({ out: args.out, commonName: args.name, days: args.days, force: args.force })), args.json);
        },
      )
      .command<IssueArgs>(
        'issue',
        'issue a certificate signed by the CA: OUT/NAME.crt and OUT/NAME.key',
        (a) =>
          a
            .option('ca', { type: 'string', demandOption: true, describe: 'directory of the CA (ca.crt, ca.key)' })
            .option('name', { type: 'string', demandOption: true, describe: 'common name, also the file names' })
            .option('out', { type: 'string', demandOption: true, describe: 'directory for the certificate and key' })
            .option('san', { type: 'string', array: true, describe: 'host name or IP address the certificate is for (repeatable; servers: default NAME, localhost, 127.0.0.1, ::1)' })
            .option('server', { type: 'boolean', describe: 'for a server only (the controller)' })
            .option('client', { type: 'boolean', describe: 'for a client only (an agent or an admin)' })
            .conflicts('server', 'client')
            .option('days', { type: 'number', describe: 'validity in days (default 825, never past the CA)' })
            .option('force', { type: 'boolean', default: false, describe: 'replace existing files' })
            .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON' }) as unknown as Argv<IssueArgs>,
        async (args) => {
          quietLogs();
          const usage: CertUsage = args.server === true ? 'server' : args.client === true ? 'client' : 'both';
          const w = await cliErrors(({ issueCert }) =>
            issueCert({ ca: args.ca, name: args.name, out: args.out, sans: args.san, usage, days: args.days, force: args.force }),
          );
          report(w, args.json);
        },
      )
      .demandCommand(1, 'name a certs command: ca or issue'),
  );
}
