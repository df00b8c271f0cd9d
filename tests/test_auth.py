"""Access control on real servers: tokens, workspace roles, NOT_FOUND across workspaces, both planes."""

from __future__ import annotations

import base64
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import settings_for
from support.auth import TEST_TOKEN, call_options
from support.mlp import build_mlp

from flightline.server.api.auth import OPEN_SERVICES, RULES, Scope
from flightline.server.app import SERVICES, App
from flightline.server.client import Client, infer
from flightline.v1 import (
    access_pb2,
    access_pb2_grpc,
    deployment_pb2,
    model_pb2,
    registry_pb2,
    workspace_pb2,
)

PYTHON_STEP = """
import pandas as pd

def wallaroo_json(data: pd.DataFrame):
    return pd.DataFrame({"out": [float(x) * 2.0 for x in data["input"]]})
"""


# -- the one table ---------------------------------------------------------------------------------


def test_every_rpc_of_every_service_has_exactly_one_rule() -> None:
    methods = {f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods}
    assert methods - RULES.keys() == set(), "give these RPCs a role in flightline/server/api/auth.py RULES"
    assert RULES.keys() - methods == set()  # no rule for an RPC that is gone
    assert not any(s.full_name in OPEN_SERVICES for s in SERVICES)
    for method, rule in RULES.items():  # a role needs a workspace to hold it in
        assert (rule.role is None) == (rule.scope is Scope.NONE), method


# -- fixtures: two teams on one server ---------------------------------------------------------------


@dataclass
class Teams:
    app: App
    admin: Client
    a: int  # workspace ids
    b: int
    alice: str  # editor of A
    bob: str  # viewer of A
    carol: str  # admin of B
    alice_id: int
    carol_id: int
    b_model: int  # a private ONNX model of B, deployed as "fraud" in B
    b_public: int  # a public model of B
    b_registry: str
    onnx: Path


def access(client: Client) -> access_pb2_grpc.AccessServiceStub:
    return access_pb2_grpc.AccessServiceStub(client.channel)


def new_user(admin: Client, name: str, workspace: int, role: int) -> tuple[int, str]:
    user = access(admin).CreateUser(access_pb2.CreateUserRequest(name=name))
    access(admin).SetMember(access_pb2.SetMemberRequest(workspace_id=workspace, user_id=user.id, role=role))
    token = access(admin).CreateToken(access_pb2.CreateTokenRequest(user_id=user.id, name="tests"))
    assert token.secret.startswith(f"flt.{token.token.id}.") and token.token.user_id == user.id
    return int(user.id), token.secret


def upload(client: Client, workspace: int, path: Path, name: str, framework: str, **meta: Any) -> int:
    metadata = model_pb2.UploadMetadata(
        name=name, workspace_id=workspace, conversion=model_pb2.Conversion(framework=framework), **meta
    )
    response = client.upload_file(path, metadata)
    assert response.version.status == model_pb2.MODEL_STATUS_READY, response.version.status_reason
    return int(response.model_id)


@pytest.fixture(scope="module")
def teams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Teams]:
    tmp = tmp_path_factory.mktemp("teams")
    with App(settings_for(tmp / "data")) as app, Client(app.grpc_address, TEST_TOKEN) as admin:
        ws = admin.workspaces
        a = int(ws.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="team-a")).id)
        b = int(ws.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="team-b")).id)
        alice_id, alice = new_user(admin, "alice", a, access_pb2.ROLE_EDITOR)
        _, bob = new_user(admin, "bob", a, access_pb2.ROLE_VIEWER)
        carol_id, carol = new_user(admin, "carol", b, access_pb2.ROLE_ADMIN)
        onnx = build_mlp(tmp / "mlp.onnx")
        with Client(app.grpc_address, carol) as c:
            b_model = upload(c, b, onnx, "secret-model", "onnx")
            public = model_pb2.VISIBILITY_PUBLIC
            b_public = upload(c, b, onnx, "shared-model", "onnx", visibility=public)
            deployed = c.deploy(b, "fraud", b_model)
            assert deployed.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, deployed.status_reason
            registry = c.registries.CreateRegistry(
                registry_pb2.CreateRegistryRequest(
                    workspace_id=b, name="b-mlflow", url="http://127.0.0.1:9", token="dapi-CLEARTEXT-TOKEN-42"
                )
            )
        yield Teams(
            app, admin, a, b, alice, bob, carol, alice_id, carol_id, b_model, b_public, registry.id, onnx
        )


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def features(rows: int) -> pa.Table:
    values = np.random.default_rng(0).normal(size=(rows, 29)).astype(np.float32)
    return pa.table({"input": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 29)})


# -- roles -----------------------------------------------------------------------------------------


def test_a_viewer_cannot_upload_nor_deploy_but_reads_and_infers(teams: Teams) -> None:
    with Client(teams.app.grpc_address, teams.bob) as bob:
        meta = model_pb2.UploadMetadata(
            name="nope", workspace_id=teams.a, conversion=model_pb2.Conversion(framework="onnx")
        )
        with pytest.raises(grpc.RpcError) as refused:
            bob.upload_file(teams.onnx, meta)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "editor" in (refused.value.details() or "")
        listed = bob.models.ListModels(model_pb2.ListModelsRequest(workspace_id=teams.a))
        assert "nope" not in [m.name for m in listed.models]  # nothing was stored
        with Client(teams.app.grpc_address, teams.alice) as alice:
            model = upload(alice, teams.a, teams.onnx, "a-model", "onnx")
            assert alice.deploy(teams.a, "a-fraud", model).status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING
        deploy = deployment_pb2.DeployRequest(
            workspace_id=teams.a, name="bobs", steps=[deployment_pb2.StepSpec(model_id=model)]
        )
        assert code_of(lambda: bob.deployments.Deploy(deploy)) == grpc.StatusCode.PERMISSION_DENIED
        undeploy = deployment_pb2.UndeployRequest(workspace_id=teams.a, name="a-fraud")
        assert code_of(lambda: bob.deployments.Undeploy(undeploy)) == grpc.StatusCode.PERMISSION_DENIED
        # read and infer: the viewer's rights
        got = bob.deployments.GetDeployment(deployment_pb2.GetDeploymentRequest(name="a-fraud"))
        assert got.workspace_id == teams.a and got.flight_path == f"{teams.a}/a-fraud"
        result = infer(got.flight_location, got.flight_path, features(3), mode="outputs", token=teams.bob)
        assert result.num_rows == 3


def test_live_changes_need_an_editor_take_own_or_public_models_and_record_the_user(teams: Teams) -> None:
    dep = deployment_pb2
    with (
        Client(teams.app.grpc_address, teams.alice) as alice,
        Client(teams.app.grpc_address, teams.bob) as bob,
    ):
        model = upload(alice, teams.a, teams.onnx, "live-model", "onnx")
        assert alice.deploy(teams.a, "live", model).status == dep.DEPLOYMENT_STATUS_RUNNING
        own = [dep.StepSpec(model_id=model)]
        # A viewer reads the history but changes nothing.
        for change in (
            lambda: bob.deployments.UpdateDeployment(dep.UpdateDeploymentRequest(name="live", steps=own)),
            lambda: bob.deployments.SetTrafficSplit(
                dep.SetTrafficSplitRequest(name="live", canary_steps=own, canary_percent=10)
            ),
            lambda: bob.deployments.SetShadow(dep.SetShadowRequest(name="live", shadow_steps=own)),
        ):
            assert code_of(change) == grpc.StatusCode.PERMISSION_DENIED
        history = dep.ListDeploymentRevisionsRequest(name="live")  # workspace_id 0: the one bob can see
        assert [r.revision for r in bob.deployments.ListDeploymentRevisions(history).revisions] == [1]
        # B's private model is no step of A's deployment, as for Deploy; B's public one is.
        stolen = [dep.StepSpec(model_id=teams.b_model)]
        steal = dep.SetShadowRequest(workspace_id=teams.a, name="live", shadow_steps=stolen)
        assert code_of(lambda: alice.deployments.SetShadow(steal)) == grpc.StatusCode.NOT_FOUND
        public = [dep.StepSpec(model_id=teams.b_public)]
        alice.deployments.UpdateDeployment(
            dep.UpdateDeploymentRequest(workspace_id=teams.a, name="live", steps=public, reason="shared")
        )
        live = alice.wait_deployment("live", teams.a, timeout=60)
        assert (live.revision, [s.model_id for s in live.steps]) == (2, [teams.b_public]), live.status_reason
        revisions = bob.deployments.ListDeploymentRevisions(history).revisions
        assert [(r.revision, r.actor, r.reason) for r in revisions] == [
            (1, "alice", "deploy"),
            (2, "alice", "shared"),
        ]
        assert revisions[1].status == dep.REVISION_STATUS_LIVE
    assert teams.app.audit.flush()
    events = teams.app.store.audit_events(limit=1000)
    outcomes = {(e.actor, e.outcome) for e in events if e.action == "UpdateDeployment"}
    assert outcomes == {("alice", "OK"), ("bob", "PERMISSION_DENIED")}
    assert ("bob", "PERMISSION_DENIED") in {(e.actor, e.outcome) for e in events if e.action == "SetShadow"}


def test_the_creator_of_a_workspace_is_its_admin(teams: Teams) -> None:
    with Client(teams.app.grpc_address, teams.alice) as alice:
        own = alice.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="alices-own"))
        me = access(alice).WhoAmI(access_pb2.WhoAmIRequest())
        assert (me.user.name, me.user.admin) == ("alice", False)
        assert {(m.workspace_id, m.role) for m in me.memberships} == {
            (teams.a, access_pb2.ROLE_EDITOR),
            (own.id, access_pb2.ROLE_ADMIN),
        }
        listed = alice.workspaces.ListWorkspaces(workspace_pb2.ListWorkspacesRequest())
        assert sorted(w.id for w in listed.workspaces) == sorted([teams.a, own.id])  # never team-b
        members = access(alice).ListMembers(access_pb2.ListMembersRequest(workspace_id=own.id))
        assert [(m.user_name, m.role) for m in members.members] == [("alice", access_pb2.ROLE_ADMIN)]
        # Only platform admins manage users.
        create = access_pb2.CreateUserRequest(name="mallory")
        assert code_of(lambda: access(alice).CreateUser(create)) == grpc.StatusCode.PERMISSION_DENIED


# -- workspaces apart: NOT_FOUND for every id of B ---------------------------------------------------


def b_requests(t: Teams) -> dict[str, Callable[[Client], Any]]:
    """One call per RPC that names a resource of workspace B, as a member of A only makes it."""
    dep = deployment_pb2
    mod = model_pb2
    reg = registry_pb2
    acc = access_pb2
    step = [dep.StepSpec(model_id=t.b_model)]
    meta = mod.UploadMetadata(
        name="x", workspace_id=t.b, size_bytes=1, conversion=mod.Conversion(framework="onnx")
    )
    return {
        "GetWorkspace": lambda c: c.workspaces.GetWorkspace(
            workspace_pb2.GetWorkspaceRequest(workspace_id=t.b)
        ),
        "CreateRegistry": lambda c: c.registries.CreateRegistry(
            reg.CreateRegistryRequest(workspace_id=t.b, name="r", url="http://127.0.0.1:9")
        ),
        "AttachRegistry": lambda c: c.registries.AttachRegistry(
            reg.AttachRegistryRequest(registry_id=t.b_registry, workspace_id=t.a)
        ),
        "DetachRegistry": lambda c: c.registries.DetachRegistry(
            reg.DetachRegistryRequest(registry_id=t.b_registry, workspace_id=t.b)
        ),
        "GetRegistry": lambda c: c.registries.GetRegistry(reg.GetRegistryRequest(registry_id=t.b_registry)),
        "ListRegistries": lambda c: c.registries.ListRegistries(reg.ListRegistriesRequest(workspace_id=t.b)),
        "ListRegistryModels": lambda c: c.registries.ListRegistryModels(
            reg.ListRegistryModelsRequest(registry_id=t.b_registry)
        ),
        "ListRegistryModelVersions": lambda c: c.registries.ListRegistryModelVersions(
            reg.ListRegistryModelVersionsRequest(registry_id=t.b_registry, name="m")
        ),
        "ListModelVersionArtifacts": lambda c: c.registries.ListModelVersionArtifacts(
            reg.ListModelVersionArtifactsRequest(registry_id=t.b_registry, name="m", version="1")
        ),
        "UploadFromRegistry": lambda c: c.models.UploadFromRegistry(
            mod.UploadFromRegistryRequest(
                registry_id=t.b_registry,
                name="x",
                path="models:/m/1",
                workspace_id=t.b,
                conversion=mod.Conversion(framework="onnx"),
            )
        ),
        "UploadModel": lambda c: c.models.UploadModel(iter([mod.UploadModelRequest(metadata=meta)])),
        "WatchModelVersion": lambda c: c.models.WatchModelVersion(
            mod.WatchModelVersionRequest(model_id=t.b_model)
        ),
        "GetModel": lambda c: c.models.GetModel(mod.GetModelRequest(model_id=t.b_model)),
        "ListModels": lambda c: c.models.ListModels(mod.ListModelsRequest(workspace_id=t.b)),
        "GetModelVersion": lambda c: c.models.GetModelVersion(mod.GetModelVersionRequest(model_id=t.b_model)),
        "ListModelVersions": lambda c: c.models.ListModelVersions(
            mod.ListModelVersionsRequest(model_id=t.b_model)
        ),
        "Deploy": lambda c: c.deployments.Deploy(dep.DeployRequest(workspace_id=t.b, name="y", steps=step)),
        "WatchDeployment": lambda c: c.deployments.WatchDeployment(
            dep.WatchDeploymentRequest(workspace_id=t.b, name="fraud")
        ),
        "Undeploy": lambda c: c.deployments.Undeploy(dep.UndeployRequest(workspace_id=t.b, name="fraud")),
        "FollowAlias": lambda c: c.deployments.FollowAlias(
            dep.FollowAliasRequest(
                workspace_id=t.b, name="fraud", registry_id=t.b_registry, uri="models:/fraud@champion"
            )
        ),
        "StopFollowingAlias": lambda c: c.deployments.StopFollowingAlias(
            dep.StopFollowingAliasRequest(workspace_id=t.b, name="fraud")
        ),
        "GetDeployment": lambda c: c.deployments.GetDeployment(
            dep.GetDeploymentRequest(workspace_id=t.b, name="fraud")
        ),
        "ListDeployments": lambda c: c.deployments.ListDeployments(
            dep.ListDeploymentsRequest(workspace_id=t.b)
        ),
        "UpdateDeployment": lambda c: c.deployments.UpdateDeployment(
            dep.UpdateDeploymentRequest(workspace_id=t.b, name="fraud", steps=step)
        ),
        "SetTrafficSplit": lambda c: c.deployments.SetTrafficSplit(
            dep.SetTrafficSplitRequest(workspace_id=t.b, name="fraud", canary_steps=step, canary_percent=10)
        ),
        "SetShadow": lambda c: c.deployments.SetShadow(
            dep.SetShadowRequest(workspace_id=t.b, name="fraud", shadow_steps=step)
        ),
        "ListDeploymentRevisions": lambda c: c.deployments.ListDeploymentRevisions(
            dep.ListDeploymentRevisionsRequest(workspace_id=t.b, name="fraud")
        ),
        "SetMember": lambda c: access(c).SetMember(
            acc.SetMemberRequest(workspace_id=t.b, user_id=t.alice_id, role=acc.ROLE_ADMIN)
        ),
        "RemoveMember": lambda c: access(c).RemoveMember(
            acc.RemoveMemberRequest(workspace_id=t.b, user_id=t.carol_id)
        ),
        "ListMembers": lambda c: access(c).ListMembers(acc.ListMembersRequest(workspace_id=t.b)),
    }


def test_a_member_of_a_sees_nothing_of_b_on_every_rpc(teams: Teams) -> None:
    calls = b_requests(teams)
    scoped = {m.rpartition("/")[2] for m, r in RULES.items() if r.scope is not Scope.NONE}
    assert scoped <= calls.keys()  # every RPC that names a workspace's resource is tried
    with Client(teams.app.grpc_address, teams.alice) as alice:
        seen = {name: code_of(lambda call=call: call(alice)) for name, call in calls.items()}
        assert seen == dict.fromkeys(calls, grpc.StatusCode.NOT_FOUND)
        # The same words as for ids that exist nowhere: nothing tells B's ids apart.
        with pytest.raises(grpc.RpcError) as hidden:
            alice.models.GetModel(model_pb2.GetModelRequest(model_id=teams.b_model))
        assert hidden.value.details() == f"model {teams.b_model} does not exist"
        # A's own name lookups skip B: "fraud" exists only in B.
        bare = deployment_pb2.GetDeploymentRequest(name="fraud")
        assert code_of(lambda: alice.deployments.GetDeployment(bare)) == grpc.StatusCode.NOT_FOUND
        # A private model of B cannot be a step of A's deployment either.
        steal = deployment_pb2.DeployRequest(
            workspace_id=teams.a, name="stolen", steps=[deployment_pb2.StepSpec(model_id=teams.b_model)]
        )
        assert code_of(lambda: alice.deployments.Deploy(steal)) == grpc.StatusCode.NOT_FOUND
        everything = alice.deployments.ListDeployments(deployment_pb2.ListDeploymentsRequest())
        assert teams.b not in {d.workspace_id for d in everything.deployments}
    # ...while B's own admin still has it all.
    with Client(teams.app.grpc_address, teams.carol) as carol:
        assert code_of(lambda: calls["GetDeployment"](carol)) == grpc.StatusCode.OK
        assert code_of(lambda: calls["GetModel"](carol)) == grpc.StatusCode.OK


def test_a_member_of_a_cannot_stream_to_bs_deployments(teams: Teams) -> None:
    location = teams.app.flight_location
    for path in ([f"{teams.b}/fraud"], ["fraud"], [f"{teams.b}/fraud", "outputs"]):
        with pytest.raises(pa.ArrowKeyError, match="not found"):
            infer(location, path[0], features(2), mode=path[1] if len(path) > 1 else "", token=teams.alice)
    with flight.connect(location) as client:
        options = call_options(teams.alice)
        with pytest.raises(pa.ArrowKeyError, match="not found"):
            client.get_flight_info(flight.FlightDescriptor.for_path(f"{teams.b}/fraud"), options)
        listed = [info.descriptor.path[0].decode() for info in client.list_flights(options=options)]
        assert f"{teams.b}/fraud" not in listed
        admin_listed = [i.descriptor.path[0].decode() for i in client.list_flights(options=call_options())]
        assert f"{teams.b}/fraud" in admin_listed
    result = infer(location, f"{teams.b}/fraud", features(2), mode="outputs", token=teams.carol)
    assert result.num_rows == 2


def test_public_models_are_readable_by_all_and_changed_only_by_their_workspace(teams: Teams) -> None:
    with Client(teams.app.grpc_address, teams.alice) as alice:
        model = alice.models.GetModel(model_pb2.GetModelRequest(model_id=teams.b_public))
        assert (model.workspace_id, model.visibility) == (teams.b, model_pb2.VISIBILITY_PUBLIC)
        versions = alice.models.ListModelVersions(model_pb2.ListModelVersionsRequest(model_id=teams.b_public))
        assert [v.version for v in versions.versions] == [1]
        listed = alice.models.ListModels(model_pb2.ListModelsRequest(workspace_id=teams.a))
        assert teams.b_public in [m.id for m in listed.models]
        # Served in A by A's editor, unchanged in B.
        deployed = alice.deploy(teams.a, "uses-public", teams.b_public)
        assert deployed.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, deployed.status_reason
        # Adding a version (or flipping visibility) is an upload into B: not A's business.
        meta = model_pb2.UploadMetadata(
            name="shared-model", workspace_id=teams.b, conversion=model_pb2.Conversion(framework="onnx")
        )
        with pytest.raises(grpc.RpcError) as refused:
            alice.upload_file(teams.onnx, meta)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_deployment_names_are_unique_per_workspace(teams: Teams) -> None:
    with Client(teams.app.grpc_address, teams.alice) as alice:
        mine = upload(alice, teams.a, teams.onnx, "fraud-model", "onnx")
        ours = alice.deploy(teams.a, "fraud", mine)  # B has a "fraud" too
        assert ours.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, ours.status_reason
        assert ours.flight_path == f"{teams.a}/fraud"
        # alice sees one "fraud": the bare name is enough for her
        got = alice.deployments.GetDeployment(deployment_pb2.GetDeploymentRequest(name="fraud"))
        assert got.workspace_id == teams.a
        assert infer(ours.flight_location, "fraud", features(1), token=teams.alice).num_rows == 1
    # the platform admin sees both: a bare name is ambiguous, the workspace or flight_path decides
    bare = deployment_pb2.GetDeploymentRequest(name="fraud")
    with pytest.raises(grpc.RpcError) as ambiguous:
        teams.admin.deployments.GetDeployment(bare)
    assert ambiguous.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "workspace_id" in (ambiguous.value.details() or "")
    with pytest.raises(pa.ArrowInvalid, match="several workspaces"):
        infer(ours.flight_location, "fraud", features(1))
    for ws in (teams.a, teams.b):
        named = deployment_pb2.GetDeploymentRequest(name="fraud", workspace_id=ws)
        assert teams.admin.deployments.GetDeployment(named).flight_path == f"{ws}/fraud"
        assert infer(ours.flight_location, f"{ws}/fraud", features(1)).num_rows == 1


# -- tokens: wrong, expired, revoked; both planes --------------------------------------------------


def refused_on_both_planes(app: App, token: str | None, words: str) -> None:
    with Client(app.grpc_address, token or "") as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.workspaces.ListWorkspaces(workspace_pb2.ListWorkspacesRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert words in (refused.value.details() or "")
    with flight.connect(app.flight_location) as conn:
        options = flight.FlightCallOptions(
            headers=[(b"authorization", f"Bearer {token}".encode())] if token else []
        )
        with pytest.raises(flight.FlightUnauthenticatedError, match=words):
            list(conn.list_flights(options=options))
        with pytest.raises(flight.FlightUnauthenticatedError):  # at the call, or at its first read
            writer, reader = conn.do_exchange(flight.FlightDescriptor.for_path("fraud"), options)
            writer.begin(features(1).schema)
            writer.write_table(features(1))
            writer.done_writing()
            reader.read_all()


def test_wrong_missing_expired_and_revoked_tokens_are_unauthenticated(teams: Teams) -> None:
    app = teams.app
    refused_on_both_planes(app, None, "missing credentials")
    refused_on_both_planes(app, "not-a-token", "invalid token")
    forged = teams.alice.rsplit(".", 1)[0] + ".this-is-not-the-secret-of-that-token-id"
    refused_on_both_planes(app, forged, "invalid token")
    with Client(app.grpc_address, teams.alice) as alice:
        short = access(alice).CreateToken(access_pb2.CreateTokenRequest(name="short", ttl_seconds=1))
        assert short.token.HasField("expire_time")
        with Client(app.grpc_address, short.secret) as briefly:
            assert access(briefly).WhoAmI(access_pb2.WhoAmIRequest()).user.name == "alice"
        time.sleep(1.6)
        refused_on_both_planes(app, short.secret, "token expired")
        spare = access(alice).CreateToken(access_pb2.CreateTokenRequest(name="spare"))
        revoked = access(alice).RevokeToken(access_pb2.RevokeTokenRequest(token_id=spare.token.id))
        assert revoked.HasField("revoke_time")
        refused_on_both_planes(app, spare.secret, "token revoked")
        listed = access(alice).ListTokens(access_pb2.ListTokensRequest()).tokens
        assert {t.name for t in listed} >= {"tests", "short", "spare"}
        # Another user's token is not hers to revoke (nor to see).
        admins = access_pb2.RevokeTokenRequest(token_id=TEST_TOKEN.split(".")[1])
        assert code_of(lambda: access(alice).RevokeToken(admins)) == grpc.StatusCode.NOT_FOUND
    # health and reflection answer without a token (load balancers, grpcurl list)
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(app.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_stock_flight_client_logs_in_with_the_basic_token_handshake(teams: Teams) -> None:
    with flight.connect(teams.app.flight_location) as client:
        header = client.authenticate_basic_token("alice", teams.alice)
        assert header == (b"authorization", f"Bearer {teams.alice}".encode())
        options = flight.FlightCallOptions(headers=[header])
        descriptor = flight.FlightDescriptor.for_path(f"{teams.a}/a-fraud", "outputs")
        table = features(4)
        writer, reader = client.do_exchange(descriptor, options)
        with writer:
            writer.begin(table.schema)
            writer.write_table(table)
            writer.done_writing()
            assert reader.read_all().num_rows == 4
        with pytest.raises(flight.FlightUnauthenticatedError):
            client.authenticate_basic_token("alice", "wrong-password")
    raw = base64.b64encode(f"x:{teams.alice}".encode()).decode()
    with flight.connect(teams.app.flight_location) as client:  # the header a Java/Go client builds itself
        options = flight.FlightCallOptions(headers=[(b"authorization", f"Basic {raw}".encode())])
        assert any(True for _ in client.list_flights(options=options))


# -- runtime servers serve the front door only -----------------------------------------------------


def test_a_runtime_server_refuses_a_direct_call(teams: Teams, tmp_path: Path) -> None:
    script = tmp_path / "step.py"
    script.write_text(PYTHON_STEP)
    with Client(teams.app.grpc_address, teams.alice) as alice:
        meta = model_pb2.UploadMetadata(
            name="py-step",
            workspace_id=teams.a,
            conversion=model_pb2.Conversion(
                framework="python",
                input_schema=pa.schema([("input", pa.float64())]).serialize().to_pybytes(),
                output_schema=pa.schema([("out", pa.float64())]).serialize().to_pybytes(),
            ),
        )
        model = alice.upload_file(script, meta).model_id
        deployed = alice.deploy(teams.a, "py-step", model)
        assert deployed.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, deployed.status_reason
    location = deployed.steps[0].location
    assert location  # a runtime server runs it, and the control plane says where...
    with flight.connect(location) as direct:  # ...but it answers the front door only
        with pytest.raises(flight.FlightUnauthenticatedError, match="front door only"):
            list(direct.do_action(flight.Action("models", b"")))
        with pytest.raises(flight.FlightUnauthenticatedError):  # a client's own token does not open it
            list(direct.do_action(flight.Action("healthcheck", b""), call_options(teams.alice)))
    table = pa.table({"input": pa.array([1.0, 2.0])})
    assert infer(deployed.flight_location, deployed.flight_path, table, token=teams.alice).num_rows == 2


# -- secrets at rest, the database file, the admin's first token -----------------------------------


def test_the_database_holds_no_registry_token_in_clear(teams: Teams) -> None:
    data = teams.app.settings.data_dir.resolve()
    database = data / "flightline.db"
    with sqlite3.connect(database) as db:
        tokens = [row[0] for row in db.execute("SELECT token FROM registries")]
        dump = "\n".join(db.iterdump())
    assert tokens and all(t.startswith("fernet:") for t in tokens)
    assert "CLEARTEXT-TOKEN" not in dump
    for part in data.glob("flightline.db*"):  # the WAL too
        assert b"CLEARTEXT-TOKEN" not in part.read_bytes()
        assert stat.S_IMODE(part.stat().st_mode) == 0o600, part
    # still usable: the server decrypts it to talk to the registry
    assert teams.app.store.get_registry(teams.b_registry).token == "dapi-CLEARTEXT-TOKEN-42"
    got = teams.admin.registries.GetRegistry(registry_pb2.GetRegistryRequest(registry_id=teams.b_registry))
    assert got.has_token
    # no API token is stored either: only salted hashes
    with sqlite3.connect(database) as db:
        assert b"test-admin-token" not in b"".join(
            bytes(h) for (h,) in db.execute("SELECT hash FROM api_tokens")
        )
        assert TEST_TOKEN.split(".")[2] not in "\n".join(db.iterdump())


def test_first_start_writes_an_admin_token_only_its_owner_can_read(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    settings = type(settings)(**{**settings.__dict__, "bootstrap_token": ""})
    with App(settings) as app:
        path = app.access.admin_token_file
        assert path == (tmp_path / "data" / "admin-token").resolve()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        assert token != TEST_TOKEN
        with Client(app.grpc_address, token) as admin:
            assert access(admin).WhoAmI(access_pb2.WhoAmIRequest()).user.admin
        with Client(app.grpc_address, TEST_TOKEN) as other:
            assert code_of(
                lambda: other.workspaces.ListWorkspaces(workspace_pb2.ListWorkspacesRequest())
            ) == (grpc.StatusCode.UNAUTHENTICATED)
    with App(settings) as again:  # not the first start: no new admin, the file stays
        assert again.access.admin_token_file is None
        assert path.read_text().strip() == token


# -- audit and limits ------------------------------------------------------------------------------


def test_changes_are_audited_with_who_what_and_which_resource(teams: Teams) -> None:
    assert teams.app.audit.flush()
    events = teams.app.store.audit_events(limit=1000)
    uploads = [e for e in events if e.action == "UploadModel" and e.actor == "carol"]
    assert uploads and uploads[0].outcome == "OK" and uploads[0].workspace_id == teams.b
    assert "name=secret-model" in uploads[0].resource
    denied = [e for e in events if e.actor == "bob" and e.action == "UploadModel"]
    assert denied and denied[0].outcome == "PERMISSION_DENIED"
    registry = next(e for e in events if e.action == "CreateRegistry" and e.outcome == "OK")
    everything = " ".join(f"{e.actor} {e.action} {e.resource}" for e in events)
    assert "CLEARTEXT" not in everything and "flt." not in everything  # never a token
    assert registry.resource == "name=b-mlflow"


def test_per_caller_limits_answer_resource_exhausted(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    settings = type(settings)(**{**settings.__dict__, "caller_max_uploads": 1, "caller_max_streams": 1})
    with App(settings) as app, Client(app.grpc_address) as client:
        ws = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="w")).id
        release = threading.Event()
        meta = model_pb2.UploadMetadata(
            name="slow", workspace_id=ws, size_bytes=8, conversion=model_pb2.Conversion(framework="onnx")
        )

        def held() -> Iterator[model_pb2.UploadModelRequest]:
            yield model_pb2.UploadModelRequest(metadata=meta)
            release.wait(30)

        first = client.models.UploadModel.future(held())
        time.sleep(0.5)
        with pytest.raises(grpc.RpcError) as busy:
            client.models.UploadModel(iter([model_pb2.UploadModelRequest(metadata=meta)]))
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at once" in (busy.value.details() or "")
        release.set()
        with pytest.raises(grpc.RpcError):
            first.result(timeout=10)  # 8 bytes announced, none sent: refused, and the slot is free again
        model = upload(client, ws, build_mlp(tmp_path / "m.onnx"), "m", "onnx")
        assert client.deploy(ws, "m", model).status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING
        # Flight: one open exchange per caller
        with flight.connect(app.flight_location) as conn:
            table = features(1)
            writer, reader = conn.do_exchange(flight.FlightDescriptor.for_path(f"{ws}/m"), call_options())
            writer.begin(table.schema)
            writer.write_table(table)
            reader.read_chunk()  # the first stream is open and served
            with pytest.raises(flight.FlightUnavailableError, match="at once"):
                infer(app.flight_location, f"{ws}/m", table)
            writer.done_writing()
            reader.read_all()
            writer.close()
        assert infer(app.flight_location, f"{ws}/m", table).num_rows == 1  # released
