// Storage containers: the on-disk label, drivers, init and scanning.
export * from './label.js';
export * from './driver.js';
export * from './file-driver.js';
export * from './init.js';
export * from './scan.js';
export { expandGlob } from './glob.js';
export * from './iscsi-locator.js';
export * from './iscsi-client.js';
export { IscsiContainerDriver, iscsiPath, readLunLabel, type IscsiDriverOptions } from './iscsi-driver.js';
export { IscsiLun, type IscsiLunOptions, type LunGeometry } from './iscsi-lun.js';
export { scanIscsiLocator, connectLun, readIscsiLabel, type IscsiScanOptions, type IscsiScanResult } from './iscsi-scan.js';
