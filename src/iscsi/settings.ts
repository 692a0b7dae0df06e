// Target-side iSCSI settings: what the target offers in negotiation and how it
// polices connections. One object per portal server; tests shorten the timers.

export interface IscsiSettings {
  /** The largest data segment the target accepts (declared MaxRecvDataSegmentLength). */
  maxRecvDataSegmentLength: number;
  maxBurstLength: number;
  firstBurstLength: number;
  maxOutstandingR2T: number;
  immediateData: boolean;
  initialR2T: boolean;
  defaultTime2Wait: number;
  defaultTime2Retain: number;
  /** Commands a session may have outstanding (CmdSN window size). */
  queueDepth: number;
  /** Seconds a connection may take to complete login. */
  loginTimeoutSec: number;
  /** Idle seconds before the target pings the initiator with a NOP-In (0 = never). */
  nopIntervalSec: number;
  /** Seconds without any PDU after a ping before the connection is dropped. */
  nopTimeoutSec: number;
}

export const defaultIscsiSettings: IscsiSettings = {
  maxRecvDataSegmentLength: 256 * 1024,
  maxBurstLength: 1024 * 1024,
  firstBurstLength: 256 * 1024,
  maxOutstandingR2T: 8,
  immediateData: true,
  initialR2T: false,
  defaultTime2Wait: 2,
  defaultTime2Retain: 0,
  queueDepth: 128,
  loginTimeoutSec: 15,
  nopIntervalSec: 10,
  nopTimeoutSec: 30,
};
