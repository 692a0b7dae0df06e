import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseCircular, parseDependencyTree } from 'dpdm';

// No import cycles in src/, checked with dpdm. A cycle makes two modules one
// unit that cannot be read, tested or replaced apart, and with ES modules one
// of them sees the other half-initialised. `import type` and `import()`
// count: a type-only cycle is still two files that must change together.

/** The repository root, from test/unit/. */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Each import cycle among the TypeScript files under `dir`: paths relative to `dir`, from the first in sort order, which is repeated at the end. */
async function importCycles(dir: string): Promise<string[][]> {
  const tree = await parseDependencyTree('**/*.ts', {
    cwd: dir,
    context: dir,
    // The project's module resolution: './x.js' names x.ts (NodeNext).
    tsconfig: join(ROOT, 'tsconfig.json'),
    transform: false, // keep `import type` edges
    skipDynamicImports: false,
  });
  return parseCircular(tree).map((cycle) => {
    const first = cycle.indexOf([...cycle].sort()[0]!);
    const from = [...cycle.slice(first), ...cycle.slice(0, first)];
    return [...from, from[0]!];
  });
}

describe('import cycles', function () {
  this.timeout(30_000); // dpdm reads all of src/ (about 2 s on a busy machine)

  it('src/ has none', async () => {
    const cycles = await importCycles(join(ROOT, 'src'));
    const listed = cycles.map((c) => `  ${c.join(' -> ')}`).join('\n');
    expect(cycles, `import cycles in src/:\n${listed}`).to.deep.equal([]);
  });

  // Guards the check itself: a dpdm whose defaults changed must not pass src/ by seeing less.
  it('the check sees static, type-only and dynamic imports written with .js', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tabula-cycles-'));
    try {
      writeFileSync(join(dir, 'a.ts'), "import type { B } from './b.js';\nexport interface A { b?: B }\n");
      writeFileSync(join(dir, 'b.ts'), "import { c } from './c.js';\nexport interface B { c: typeof c }\n");
      writeFileSync(join(dir, 'c.ts'), "export const c = 1;\nexport async function load(): Promise<unknown> {\n  return import('./a.js');\n}\n");
      writeFileSync(join(dir, 'd.ts'), "import { c } from './c.js';\nexport const d = c;\n");
      expect(await importCycles(dir)).to.deep.equal([['a.ts', 'b.ts', 'c.ts', 'a.ts']]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
