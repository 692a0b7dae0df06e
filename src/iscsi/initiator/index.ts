// Tabula's iSCSI initiator: what the iSCSI container driver imports.
export { TransportError, type ScsiRequest, type ScsiResult, type ScsiTransport, type TransportErrorKind, type TransportState } from './transport.js';
export {
  InitiatorLogin,
  InitiatorLoginState,
  loginStatusName,
  type ChapSecret,
  type DigestChoice,
  type InitiatorParams,
  type LoginOptions,
  type LoginResult,
} from './login.js';
export { ConnectionLostError, IscsiInitiatorSession, describeCdb, type SessionOptions, type Wire } from './session.js';
export { connectSession, randomIsid, type ConnectOptions } from './connect.js';
export { ReconnectingSession, type ReconnectingOptions, type StateListener } from './reconnecting.js';
export { discoverTargets, parseSendTargets, DEFAULT_INITIATOR_NAME, type DiscoveredTarget, type DiscoveryOptions } from './discovery.js';
export { reportLuns, parseReportLuns, ScsiStatusError } from './report-luns.js';
export {
  ScsiStatus,
  inquiryCdb,
  read16Cdb,
  readCapacity16Cdb,
  senseCode,
  senseKey,
  synchronizeCache16Cdb,
  testUnitReadyCdb,
  write16Cdb,
} from './cdb.js';
export { IscsiSessionPool } from './pool.js';
