"""The API contract over real gRPC: AIP-158 paging on every List, `optional` where absence means
something, one timestamp naming style, DetachRegistry, and server reflection v1 and v1alpha."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc
from support.mlp import build_mlp

from flightline.runtimes.plugins import PLUGINS
from flightline.server.api import limits, messages
from flightline.server.app import App
from flightline.server.client import Client, every_page
from flightline.server.registries import mlflow
from flightline.server.store.records import Conversion, DeploymentStep, ModelStatus
from flightline.v1 import deployment_pb2, model_pb2, registry_pb2, workspace_pb2

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
PB2 = (deployment_pb2, model_pb2, registry_pb2, workspace_pb2)
BAD_TOKENS = ("9" * 40, "²", "-1", "1 ", "abc")


def workspace(client: Client, name: str) -> int:
    return int(client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name=name)).id)


def seed_version(app: App, workspace_id: int, name: str) -> int:
    """A READY version straight into the store: these tests are about listing, not uploading."""
    version = app.store.add_model_version(
        workspace_id=workspace_id,
        name=name,
        visibility="private",
        framework="onnx",
        runtime="onnx",
        native=True,
        status=ModelStatus.READY,
        conversion=Conversion(framework="onnx"),
        source="upload:seed.onnx",
        sha256="0" * 64,
        size_bytes=1,
        original_sha256="0" * 64,
    )
    return version.model_id


def pages(rpc: Callable[..., Any], request: Any, field: str) -> list[list[Any]]:
    """Every page of a List call, following next_page_token; asserts no page is over page_size."""
    result, token = [], ""
    while True:
        request.page_token = token
        response = rpc(request)
        items = list(getattr(response, field))
        assert len(items) <= request.page_size
        result.append(items)
        token = response.next_page_token
        if not token:
            return result
        assert len(result) < 100, "paging does not end"


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value.code(), failed.value.details() or ""


# -- paging


def test_every_list_request_pages_the_aip_158_way() -> None:
    lists = [
        (service.methods_by_name[name], service)
        for module in PB2
        for service in module.DESCRIPTOR.services_by_name.values()
        for name in service.methods_by_name
        if name.startswith("List")
    ]
    assert len(lists) == 10  # ListDeploymentRevisions joined (issue 13)
    for method, _ in lists:
        request, response = method.input_type.fields_by_name, method.output_type.fields_by_name
        assert request["page_size"].type == FieldDescriptor.TYPE_INT32, method.full_name
        assert request["page_token"].type == FieldDescriptor.TYPE_STRING, method.full_name
        assert "page" not in request, method.full_name
        assert response["next_page_token"].type == FieldDescriptor.TYPE_STRING, method.full_name


def test_workspaces_page_without_an_empty_last_page(client: Client) -> None:
    for i in range(4):
        workspace(client, f"ws-{i}")
    got = pages(
        client.workspaces.ListWorkspaces, workspace_pb2.ListWorkspacesRequest(page_size=2), "workspaces"
    )
    assert [[w.name for w in page] for page in got] == [["ws-0", "ws-1"], ["ws-2", "ws-3"]]


def test_registries_page_in_creation_order_across_detachments(client: Client) -> None:
    ws, other = workspace(client, "reg"), workspace(client, "other")
    ids = []
    for i in range(5):
        request = registry_pb2.CreateRegistryRequest(workspace_id=ws, name=f"r{i}", url="http://127.0.0.1:1")
        ids.append(client.registries.CreateRegistry(request).id)
    client.registries.CreateRegistry(
        registry_pb2.CreateRegistryRequest(workspace_id=other, name="elsewhere", url="http://127.0.0.1:1")
    )
    request = registry_pb2.ListRegistriesRequest(workspace_id=ws, page_size=2)
    got = pages(client.registries.ListRegistries, request, "registries")
    assert [[r.id for r in page] for page in got] == [ids[0:2], ids[2:4], ids[4:5]]

    # The registry a token points at, detached between pages, neither repeats nor hides another one.
    request.page_token = ""
    first = client.registries.ListRegistries(request)
    detach = registry_pb2.DetachRegistryRequest(registry_id=ids[1], workspace_id=ws)
    client.registries.DetachRegistry(detach)
    request.page_token = first.next_page_token
    rest = every_page(client.registries.ListRegistries, request, "registries")
    assert [r.id for r in rest] == ids[2:]

    # A well-formed token for a registry that does not exist was not issued by us.
    request.page_token = "00000000-0000-0000-0000-000000000000"
    code, details = code_of(lambda: client.registries.ListRegistries(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details


def test_models_and_versions_page(app: App, client: Client) -> None:
    ws = workspace(client, "models")
    ids = [seed_version(app, ws, f"m{i}") for i in range(3)]
    for _ in range(4):
        seed_version(app, ws, "m0")
    got = pages(client.models.ListModels, model_pb2.ListModelsRequest(workspace_id=ws, page_size=2), "models")
    assert [[m.id for m in page] for page in got] == [ids[:2], ids[2:]]
    assert got[0][0].latest_version.version == 5

    request = model_pb2.ListModelVersionsRequest(model_id=ids[0], page_size=2)
    got_versions = pages(client.models.ListModelVersions, request, "versions")
    assert [[v.version for v in page] for page in got_versions] == [[1, 2], [3, 4], [5]]


def test_deployments_page_over_one_or_every_workspace(app: App, client: Client) -> None:
    a, b = workspace(client, "a"), workspace(client, "b")
    model_a, model_b = seed_version(app, a, "ma"), seed_version(app, b, "mb")
    for name, ws, model in [("d1", a, model_a), ("d2", b, model_b), ("d3", a, model_a), ("d4", a, model_a)]:
        app.store.create_deployment(ws, name, (DeploymentStep(model, 1),))

    every = deployment_pb2.ListDeploymentsRequest(page_size=3)  # workspace_id absent: every workspace
    got = pages(client.deployments.ListDeployments, every, "deployments")
    assert [[d.name for d in page] for page in got] == [["d1", "d2", "d3"], ["d4"]]

    one = deployment_pb2.ListDeploymentsRequest(workspace_id=a, page_size=2)
    got = pages(client.deployments.ListDeployments, one, "deployments")
    assert [[d.name for d in page] for page in got] == [["d1", "d3"], ["d4"]]

    # 0 is a workspace id like any other now, not "every workspace".
    zero = deployment_pb2.ListDeploymentsRequest(workspace_id=0)
    code, _ = code_of(lambda: client.deployments.ListDeployments(zero))
    assert code == grpc.StatusCode.NOT_FOUND


def test_frameworks_page(client: Client) -> None:
    whole = client.models.ListFrameworks(model_pb2.ListFrameworksRequest())
    assert len(whole.frameworks) == 25 and not whole.next_page_token
    got = pages(client.models.ListFrameworks, model_pb2.ListFrameworksRequest(page_size=10), "frameworks")
    assert [len(page) for page in got] == [10, 10, 5]
    assert [f.name for page in got for f in page] == [f.name for f in whole.frameworks]


def test_registry_version_artifacts_page(client: Client, mlflow_registry: tuple[str, dict[str, Any]]) -> None:
    url, logged = mlflow_registry
    ws = workspace(client, "browse")
    registry = client.registries.CreateRegistry(
        registry_pb2.CreateRegistryRequest(workspace_id=ws, name="mlflow", url=url)
    )
    request = registry_pb2.ListModelVersionArtifactsRequest(
        registry_id=registry.id, name=logged["multi_version_model"], version="2"
    )
    whole = client.registries.ListModelVersionArtifacts(request)
    assert len(whole.artifacts) >= 3 and not whole.next_page_token
    request.page_size = 1
    got = pages(client.registries.ListModelVersionArtifacts, request, "artifacts")
    assert [a.path for page in got for a in page] == [a.path for a in whole.artifacts]
    assert all(len(page) == 1 for page in got)


LISTS: list[tuple[str, Callable[[Client, int], Any]]] = [
    ("ListWorkspaces", lambda c, ws: c.workspaces.ListWorkspaces(workspace_pb2.ListWorkspacesRequest(**ws))),
    (
        "ListRegistries",
        lambda c, ws: c.registries.ListRegistries(registry_pb2.ListRegistriesRequest(workspace_id=1, **ws)),
    ),
    ("ListModels", lambda c, ws: c.models.ListModels(model_pb2.ListModelsRequest(workspace_id=1, **ws))),
    (
        "ListModelVersions",
        lambda c, ws: c.models.ListModelVersions(model_pb2.ListModelVersionsRequest(model_id=1, **ws)),
    ),
    ("ListFrameworks", lambda c, ws: c.models.ListFrameworks(model_pb2.ListFrameworksRequest(**ws))),
    (
        "ListDeployments",
        lambda c, ws: c.deployments.ListDeployments(deployment_pb2.ListDeploymentsRequest(**ws)),
    ),
]


@pytest.mark.parametrize("name", [name for name, _ in LISTS])
def test_malformed_page_tokens_and_sizes_are_invalid_argument(app: App, client: Client, name: str) -> None:
    ws = workspace(client, "tokens")
    seed_version(app, ws, "m")  # model 1 in workspace 1, so a good request would succeed
    call = dict(LISTS)[name]
    call(client, {})
    for token in BAD_TOKENS:
        code, details = code_of(lambda token=token: call(client, {"page_token": token}))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, token)
        assert "page_token" in details and token not in details
    code, details = code_of(lambda: call(client, {"page_size": -1}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in details


def test_registry_lists_check_the_token_before_asking_the_registry(client: Client) -> None:
    ws = workspace(client, "artifacts")
    registry = client.registries.CreateRegistry(
        registry_pb2.CreateRegistryRequest(workspace_id=ws, name="down", url="http://127.0.0.1:1")
    )
    request = registry_pb2.ListModelVersionArtifactsRequest(
        registry_id=registry.id, name="m", version="1", page_token="²"
    )
    code, details = code_of(lambda: client.registries.ListModelVersionArtifacts(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details


# -- optional


def test_model_version_absent_means_latest_zero_is_refused(app: App, client: Client) -> None:
    ws = workspace(client, "optional")
    model_id = seed_version(app, ws, "m")
    seed_version(app, ws, "m")
    get = client.models.GetModelVersion
    assert get(model_pb2.GetModelVersionRequest(model_id=model_id)).version == 2
    assert get(model_pb2.GetModelVersionRequest(model_id=model_id, version=1)).version == 1
    for bad in (0, -3):
        code, details = code_of(
            lambda bad=bad: get(model_pb2.GetModelVersionRequest(model_id=model_id, version=bad))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "version" in details
    code, _ = code_of(lambda: get(model_pb2.GetModelVersionRequest(model_id=model_id, version=3)))
    assert code == grpc.StatusCode.NOT_FOUND


def test_deploy_step_version_absent_means_latest(client: Client, tmp_path: Path) -> None:
    ws = workspace(client, "deploy")
    meta = model_pb2.UploadMetadata(
        name="mlp", workspace_id=ws, conversion=model_pb2.Conversion(framework="onnx")
    )
    model_id = client.upload_file(build_mlp(tmp_path / "v1.onnx"), meta).model_id
    client.upload_file(build_mlp(tmp_path / "v2.onnx", seed=2), meta)

    def deploy(name: str, step: deployment_pb2.StepSpec) -> deployment_pb2.Deployment:
        request = deployment_pb2.DeployRequest(workspace_id=ws, name=name, steps=[step])
        deployment: deployment_pb2.Deployment = client.deployments.Deploy(request)
        return deployment

    try:
        assert deploy("latest", deployment_pb2.StepSpec(model_id=model_id)).steps[0].version == 2
        assert deploy("pinned", deployment_pb2.StepSpec(model_id=model_id, version=1)).steps[0].version == 1
        code, details = code_of(lambda: deploy("zero", deployment_pb2.StepSpec(model_id=model_id, version=0)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "steps[0].version" in details
    finally:
        for name in ("latest", "pinned"):
            client.deployments.Undeploy(deployment_pb2.UndeployRequest(name=name))


def test_optional_fields_are_proto3_optional() -> None:
    for field in (
        model_pb2.GetModelVersionRequest.DESCRIPTOR.fields_by_name["version"],
        deployment_pb2.StepSpec.DESCRIPTOR.fields_by_name["version"],
        deployment_pb2.ListDeploymentsRequest.DESCRIPTOR.fields_by_name["workspace_id"],
    ):
        assert field.has_presence, field.full_name


# -- names, timestamps, documentation


def all_messages() -> Iterator[Descriptor]:
    def walk(message: Descriptor) -> Iterator[Descriptor]:
        yield message
        for nested in message.nested_types:
            yield from walk(nested)

    for module in PB2:
        for message in module.DESCRIPTOR.message_types_by_name.values():
            yield from walk(message)


def test_one_timestamp_naming_style() -> None:
    stamps = {
        f.full_name: f.name
        for m in all_messages()
        for f in m.fields
        if f.message_type is not None and f.message_type.full_name == "google.protobuf.Timestamp"
    }
    assert len(stamps) >= 13
    assert {name for name in stamps.values()} == {"create_time", "update_time"}, stamps


def test_registry_times_are_unset_when_the_registry_reports_none() -> None:
    reported = mlflow.RegisteredModel(
        name="m", user_id="", description="", creation_timestamp=1_700_000_000_123, last_updated_timestamp=0,
        latest_versions=[],
    )  # fmt: skip
    message = messages.registered_model(reported)
    assert message.create_time.ToMilliseconds() == 1_700_000_000_123
    assert not message.HasField("update_time")


def test_detach_registry_replaces_remove_registry(client: Client) -> None:
    methods = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].methods_by_name
    assert "DetachRegistry" in methods and "RemoveRegistry" not in methods
    old = client.channel.unary_unary(
        "/flightline.v1.RegistryService/RemoveRegistry",
        request_serializer=registry_pb2.DetachRegistryRequest.SerializeToString,
        response_deserializer=registry_pb2.RegistryWorkspace.FromString,
    )
    code, _ = code_of(lambda: old(registry_pb2.DetachRegistryRequest(registry_id="x", workspace_id=1)))
    assert code == grpc.StatusCode.UNIMPLEMENTED


def field_comments(out: Path) -> dict[str, str]:
    """The comments of every field, by full name, from the protos compiled with their comments."""
    well_known = Path(protoc.__file__).parent / "_proto"
    protos = map(str, sorted(PROTO_ROOT.glob("flightline/v1/*.proto")))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        "--include_source_info",
        f"--descriptor_set_out={out}",
    ]
    assert protoc.main([*args, *protos]) == 0
    comments: dict[str, str] = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        for location in file.source_code_info.location:
            path = list(location.path)
            tags = path[0::2]  # [4 (message_type), 3 (nested_type)..., 2 (field)] with indices between
            if len(path) % 2 or len(path) < 4 or tags[0] != 4 or tags[-1] != 2 or set(tags[1:-1]) - {3}:
                continue
            message = file.message_type[path[1]]
            names = [message.name]
            for index in path[3:-2:2]:  # nested_type indices
                message = message.nested_type[index]
                names.append(message.name)
            field = message.field[path[-1]]
            comments[f"{file.package}.{'.'.join(names)}.{field.name}"] = (
                location.leading_comments + location.trailing_comments
            )
    return comments


def test_every_limit_is_written_in_its_fields_comment(tmp_path: Path) -> None:
    comments = field_comments(tmp_path / "protos.pb")
    for key, limit in limits.MAXIMA.items():
        # Entries of repeated and map fields are documented on the field: requirements[] and
        # Conversion.OptionsEntry.key on Conversion.requirements and Conversion.options.
        entry = re.fullmatch(r"(.*)\.(\w+)Entry\.(?:key|value)", key)
        owner = f"{entry.group(1)}.{entry.group(2).lower()}" if entry else key.removesuffix("[]")
        comment = comments.get(owner, "")
        spelled = f"{limit >> 20} MiB" if limit >= 1 << 20 else str(limit)
        assert re.search(rf"\b{re.escape(spelled)}\b", comment), f"{owner}'s comment does not say {spelled}"


def test_docs_name_only_runtimes_that_exist() -> None:
    text = "\n".join(p.read_text() for p in PROTO_ROOT.glob("flightline/v1/*.proto"))
    quoted = set(re.findall(r'"([a-z]+)"', " ".join(re.findall(r"//.*[Rr]untime.*", text))))
    runtimes = {p.name for p in PLUGINS}
    assert quoted <= runtimes, quoted - runtimes
    for gone in ("xgboost", "huggingface"):  # tensorflow is a runtime now (issue 9)
        assert gone not in " ".join(re.findall(r"//.*[Rr]untime.*", text)), gone


# -- reflection


def reflect(channel: grpc.Channel, version: str, request: reflection_pb2.ServerReflectionRequest) -> Any:
    # v1 and v1alpha are the same messages on the wire; only the service path differs.
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (response,) = list(call(iter([request]), timeout=10))
    return response


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection(client: Client, version: str) -> None:
    listed = reflect(client.channel, version, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert {"flightline.v1.ModelService", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection", "grpc.health.v1.Health"} <= names  # fmt: skip

    for symbol, method in [
        ("flightline.v1.RegistryService", "DetachRegistry"),
        ("grpc.reflection.v1.ServerReflection", "ServerReflectionInfo"),
    ]:
        found = reflect(
            client.channel, version, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        )
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in found.file_descriptor_response.file_descriptor_proto
        ]
        services = {f"{f.package}.{s.name}": s for f in files for s in f.service}
        assert method in {m.name for m in services[symbol].method}, (version, symbol)

    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)  # the library's own v1alpha client
    assert list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
