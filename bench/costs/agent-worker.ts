// A real agent (src/agent: controller link, table install, iSCSI portal) in a
// child process of the bench, instrumented for the table-load measurement:
// it reports over IPC when a TableFull's bytes have arrived (gRPC hands a
// message to the deserializer once all of it is in), when they are decoded,
// and when the agent sends the TableAck; and it answers memory queries after
// a full GC (run with --expose-gc).
//
// argv: CONTROLLER_ADDR CONTAINER_GLOB
import { performance } from 'node:perf_hooks';
import { startAgent } from '../../src/agent/index.js';
import { agentServiceDefinition } from '../../src/wire/grpc.js';
import type { AgentMessage } from '../../src/wire/proto-types.js';

export type WorkerEvent =
  | { kind: 'ready'; portal: string }
  | { kind: 'tableFull'; version: number; bytes: number; receivedAt: number; decodedAt: number }
  | { kind: 'ack'; vdiskId: string; version: number; at: number }
  | { kind: 'disconnected'; reason: string }
  | { kind: 'mem'; heapUsed: number; external: number; arrayBuffers: number; rss: number };

export type WorkerCommand = { kind: 'mem' } | { kind: 'exit' };

function emit(e: WorkerEvent): void {
  process.send?.(e);
}

async function main(): Promise<void> {
  const [controller, glob] = process.argv.slice(2);
  if (!controller || !glob) throw new Error('usage: agent-worker CONTROLLER_ADDR CONTAINER_GLOB');
  // Wrap the deserializer the agent's stream uses (looked up per connect).
  const connect = agentServiceDefinition().Connect!;
  const decode = connect.responseDeserialize;
  connect.responseDeserialize = (buf: Buffer) => {
    const receivedAt = performance.timeOrigin + performance.now();
    const m = decode(buf) as { body?: string; tableFull?: { version: number } };
    if (m.body === 'tableFull') {
      emit({ kind: 'tableFull', version: m.tableFull!.version, bytes: buf.length, receivedAt, decodedAt: performance.timeOrigin + performance.now() });
    }
    return m;
  };
  const handle = await startAgent({ controller, name: 'bench-agent', portals: ['127.0.0.1:0'], containers: [glob] });
  const link = handle.agent.link;
  const send = link.send.bind(link);
  link.send = (msg: AgentMessage): boolean => {
    if (msg.body === 'tableAck') emit({ kind: 'ack', vdiskId: msg.tableAck.vdiskId, version: msg.tableAck.version, at: performance.timeOrigin + performance.now() });
    return send(msg);
  };
  link.on('disconnected', (d) => emit({ kind: 'disconnected', reason: d.reason }));
  const gc = (globalThis as { gc?: () => void }).gc;
  process.on('message', (c: WorkerCommand) => {
    if (c.kind === 'exit') {
      void handle.close().finally(() => process.exit(0));
      return;
    }
    gc?.();
    gc?.();
    const m = process.memoryUsage();
    emit({ kind: 'mem', heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers, rss: m.rss });
  });
  process.on('disconnect', () => process.exit(0));
  const p = handle.portals[0]!;
  emit({ kind: 'ready', portal: `${p.host}:${p.port}` });
}

main().catch((e: unknown) => {
  process.stderr.write(`agent-worker: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
