// `tabula` from source for tests: what bin/tabula.js runs, without the build.
import { main } from '../../src/cli/main.js';

await main(process.argv.slice(2));
