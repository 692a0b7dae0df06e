// `tabula check`: the controller verifies the invariants from its database;
// each violation is one line on stdout and the exit status is 1. Warnings
// (degraded segments of mirrored vdisks) are lines too, but not failures.
import type { Argv } from 'yargs';
import { adminOptions, withAdmin } from './admin-client.js';
import { print, printJson } from './output.js';

export function checkCommand(y: Argv): Argv {
  return y.command(
    'check',
    'verify the invariants of tables, reference counts and free space',
    (a) => adminOptions(a),
    async (args) => {
      const r = await withAdmin(args, (s) => s.call('Check', {}));
      const warnings = (r.warnings ?? []).map((w) => `warning: ${w}`);
      // The JSON of a reply without warnings stays as it was before there were any.
      if (args.json) printJson(warnings.length > 0 ? r : { ok: r.ok, violations: r.violations });
      else if (r.ok) print(['ok: all invariants hold', ...warnings].join('\n'));
      else print([...r.violations.map((v) => `violation: ${v}`), ...warnings].join('\n'));
      if (!r.ok) {
        process.stderr.write(`tabula: check found ${r.violations.length} invariant violation${r.violations.length === 1 ? '' : 's'}\n`);
        process.exitCode = 1;
      }
    },
  );
}
