// gRPC plumbing for proto/tabula.proto without a code generation step:
// protobufjs reflection loads the .proto at run time and this module turns
// its services into @grpc/grpc-js service definitions (serializers included)
// and typed clients. Shared by the controller, the agent and the CLI.

import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import { tryDecodeAgentMessage, tryDecodeControllerMessage, tryEncodeAgentMessage, tryEncodeControllerMessage } from './stream-codec.js';
import type { AdminMethod, AdminReply, AdminRequest, AgentMessage, BackupChunk, ControllerMessage, MalformedMessage } from './proto-types.js';

export const PROTO_PACKAGE = 'tabula.v1';

/** AdminService.Backup's request (no fields). */
export type BackupRequest = Record<string, never>;

/** Finds proto/tabula.proto above this module (works from src/ under tsx and from dist/). */
export function protoPath(): string {
  const env = process.env.TABULA_PROTO_DIR;
  if (env) return join(env, 'tabula.proto');
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const p = join(dir, 'proto', 'tabula.proto');
    if (existsSync(p)) return p;
    dir = dirname(dir);
  }
  throw new Error(`proto/tabula.proto not found above ${fileURLToPath(import.meta.url)} (set TABULA_PROTO_DIR)`);
}

let root: protobuf.Root | undefined;

export function protoRoot(): protobuf.Root {
  if (root === undefined) {
    const r = protobuf.loadSync(protoPath());
    r.resolveAll();
    root = r;
  }
  return root;
}

export function messageType(name: string): protobuf.Type {
  return protoRoot().lookupType(`${PROTO_PACKAGE}.${name}`);
}

const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, enums: Number, defaults: true, arrays: true, objects: true, oneofs: true };

export function encodeMessage(type: protobuf.Type, obj: object): Buffer {
  const bytes = STREAM_ENCODERS[type.name]?.(obj);
  if (bytes != null) return bytes;
  const u8 = type.encode(type.fromObject(obj as Record<string, unknown>)).finish();
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

// The stream messages of every table change and fault go through a
// hand-written codec (stream-codec.ts); it declines anything else (null).
const STREAM_ENCODERS: Readonly<Record<string, (obj: object) => Buffer | null>> = {
  AgentMessage: (o) => tryEncodeAgentMessage(o as AgentMessage),
  ControllerMessage: (o) => tryEncodeControllerMessage(o as ControllerMessage),
};
const STREAM_DECODERS: Readonly<Record<string, (buf: Buffer) => object | null>> = {
  AgentMessage: tryDecodeAgentMessage,
  ControllerMessage: tryDecodeControllerMessage,
};

/**
 * A stream message serialized once for many streams (a table delta to
 * every agent holding the vdisk): the stream serializers pass its bytes
 * through, so N recipients cost one encoding. `body` names the message for
 * logs, like a plain message's.
 */
export class EncodedMessage {
  constructor(
    readonly bytes: Buffer,
    /** What was encoded, for observers of the stream (metrics) that read its fields. */
    readonly message: { body: string },
  ) {}

  get body(): string {
    return this.message.body;
  }
}

/** Serializes a ControllerMessage once (see EncodedMessage). */
export function encodeControllerMessage(msg: ControllerMessage): EncodedMessage {
  return new EncodedMessage(encodeMessage(messageType('ControllerMessage'), msg), msg);
}

export function decodeMessage<T>(type: protobuf.Type, buf: Buffer): T {
  const decoded = STREAM_DECODERS[type.name]?.(buf);
  if (decoded != null) return decoded as T;
  return type.toObject(type.decode(buf), TO_OBJECT) as T;
}

/**
 * Decodes a stream message, yielding MalformedMessage instead of throwing:
 * a throwing deserializer would make grpc-js cancel the whole stream with
 * an opaque status, and the peer would never learn what was wrong.
 */
function lenientDecoder<T extends { body: string }>(type: protobuf.Type): (buf: Buffer) => T | MalformedMessage {
  return (buf) => {
    try {
      const m = decodeMessage<Partial<T>>(type, buf);
      if (typeof m.body !== 'string') return { body: 'malformed', reason: `${type.name} with no known message in it (${buf.length} bytes)` };
      return m as T;
    } catch (err) {
      return { body: 'malformed', reason: `${type.name} does not decode (${buf.length} bytes): ${(err as Error).message}` };
    }
  };
}

function serviceDefinition(service: string, lenient: boolean): grpc.ServiceDefinition {
  const svc = protoRoot().lookupService(`${PROTO_PACKAGE}.${service}`);
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of Object.values(svc.methods)) {
    m.resolve();
    const req = m.resolvedRequestType as protobuf.Type;
    const res = m.resolvedResponseType as protobuf.Type;
    def[m.name] = {
      path: `/${PROTO_PACKAGE}.${service}/${m.name}`,
      requestStream: m.requestStream === true,
      responseStream: m.responseStream === true,
      requestSerialize: (v: unknown) => (v instanceof EncodedMessage ? v.bytes : encodeMessage(req, v as object)),
      requestDeserialize: lenient && m.requestStream ? lenientDecoder(req) : (b: Buffer) => decodeMessage(req, b),
      responseSerialize: (v: unknown) => (v instanceof EncodedMessage ? v.bytes : encodeMessage(res, v as object)),
      responseDeserialize: lenient && m.responseStream ? lenientDecoder(res) : (b: Buffer) => decodeMessage(res, b),
      originalName: m.name,
    };
  }
  return def;
}

let agentDef: grpc.ServiceDefinition | undefined;
let adminDef: grpc.ServiceDefinition | undefined;

export function agentServiceDefinition(): grpc.ServiceDefinition {
  agentDef ??= serviceDefinition('AgentService', true);
  return agentDef;
}

export function adminServiceDefinition(): grpc.ServiceDefinition {
  adminDef ??= serviceDefinition('AdminService', false);
  return adminDef;
}

/** Metadata key for the shared-secret token (`authorization: Bearer <token>`). */
export const AUTH_METADATA_KEY = 'authorization';

export function authMetadata(token: string | undefined): grpc.Metadata {
  const md = new grpc.Metadata();
  if (token) md.set(AUTH_METADATA_KEY, `Bearer ${token}`);
  return md;
}

/**
 * Largest gRPC message a Tabula peer sends or accepts (grpc-js's default
 * receive limit is 4 MiB). Whole tables travel in pieces far below this
 * (TABLE_RUNS_PER_MESSAGE runs each); the bound is for the extents form an
 * older controller sends in one message, and for AdminService.Table replies:
 * 256 MiB is about 5 M extents with UUIDs, a fragmented 5 TiB vdisk.
 */
export const MAX_MESSAGE_BYTES = 256 << 20;

/** Channel options that apply MAX_MESSAGE_BYTES (clients and the controller's server). */
export const MESSAGE_LIMIT_OPTIONS = {
  'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
  'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
} as const;

/** Runs per TableFull message in the run form: at most ~20 bytes each, so about 1 MiB per message. */
export const TABLE_RUNS_PER_MESSAGE = 1 << 16;

export interface ClientOptions {
  /** Shared-secret token, when the controller requires one. */
  token?: string;
  /** TLS credentials; insecure when omitted. */
  credentials?: grpc.ChannelCredentials;
}

/** The agent's side of AgentService.Connect. */
export type AgentStream = grpc.ClientDuplexStream<AgentMessage | EncodedMessage, ControllerMessage | MalformedMessage>;

export class AgentServiceClient {
  readonly #client: grpc.Client;
  readonly #token: string | undefined;

  constructor(address: string, opts: ClientOptions = {}) {
    const Ctor = grpc.makeGenericClientConstructor(agentServiceDefinition(), 'AgentService');
    this.#client = new Ctor(address, opts.credentials ?? grpc.credentials.createInsecure(), MESSAGE_LIMIT_OPTIONS);
    this.#token = opts.token;
  }

  connect(): AgentStream {
    // Its serializer passes an EncodedMessage's bytes through (serviceDefinition).
    const def = agentServiceDefinition().Connect as grpc.MethodDefinition<AgentMessage | EncodedMessage, ControllerMessage | MalformedMessage>;
    return this.#client.makeBidiStreamRequest(
      def.path,
      def.requestSerialize,
      def.responseDeserialize,
      authMetadata(this.#token),
    );
  }

  close(): void {
    this.#client.close();
  }
}

/** AdminService with one promise-returning call per RPC; errors are grpc ServiceErrors (code + details). */
export class AdminClient {
  readonly #client: grpc.Client;
  readonly #token: string | undefined;
  readonly #deadlineMs: number;

  constructor(address: string, opts: ClientOptions & { deadlineMs?: number } = {}) {
    const Ctor = grpc.makeGenericClientConstructor(adminServiceDefinition(), 'AdminService');
    this.#client = new Ctor(address, opts.credentials ?? grpc.credentials.createInsecure(), MESSAGE_LIMIT_OPTIONS);
    this.#token = opts.token;
    this.#deadlineMs = opts.deadlineMs ?? 30_000;
  }

  call<M extends AdminMethod>(method: M, request: Partial<AdminRequest<M>>): Promise<AdminReply<M>> {
    const def = adminServiceDefinition()[method] as grpc.MethodDefinition<Partial<AdminRequest<M>>, AdminReply<M>>;
    return new Promise((resolve, reject) => {
      this.#client.makeUnaryRequest(
        def.path,
        def.requestSerialize,
        def.responseDeserialize,
        request,
        authMetadata(this.#token),
        { deadline: Date.now() + this.#deadlineMs },
        (err, value) => {
          if (err) reject(err);
          else resolve(value as AdminReply<M>);
        },
      );
    });
  }

  /**
   * AdminService.Backup: the database backup as a readable stream of chunks
   * (async-iterable; errors are ServiceErrors). `deadlineMs` bounds the
   * whole transfer (default 30 minutes: a backup is as long as the database).
   */
  backup(opts: { deadlineMs?: number } = {}): grpc.ClientReadableStream<BackupChunk> {
    const def = adminServiceDefinition().Backup as grpc.MethodDefinition<BackupRequest, BackupChunk>;
    return this.#client.makeServerStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, {}, authMetadata(this.#token), {
      deadline: Date.now() + (opts.deadlineMs ?? 30 * 60_000),
    });
  }

  close(): void {
    this.#client.close();
  }
}
