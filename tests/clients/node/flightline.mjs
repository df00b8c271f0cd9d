// What the Node.js clients share: the control plane loaded from protos/flightline/v1/*.proto (no generated
// code), the caller's token as gRPC metadata, and unary calls with a deadline.
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const HERE = dirname(fileURLToPath(import.meta.url));
const PROTO_ROOT = resolve(HERE, "../../../protos");
export const DEADLINE_MS = 10_000;

const LOADER_OPTIONS = {
  keepCase: true,
  longs: String, // int64 ids arrive as decimal strings: no precision loss above 2^53
  enums: String,
  defaults: true,
};

export function loadFlightline() {
  const files = readdirSync(join(PROTO_ROOT, "flightline/v1"))
    .filter((f) => f.endsWith(".proto"))
    .map((f) => `flightline/v1/${f}`);
  // google/protobuf/timestamp.proto resolves from protobufjs's bundled well-known types.
  const definition = protoLoader.loadSync(files, { includeDirs: [PROTO_ROOT], ...LOADER_OPTIONS });
  return grpc.loadPackageDefinition(definition).flightline.v1;
}

/** Arrow Flight's service, from the subset of its protocol in flight.proto. */
export function loadFlight() {
  const definition = protoLoader.loadSync("flight.proto", { includeDirs: [HERE], ...LOADER_OPTIONS });
  return grpc.loadPackageDefinition(definition).arrow.flight.protocol;
}

export function bearer(token = process.env.FLIGHTLINE_TOKEN) {
  const metadata = new grpc.Metadata();
  if (token) metadata.add("authorization", `Bearer ${token}`);
  return metadata;
}

/** Plain TCP, or TLS trusting FLIGHTLINE_TLS_CA (a PEM file) when it is set, as the Python client does. */
export function channelCredentials() {
  const ca = process.env.FLIGHTLINE_TLS_CA;
  return ca ? grpc.credentials.createSsl(readFileSync(ca)) : grpc.credentials.createInsecure();
}

/** Promisifies one unary call with a deadline, so a hung server fails the run instead of blocking it. */
export function call(stub, method, request, metadata = bearer()) {
  return new Promise((ok, fail) => {
    stub[method](request, metadata, { deadline: Date.now() + DEADLINE_MS }, (err, reply) =>
      err ? fail(err) : ok(reply),
    );
  });
}
