// Tabula's iSCSI initiator: what the iSCSI container driver imports.
//   login.ts        the login phase as a pure state machine (CHAP, mutual CHAP, operational keys, redirects)
//   session.ts      one session in full-feature phase behind a Wire (tasks, CmdSN window, R2T, Data-In, NOP, abort, logout)
//   connect.ts      the socket edge: TCP connect + login, then a session over the socket
//   reconnecting.ts a ScsiTransport that reconnects with backoff, reinstates the session and re-runs lost commands within a hold
//   pool.ts         N reconnecting sessions to one target as one transport
//   discovery.ts    SendTargets=All; report-luns.ts REPORT LUNS; cdb.ts CDB builders and sense fields
export { TransportError, type ScsiRequest, type ScsiResult, type ScsiTransport, type TransportErrorKind, type TransportState } from './transport.js';
export {
  InitiatorLogin,
  InitiatorLoginState,
  loginStatusName,
  LoginRedirect,
  parseTargetAddress,
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
