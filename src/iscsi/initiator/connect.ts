// The socket edge of the initiator: open a TCP connection to a portal, run
// the login state machine over it, and hand the logged-in connection to an
// IscsiInitiatorSession. Everything here is bounded by loginTimeoutMs.

import { connect as netConnect, type OnReadOpts, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { encodePdu } from '../pdu/encode.js';
import { PduParser } from '../pdu/parser.js';
import { Opcode } from '../pdu/types.js';
import { DEFAULT_INITIATOR_MRDSL, InitiatorLogin, LoginRedirect, type LoginOptions, type LoginResult } from './login.js';
import { IscsiInitiatorSession, type SessionOptions, type Wire } from './session.js';
import { TransportError } from './transport.js';

export interface ConnectOptions extends Omit<LoginOptions, 'isid'>, SessionOptions {
  host: string;
  port: number;
  /** 48-bit ISID (default: random, with the "random" qualifier type 0b11 in the top bits). */
  isid?: number;
  /** Bound on TCP connect plus the whole login (default 10 s). */
  loginTimeoutMs?: number;
}

/** A fresh random ISID (RFC 7143 10.12.5, type 3: random). */
export function randomIsid(): number {
  const b = randomBytes(6);
  b[0] = 0xc0 | ((b[0] as number) & 0x3f);
  return b.readUIntBE(0, 6);
}

export interface LoggedInConnection {
  socket: Socket;
  /** Holds any bytes the target sent after the final Login Response. */
  parser: PduParser;
  result: LoginResult;
  /** Where the socket's bytes go from now on (nowhere until set). */
  reads: SocketReads;
}

/** Bytes of one socket read (64 KiB is what node reads at most by default; Data-In of 256 KiB fills it). */
const READ_BUFFER_BYTES = 256 * 1024;

/**
 * The socket reads into one buffer, reused while the parser keeps nothing
 * of it: node's default allocates a buffer per read, and that memory,
 * counted as external, drove full garbage collections at high IOPS. When
 * the parser still refers to bytes of it (a PDU that spans reads, or the
 * header of one whose data is still to come), the next read goes to a fresh
 * buffer instead.
 */
export class SocketReads {
  private buf = Buffer.allocUnsafe(READ_BUFFER_BYTES);
  /** Gets each read's bytes: a view valid only during the call unless the parser keeps them. */
  sink: ((view: Buffer) => void) | undefined;

  constructor(private readonly parser: PduParser) {}

  /** The `onread` option of net.connect. */
  options(): OnReadOpts {
    return {
      buffer: () => {
        if (this.parser.holdsInput) this.buf = Buffer.allocUnsafe(READ_BUFFER_BYTES);
        return this.buf;
      },
      callback: (n, buf) => {
        this.sink?.(Buffer.from(buf.buffer, buf.byteOffset, n));
        return true; // false would stop reading
      },
    };
  }
}

function portalOf(o: { host: string; port: number }): string {
  return o.host.includes(':') ? `[${o.host}]:${o.port}` : `${o.host}:${o.port}`;
}

/** Redirections followed before a login counts as failed. */
const MAX_REDIRECTS = 3;

/** TCP connect and login, following the target's redirections; the socket comes back paused. */
export async function openConnection(opts: ConnectOptions & { isid: number }): Promise<LoggedInConnection> {
  let at = opts;
  for (let hop = 0; ; hop++) {
    try {
      return await loginOnce(at);
    } catch (e) {
      if (!(e instanceof LoginRedirect) || hop === MAX_REDIRECTS) throw e;
      at = { ...at, host: e.to.host, port: e.to.port };
    }
  }
}

function loginOnce(opts: ConnectOptions & { isid: number }): Promise<LoggedInConnection> {
  const portal = portalOf(opts);
  const timeoutMs = opts.loginTimeoutMs ?? 10_000;
  const machine = new InitiatorLogin(opts);
  const parser = new PduParser({ maxDataSegmentLength: Math.max(opts.maxRecvDataSegmentLength ?? DEFAULT_INITIATOR_MRDSL, 8192) });
  const reads = new SocketReads(parser);
  return new Promise<LoggedInConnection>((resolve, reject) => {
    const socket = netConnect({ host: opts.host, port: opts.port, onread: reads.options() });
    socket.setNoDelay(true);
    let done = false;
    const finish = (err: TransportError | undefined, result?: LoginResult): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      reads.sink = undefined;
      // onError stays (a no-op now): an error between here and the session's own listener must not go unhandled.
      socket.removeListener('close', onClose);
      if (err) {
        socket.destroy();
        reject(err);
        return;
      }
      socket.pause();
      resolve({ socket, parser, result: result as LoginResult, reads });
    };
    const timer = setTimeout(
      () => finish(new TransportError('unreachable', `iSCSI login to ${opts.targetName ?? 'discovery'} at ${portal}: no login within ${timeoutMs} ms`)),
      timeoutMs,
    );
    const onError = (e: Error): void => finish(new TransportError('unreachable', `iSCSI connection to ${portal}: ${e.message}`));
    const onClose = (): void => finish(new TransportError('unreachable', `iSCSI connection to ${portal} closed during login`));
    const onData = (chunk: Buffer): void => {
      parser.push(chunk);
      try {
        for (;;) {
          if (done) return;
          const r = parser.next();
          if (r === null) return;
          if (!r.ok) throw new TransportError('protocol', `login: ${r.message}`);
          if (r.pdu.opcode !== Opcode.LoginResponse) throw new TransportError('protocol', `login: target sent opcode 0x${r.pdu.opcode.toString(16)} during login`);
          const step = machine.receive(r.pdu);
          if (step.kind === 'send') {
            socket.write(Buffer.concat(encodePdu(step.pdu, { header: false, data: false })));
          } else {
            finish(undefined, step.result);
            return;
          }
        }
      } catch (e) {
        if (e instanceof LoginRedirect) {
          finish(e);
        } else if (e instanceof TransportError) {
          finish(new TransportError(e.kind, `${e.message} (portal ${portal})`));
        } else {
          finish(new TransportError('protocol', `login at ${portal}: ${(e as Error).message}`));
        }
      }
    };
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.once('connect', () => {
      // Login keeps pieces of text across PDUs: it gets copies, not views of the reused buffer.
      reads.sink = (view) => onData(Buffer.from(view));
      socket.write(Buffer.concat(encodePdu(machine.start(), { header: false, data: false })));
    });
  });
}

class SocketWire implements Wire {
  private corked = false;

  constructor(private readonly socket: Socket) {}

  write(chunks: Buffer[]): void {
    if (this.socket.destroyed) return;
    // Everything written in one tick (a burst of commands, a Data-Out
    // sequence) leaves in one writev.
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    for (const c of chunks) this.socket.write(c);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** A logged-in full-feature session over a new connection. */
export async function connectSession(opts: ConnectOptions): Promise<IscsiInitiatorSession> {
  const isid = opts.isid ?? randomIsid();
  const conn = await openConnection({ ...opts, isid });
  const label = opts.label ?? `${opts.targetName ?? 'discovery'} at ${portalOf(opts)}`;
  const session = new IscsiInitiatorSession(new SocketWire(conn.socket), conn.parser, conn.result, { ...opts, label });
  conn.reads.sink = (view) => session.receive(view);
  conn.socket.on('error', (e) => session.connectionClosed(e.message));
  conn.socket.on('close', () => session.connectionClosed('closed by the target'));
  conn.socket.resume();
  return session;
}
