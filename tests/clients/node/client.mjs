// Calls Flightline's control plane from Node.js using only protos/flightline/v1/*.proto (no generated code).
//
//   FLIGHTLINE_TOKEN=<token> node client.mjs <host:port> <workspace-name>
//
// Every call carries `authorization: Bearer <token>` (gRPC metadata); one call without it checks that the
// server refuses it with UNAUTHENTICATED.
// Prints one JSON line with what the server answered; exits non-zero on any surprise.
import * as grpc from "@grpc/grpc-js";

import { bearer, call, channelCredentials, loadFlightline } from "./flightline.mjs";

async function expectStatus(promise, code) {
  try {
    await promise;
  } catch (err) {
    if (err.code === code) return err.code;
    throw err;
  }
  throw new Error(`expected gRPC status ${code}, but the call succeeded`);
}

async function main([address, name]) {
  if (!address || !name) throw new Error("usage: node client.mjs <host:port> <workspace-name>");
  const v1 = loadFlightline();
  const credentials = channelCredentials();
  const workspaces = new v1.WorkspaceService(address, credentials);
  const models = new v1.ModelService(address, credentials);
  const deployments = new v1.DeploymentService(address, credentials);
  const access = new v1.AccessService(address, credentials);
  try {
    const me = await call(access, "WhoAmI", {});
    const anonymous = await expectStatus(call(access, "WhoAmI", {}, bearer("")), grpc.status.UNAUTHENTICATED);
    const created = await call(workspaces, "CreateWorkspace", { name });
    const fetched = await call(workspaces, "GetWorkspace", { workspace_id: created.id });
    if (fetched.id !== created.id || fetched.name !== name) {
      throw new Error(`GetWorkspace returned ${JSON.stringify(fetched)} for ${JSON.stringify(created)}`);
    }
    const { frameworks } = await call(models, "ListFrameworks", {});
    // AIP-158 paging: one framework per page, then the next page from the token.
    const first = await call(models, "ListFrameworks", { page_size: 1 });
    const second = await call(models, "ListFrameworks", { page_size: 1, page_token: first.next_page_token });
    // proto3 optional: workspace_id left out lists every workspace's deployments.
    const listed = await call(deployments, "ListDeployments", {});
    const unknownId = "9223372036854775807"; // max int64: never assigned
    const notFound = await expectStatus(
      call(workspaces, "GetWorkspace", { workspace_id: unknownId }),
      grpc.status.NOT_FOUND,
    );
    return {
      workspace_id: created.id,
      fetched_id: fetched.id,
      name: fetched.name,
      create_time_seconds: fetched.create_time?.seconds ?? null,
      framework_count: frameworks.length,
      paged_frameworks: [...first.frameworks, ...second.frameworks].map((f) => f.name),
      first_frameworks: frameworks.slice(0, 2).map((f) => f.name),
      deployment_count: listed.deployments.length,
      has_sklearn: frameworks.some((f) => f.name === "sklearn"),
      unknown_workspace_status: notFound,
      who: me.user.name,
      without_token_status: anonymous,
    };
  } finally {
    access.close();
    workspaces.close();
    models.close();
    deployments.close();
  }
}

try {
  console.log(JSON.stringify(await main(process.argv.slice(2))));
} catch (err) {
  console.error(`flightline node client: ${err.stack ?? err}`);
  process.exit(1);
}
