// Runs an inference from Node.js with no Flight library: the control plane from the .proto files finds the
// deployment, then gRPC speaks Arrow Flight's protocol (flight.proto) to the front door, with apache-arrow
// for the Arrow IPC messages inside it.
//
//   FLIGHTLINE_TOKEN=<token> node infer.mjs <host:port> <workspace> <deployment> <rows.json | ->
//
// rows.json holds a JSON array of rows ({"column": value, ...}); the columns' Arrow types come from the
// server (GetSchema: the envelope's `in.<column>` fields), so a row is plain JSON. Prints one JSON line
// per result row (the `out.` columns), then {"rows": n, "answered_by": "<result app metadata>"}.
// A failure prints `error: <what the server said>` and exits 1.
import { readFileSync } from "node:fs";

import * as grpc from "@grpc/grpc-js";
import { DataType, Message, Table, tableFromIPC, tableToIPC, vectorFromArray } from "apache-arrow";

import { bearer, call, channelCredentials, loadFlight, loadFlightline } from "./flightline.mjs";

const CONTINUATION = 0xffffffff;
const END_OF_STREAM = Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
const IN_PREFIX = "in.";

/** An Arrow IPC stream cut into the messages Flight carries: each one's flatbuffer header and body. */
function* ipcMessages(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = 0; at + 8 <= bytes.byteLength; ) {
    if (view.getUint32(at, true) !== CONTINUATION) throw new Error("not an Arrow IPC stream");
    const headerLength = view.getInt32(at + 4, true);
    if (headerLength === 0) return; // end of stream
    const header = bytes.subarray(at + 8, at + 8 + headerLength);
    const bodyLength = Number(Message.decode(header).bodyLength);
    const bodyStart = at + 8 + headerLength;
    yield { header, body: bytes.subarray(bodyStart, bodyStart + bodyLength) };
    at = bodyStart + bodyLength;
  }
}

/** Flight's messages put back into one Arrow IPC stream (headers padded to 8 bytes, as IPC requires). */
function ipcStream(messages) {
  const parts = [];
  for (const { header, body } of messages) {
    const padded = Math.ceil(header.length / 8) * 8;
    const prefix = Buffer.alloc(8 + padded);
    prefix.writeUInt32LE(CONTINUATION, 0);
    prefix.writeInt32LE(padded, 4);
    prefix.set(header, 8);
    parts.push(prefix, body);
  }
  parts.push(END_OF_STREAM);
  return Buffer.concat(parts);
}

function flightTarget(location) {
  const match = /^grpc\+(tcp|tls|unix):\/\/(.+)$/.exec(location);
  if (!match) throw new Error(`unsupported Flight location ${location}`);
  return match[1] === "unix" ? `unix:${match[2]}` : match[2];
}

async function findDeployment(address, workspaceName, name) {
  const v1 = loadFlightline();
  const workspaces = new v1.WorkspaceService(address, channelCredentials());
  const deployments = new v1.DeploymentService(address, channelCredentials());
  try {
    let page = { next_page_token: "" };
    do {
      page = await call(workspaces, "ListWorkspaces", { page_size: 1000, page_token: page.next_page_token });
      const workspace = page.workspaces.find((w) => w.name === workspaceName);
      if (workspace) return await call(deployments, "GetDeployment", { workspace_id: workspace.id, name });
    } while (page.next_page_token);
    throw new Error(`workspace ${JSON.stringify(workspaceName)} does not exist`);
  } finally {
    workspaces.close();
    deployments.close();
  }
}

/** The deployment's input schema: the `in.<column>` fields of its envelope, renamed to the columns. */
async function inputFields(flight, path) {
  const { schema } = await call(flight, "GetSchema", { type: "PATH", path: [path] });
  const envelope = tableFromIPC(Buffer.concat([schema, END_OF_STREAM])).schema;
  return envelope.fields.filter((f) => f.name.startsWith(IN_PREFIX));
}

function inputTable(fields, rows) {
  const columns = {};
  for (const field of fields) {
    const column = field.name.slice(IN_PREFIX.length);
    const values = rows.map((row) => row[column] ?? null);
    // apache-arrow pads a short list with NaN (or cuts a long one) without a word: refuse it instead.
    const size = DataType.isFixedSizeList(field.type) ? field.type.listSize : null;
    const wrong = size === null ? -1 : values.findIndex((v) => !Array.isArray(v) || v.length !== size);
    if (wrong >= 0) throw new Error(`row ${wrong}: column ${column} must be a list of ${size} values`);
    columns[column] = vectorFromArray(values, field.type);
  }
  return new Table(columns);
}

/** One DoExchange: the schema and the batch out, every result message in; resolves with them. */
function exchange(flight, path, table) {
  return new Promise((ok, fail) => {
    const stream = flight.DoExchange(bearer(), { deadline: Date.now() + 60_000 });
    const received = [];
    stream.on("data", (data) => received.push(data));
    stream.on("error", fail);
    stream.on("end", () => ok(received));
    const descriptor = { type: "PATH", path: [path, "outputs"] };
    let first = true;
    for (const { header, body } of ipcMessages(tableToIPC(table, "stream"))) {
      stream.write({ flight_descriptor: first ? descriptor : null, data_header: header, data_body: body });
      first = false;
    }
    stream.end(); // half-close: no more batches; the server answers and ends the stream
  });
}

function jsonValue(key, value) {
  if (typeof value === "bigint") return Number(value);
  if (ArrayBuffer.isView(value)) return Array.from(value);
  return value;
}

async function main([address, workspace, name, rowsFile]) {
  if (!address || !workspace || !name || !rowsFile) {
    throw new Error("usage: node infer.mjs <host:port> <workspace> <deployment> <rows.json | ->");
  }
  const rows = JSON.parse(readFileSync(rowsFile === "-" ? 0 : rowsFile, "utf8"));
  if (!Array.isArray(rows)) throw new Error("rows: expected a JSON array of rows");
  const deployment = await findDeployment(address, workspace, name);
  const options = { "grpc.max_receive_message_length": MAX_MESSAGE_BYTES };
  const Flight = loadFlight().FlightService;
  const flight = new Flight(flightTarget(deployment.flight_location), channelCredentials(), options);
  try {
    const fields = await inputFields(flight, deployment.flight_path);
    const received = await exchange(flight, deployment.flight_path, inputTable(fields, rows));
    const messages = received.filter((m) => m.data_header.length > 0);
    const result = tableFromIPC(ipcStream(messages.map((m) => ({ header: m.data_header, body: m.data_body }))));
    for (const row of result) console.log(JSON.stringify(row.toJSON(), jsonValue));
    const answeredBy = messages.map((m) => m.app_metadata.toString()).find((m) => m) ?? "";
    console.log(JSON.stringify({ rows: result.numRows, answered_by: answeredBy }));
  } finally {
    flight.close();
  }
}

try {
  await main(process.argv.slice(2));
} catch (err) {
  // A gRPC error's details are the server's one-line message (Flight errors included).
  console.error(`error: ${err.details ?? err.message}`);
  process.exit(1);
}
