// The mapping table of one vdisk, shared by the controller and the agent.
export * from './segment-state.js';
export * from './mapping-table.js';
export * from './extents.js';
export * from './delta.js';
export * from './format.js';
export * from './runs.js';
