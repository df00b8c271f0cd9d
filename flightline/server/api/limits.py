"""The one check of request sizes: every string, bytes and repeated field of every request message.

Without it a 63 MB registry name is stored and then breaks ListRegistries for good (its responses grow
past the message limit), and NUL or newline characters reach names, paths and the database. The maxima
are written in the fields' comments in protos/flightline/v1/*.proto; this table is where they are
enforced. `ErrorInterceptor` (status.py) calls `check` on each request, and on each message of a client
stream, before the handler sees it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from flightline.server.errors import InvalidArgument
from flightline.server.store.metadata import MAX_WORKSPACE_NAME

DEFAULT_STRING = 256  # characters, for a string field without an entry below
DEFAULT_BYTES = 1 << 20
DEFAULT_REPEATED = 100  # entries (map entries too)
MIB = 1 << 20

# Maximum characters (strings), bytes (bytes fields) or entries (repeated and map fields), by full
# field name. Why each value: ids are UUIDs; names that become DNS labels have 63; our page tokens are
# short decimal or UUID keys while a registry's own tokens are opaque and can be long; URLs and paths
# get the common 2048 / 4096 (PATH_MAX); an Entra ID (JWT) token reaches a few thousand characters.
MAXIMA: dict[str, int] = {
    "flightline.v1.CreateWorkspaceRequest.name": MAX_WORKSPACE_NAME,
    "flightline.v1.ListWorkspacesRequest.page_token": 64,
    # registries
    "flightline.v1.CreateRegistryRequest.name": 100,
    "flightline.v1.CreateRegistryRequest.url": 2048,
    "flightline.v1.CreateRegistryRequest.token": 4096,
    "flightline.v1.AttachRegistryRequest.registry_id": 36,
    "flightline.v1.DetachRegistryRequest.registry_id": 36,
    "flightline.v1.GetRegistryRequest.registry_id": 36,
    "flightline.v1.ListRegistriesRequest.page_token": 64,
    "flightline.v1.ListRegistryModelsRequest.registry_id": 36,
    "flightline.v1.ListRegistryModelsRequest.page_token": 4096,
    "flightline.v1.ListRegistryModelVersionsRequest.registry_id": 36,
    "flightline.v1.ListRegistryModelVersionsRequest.name": 1024,
    "flightline.v1.ListRegistryModelVersionsRequest.page_token": 4096,
    "flightline.v1.ListModelVersionArtifactsRequest.registry_id": 36,
    "flightline.v1.ListModelVersionArtifactsRequest.name": 1024,
    "flightline.v1.ListModelVersionArtifactsRequest.version": 32,
    "flightline.v1.ListModelVersionArtifactsRequest.page_token": 64,
    # models
    "flightline.v1.Conversion.framework": 64,
    "flightline.v1.Conversion.python_version": 16,
    "flightline.v1.Conversion.requirements": 100,  # entries
    "flightline.v1.Conversion.requirements[]": 1024,  # each entry
    "flightline.v1.Conversion.input_schema": MIB,
    "flightline.v1.Conversion.output_schema": MIB,
    "flightline.v1.Conversion.options": 64,  # entries
    "flightline.v1.Conversion.OptionsEntry.key": 128,
    "flightline.v1.Conversion.OptionsEntry.value": 4096,
    "flightline.v1.UploadFromRegistryRequest.registry_id": 36,
    "flightline.v1.UploadFromRegistryRequest.name": 63,
    "flightline.v1.UploadFromRegistryRequest.path": 4096,
    "flightline.v1.UploadMetadata.name": 63,
    "flightline.v1.UploadMetadata.filename": 255,
    "flightline.v1.UploadMetadata.sha256": 64,
    "flightline.v1.UploadModelRequest.chunk": 4 * MIB,
    "flightline.v1.ListModelsRequest.page_token": 64,
    "flightline.v1.ListModelVersionsRequest.page_token": 64,
    "flightline.v1.ListFrameworksRequest.page_token": 64,
    # deployments
    "flightline.v1.DeployRequest.name": 63,
    "flightline.v1.FollowAliasRequest.name": 63,
    "flightline.v1.FollowAliasRequest.registry_id": 36,
    "flightline.v1.FollowAliasRequest.uri": 4096,
    "flightline.v1.StopFollowingAliasRequest.name": 63,
    "flightline.v1.DeployRequest.steps": 32,
    "flightline.v1.UndeployRequest.name": 63,
    "flightline.v1.GetDeploymentRequest.name": 63,
    "flightline.v1.ListDeploymentsRequest.page_token": 64,
    "flightline.v1.UpdateDeploymentRequest.name": 63,
    "flightline.v1.UpdateDeploymentRequest.steps": 32,
    "flightline.v1.UpdateDeploymentRequest.reason": 1024,
    "flightline.v1.SetTrafficSplitRequest.name": 63,
    "flightline.v1.SetTrafficSplitRequest.canary_steps": 32,
    "flightline.v1.SetTrafficSplitRequest.reason": 1024,
    "flightline.v1.SetShadowRequest.name": 63,
    "flightline.v1.SetShadowRequest.shadow_steps": 32,
    "flightline.v1.SetShadowRequest.reason": 1024,
    "flightline.v1.ListDeploymentRevisionsRequest.name": 63,
    "flightline.v1.ListDeploymentRevisionsRequest.page_token": 64,
}

# Cc: C0 and C1 controls (NUL, newline, tab, DEL, ...). No request string has a use for them, and they
# break names, log lines, file names and terminal output.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Undecodable:
    """Stands in for a request whose bytes do not parse (e.g. a string that is not UTF-8), so that
    `check` refuses it as INVALID_ARGUMENT; gRPC itself would answer INTERNAL."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def lenient(deserialize: Callable[[bytes], Any] | None, type_name: str) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # DecodeError, or a string field that is not UTF-8
            return Undecodable(type_name)

    return parse


def check(request: Message | Undecodable) -> None:
    """Raises InvalidArgument naming the first field (as a path from the request) over its limit."""
    if isinstance(request, Undecodable):
        raise InvalidArgument(f"the {request.type_name} request does not parse: are its strings UTF-8?")
    _walk(request, "")


def _walk(message: Message, prefix: str) -> None:
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.is_repeated:
            _check_repeated(field, value, path)
        else:
            _check_value(field, field.full_name, value, path)


def _check_repeated(field: FieldDescriptor, values: Any, path: str) -> None:
    limit = MAXIMA.get(field.full_name, DEFAULT_REPEATED)
    if len(values) > limit:
        raise InvalidArgument(f"{path}: at most {limit} entries, got {len(values)}")
    entry: Descriptor | None = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        for k, v in values.items():
            _check_value(key, key.full_name, k, f"{path} key")
            _check_value(value, value.full_name, v, f"{path}[{k!r}]")
        return
    for index, item in enumerate(values):
        _check_value(field, f"{field.full_name}[]", item, f"{path}[{index}]")


def _check_value(field: FieldDescriptor, key: str, value: Any, path: str) -> None:
    if field.type == FieldDescriptor.TYPE_STRING:
        limit = MAXIMA.get(key, DEFAULT_STRING)
        if len(value) > limit:
            raise InvalidArgument(f"{path}: at most {limit} characters, got {len(value)}")
        if _CONTROL.search(value):
            raise InvalidArgument(f"{path} must not contain control characters (newline, NUL, ...)")
    elif field.type == FieldDescriptor.TYPE_BYTES:
        limit = MAXIMA.get(key, DEFAULT_BYTES)
        if len(value) > limit:
            raise InvalidArgument(f"{path}: at most {limit} bytes, got {len(value)}")
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        _walk(value, f"{path}.")
