// Mocha root setup: keep test output readable (warnings and errors only,
// unless TABULA_LOG_LEVEL says otherwise).
import { setLogLevel } from '../src/util/log.js';

setLogLevel(process.env.TABULA_LOG_LEVEL ?? 'error');
