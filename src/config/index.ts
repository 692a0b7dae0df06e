// Configuration of a Tabula node: /etc/tabula/tabula.yaml, TABULA_* environment
// and flags, validated into one effective TabulaConfig.
export * from './schema.js';
export * from './load.js';
export * from './daemon-options.js';
export { prepareNode, isBlank, mountedAt, linkContainers, DEVICE_LINK_PREFIX, type PreparedContainer } from './prepare.js';
