// One guest TCP connection, relayed to a portal on the host's loopback.
//
// qemu's user-mode network runs this for each connection the guest opens to a
// `guestfwd=tcp:ADDR:PORT-cmd:...` address; with restrict=on that is the only
// way out of the guest, so the guest reaches exactly the portals we list.
// File descriptor 0 is a socket joined to the guest's connection: nothing may
// be printed on stdout or stderr (they are the same socket).
// Plain JavaScript so that it starts in milliseconds (no TypeScript loader).
import { connect, Socket } from 'node:net';

const [host, portText] = process.argv.slice(2);
const port = Number(portText);
if (!host || !Number.isInteger(port) || port <= 0 || port > 65535) process.exit(2);

const guest = new Socket({ fd: 0, readable: true, writable: true, allowHalfOpen: true });
const target = connect({ host, port, allowHalfOpen: true });
target.setNoDelay(true);

let closed = 0;
const done = () => {
  if (++closed === 2) process.exit(0);
};
// Half-closes pass through (pipe ends the other side on 'end'); an error on
// either side tears both down.
guest.pipe(target);
target.pipe(guest);
guest.on('close', done);
target.on('close', done);
const abort = () => {
  guest.destroy();
  target.destroy();
};
guest.on('error', abort);
target.on('error', abort);
