// Configuration of a Tabula node: /etc/tabula/tabula.yaml, TABULA_* environment
// and flags, validated into one effective TabulaConfig. Only loading and
// checking: what a daemon does with it is src/daemon.
export * from './schema.js';
export * from './load.js';
export * from './secrets.js';
