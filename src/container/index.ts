// Storage containers: the on-disk label, drivers, init and scanning.
export * from './label.js';
export * from './driver.js';
export * from './file-driver.js';
export * from './init.js';
export * from './scan.js';
export { expandGlob } from './glob.js';
