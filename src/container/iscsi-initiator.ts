// The IscsiConnector over this project's own initiator (src/iscsi/initiator).
import { TransportError } from '../iscsi/initiator/transport.js';
import type { IscsiConnector } from './iscsi-client.js';

// Until the initiator lands, every connection fails as an unreachable target.
export const initiatorConnector: IscsiConnector = {
  connect: () => Promise.reject(new TransportError('unreachable', 'this build has no iSCSI initiator')),
  discover: () => Promise.reject(new TransportError('unreachable', 'this build has no iSCSI initiator')),
};
