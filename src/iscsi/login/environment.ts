// What the login logic needs to know about the target and the session table,
// injected by the portal server so the login machine stays pure (no sockets,
// no global state). Re-exported from login-machine.ts.

export interface TargetAuth {
  user: string;
  secret: string;
}

export interface PortalInfo {
  address: string;
  port: number;
  tpgt: number;
}

export interface TargetInfo {
  name: string;
  alias?: string;
  /** The initiator must authenticate with these; absent = AuthMethod None allowed. */
  chap?: TargetAuth;
  /** The target's own credentials when the initiator asks for mutual CHAP. */
  mutualChap?: TargetAuth;
  /** null/undefined = any initiator. Compared case-insensitively (iSCSI names are). */
  allowedInitiators?: string[] | null;
  /** Every portal of the target, for SendTargets. */
  portals: PortalInfo[];
}

/** The target's side of operational negotiation (its limits and preferences). */
export interface TargetLimits {
  maxRecvDataSegmentLength: number;
  maxBurstLength: number;
  firstBurstLength: number;
  maxOutstandingR2T: number;
  immediateData: boolean;
  initialR2T: boolean;
  defaultTime2Wait: number;
  defaultTime2Retain: number;
}

export interface AdmitRequest {
  sessionType: 'Discovery' | 'Normal';
  initiatorName: string;
  targetName?: string;
  isid: number;
  tsih: number;
  cid: number;
}

export type AdmitResult = { ok: true; tsih: number } | { ok: false; statusClass: number; statusDetail: number };

export interface LoginEnvironment {
  target(name: string): TargetInfo | undefined;
  /** Every target, for SendTargets=All; without it SendTargets=All answers nothing. */
  targets?(): Iterable<TargetInfo>;
  discoveryAuth?: { chap?: TargetAuth; mutualChap?: TargetAuth };
  /** TPGT of the portal this connection arrived on. */
  portalGroupTag: number;
  limits: TargetLimits;
  /**
   * Called once, when the login is about to complete (T bit to FullFeature
   * accepted): allocate a new session (tsih 0) or reinstate/add; may refuse.
   */
  admit(req: AdmitRequest): AdmitResult;
}

/** iSCSI names compare case-insensitively (RFC 7143 4.2.7.1: normalised to lower case). */
export function initiatorAllowed(target: TargetInfo, initiatorName: string): boolean {
  const acl = target.allowedInitiators;
  if (acl === null || acl === undefined) return true;
  const name = initiatorName.toLowerCase();
  return acl.some((a) => a.toLowerCase() === name);
}
