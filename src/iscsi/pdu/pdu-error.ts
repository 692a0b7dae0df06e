// The one error type of the codec: carries the Reject reason the connection
// layer should answer with, and a message saying which PDU and field failed.
import { RejectReason } from './types.js';

export class PduError extends Error {
  readonly reason: RejectReason;

  constructor(reason: RejectReason, message: string) {
    super(message);
    this.name = 'PduError';
    this.reason = reason;
  }
}
