"""Records to protobuf messages and back. Pure functions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.timestamp_pb2 import Timestamp

from flightline.runtimes.catalog import FrameworkSpec
from flightline.runtimes.envelope import envelope_schema
from flightline.server.dataplane.routes import route_key
from flightline.server.errors import InvalidArgument
from flightline.server.registries import mlflow
from flightline.server.services.deployments import Live, Loaded
from flightline.server.store import records
from flightline.v1 import deployment_pb2, model_pb2, registry_pb2, workspace_pb2

T = TypeVar("T")
K = TypeVar("K")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Page tokens are opaque to clients. Ours are the last key of the previous page: a number (ASCII digits
# only: str.isdigit would take '²', and int() would take '٣') or a registry's UUID.
_NUMBER_TOKEN = re.compile(r"[0-9]{1,18}")
_UUID_TOKEN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

VISIBILITY_NAMES = {
    model_pb2.VISIBILITY_UNSPECIFIED: "private",
    model_pb2.VISIBILITY_PRIVATE: "private",
    model_pb2.VISIBILITY_PUBLIC: "public",
}
VISIBILITIES = {"private": model_pb2.VISIBILITY_PRIVATE, "public": model_pb2.VISIBILITY_PUBLIC}
MODEL_STATUSES = {
    records.ModelStatus.PENDING_CONVERSION: model_pb2.MODEL_STATUS_PENDING_CONVERSION,
    records.ModelStatus.CONVERTING: model_pb2.MODEL_STATUS_CONVERTING,
    records.ModelStatus.READY: model_pb2.MODEL_STATUS_READY,
    records.ModelStatus.ERROR: model_pb2.MODEL_STATUS_ERROR,
}
DEPLOYMENT_STATUSES = {
    records.DeploymentStatus.DEPLOYING: deployment_pb2.DEPLOYMENT_STATUS_DEPLOYING,
    records.DeploymentStatus.RUNNING: deployment_pb2.DEPLOYMENT_STATUS_RUNNING,
    records.DeploymentStatus.FAILED: deployment_pb2.DEPLOYMENT_STATUS_FAILED,
    records.DeploymentStatus.STOPPED: deployment_pb2.DEPLOYMENT_STATUS_STOPPED,
}


def page_size(size: int) -> int:
    """AIP-158: 0 asks for the default, more than the maximum gets the maximum, negative is an error."""
    if size < 0:
        raise InvalidArgument(f"page_size must not be negative, got {size}")
    return DEFAULT_PAGE_SIZE if size == 0 else min(size, MAX_PAGE_SIZE)


def _bad_token() -> InvalidArgument:
    # The token is not echoed: it is the client's input, and the field name says enough.
    return InvalidArgument("page_token was not issued by this server: pass a next_page_token, or none")


def page_after(token: str) -> int:
    """The number key a token of ours carries; 0 (before every key) for the first page."""
    if not token:
        return 0
    if not _NUMBER_TOKEN.fullmatch(token):
        raise _bad_token()
    return int(token)


def page_after_uuid(token: str) -> str:
    """The UUID key a registry-list token carries; "" for the first page."""
    if token and not _UUID_TOKEN.fullmatch(token):
        raise _bad_token()
    return token


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


def keyset_page(
    size: int, token_key: K, fetch: Callable[[int, K], Sequence[T]], key: Callable[[T], object]
) -> Page[T]:
    """One page of a list ordered by a key: asks for one item more than the page to know if the page
    is the last (no empty last page), and hands out the last item's key as the next token."""
    limit = page_size(size)
    items = list(fetch(limit + 1, token_key))
    if len(items) <= limit:
        return Page(items, "")
    return Page(items[:limit], str(key(items[limit - 1])))


def offset_page(size: int, token: str, items: Sequence[T]) -> Page[T]:
    """One page of a list that cannot change between calls (the framework catalog, a registry version's
    files): the token is the position of the next item."""
    limit = page_size(size)
    start = page_after(token)
    page = list(items[start : start + limit])
    return Page(page, str(start + limit) if start + limit < len(items) else "")


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return ts


def millis(value: int) -> Timestamp | None:
    """An MLflow time (ms since the epoch); None (field unset) when the registry reports none (0)."""
    if value <= 0:
        return None
    ts = Timestamp()
    ts.FromMilliseconds(value)
    return ts


def workspace(w: records.Workspace) -> workspace_pb2.Workspace:
    return workspace_pb2.Workspace(id=w.id, name=w.name, create_time=timestamp(w.created_at))


def registry(r: records.Registry) -> registry_pb2.Registry:
    return registry_pb2.Registry(
        id=r.id,
        name=r.name,
        url=r.url,
        has_token=bool(r.token),
        create_time=timestamp(r.created_at),
        update_time=timestamp(r.updated_at),
        workspace_ids=list(r.workspace_ids),
    )


def registered_version(v: mlflow.RegisteredModelVersion) -> registry_pb2.RegisteredModelVersion:
    return registry_pb2.RegisteredModelVersion(
        name=v.name,
        description=v.description,
        version=v.version,
        status=v.status,
        run_id=v.run_id,
        run_link=v.run_link,
        source=v.source,
        current_stage=v.current_stage,
        create_time=millis(v.creation_timestamp),
        update_time=millis(v.last_updated_timestamp),
    )


def registered_model(m: mlflow.RegisteredModel) -> registry_pb2.RegisteredModel:
    return registry_pb2.RegisteredModel(
        name=m.name,
        user_id=m.user_id,
        description=m.description,
        create_time=millis(m.creation_timestamp),
        update_time=millis(m.last_updated_timestamp),
        latest_versions=[registered_version(v) for v in m.latest_versions],
    )


def registry_artifact(a: mlflow.ArtifactInfo) -> registry_pb2.RegistryArtifact:
    return registry_pb2.RegistryArtifact(
        file_size=a.file_size,
        full_path=a.full_path,
        is_dir=a.is_dir,
        update_time=millis(a.modification_time),
        path=a.path,
    )


def conversion_in(c: model_pb2.Conversion) -> records.Conversion:
    return records.Conversion(
        framework=c.framework,
        python_version=c.python_version,
        requirements=tuple(c.requirements),
        input_schema=c.input_schema,
        output_schema=c.output_schema,
        options=dict(c.options),
    )


def conversion_out(c: records.Conversion) -> model_pb2.Conversion:
    return model_pb2.Conversion(
        framework=c.framework,
        python_version=c.python_version,
        requirements=list(c.requirements),
        input_schema=c.input_schema,
        output_schema=c.output_schema,
        options=c.options,
    )


def model_version(v: records.ModelVersion) -> model_pb2.ModelVersion:
    return model_pb2.ModelVersion(
        model_id=v.model_id,
        model_name=v.model_name,
        version=v.version,
        framework=v.framework,
        runtime=v.runtime,
        runtime_kind=runtime_kind(v.native),
        status=MODEL_STATUSES[v.status],
        status_reason=v.status_reason,
        conversion_note=v.conversion_note,
        input_schema=v.input_schema,
        output_schema=v.output_schema,
        sha256=v.sha256,
        size_bytes=v.size_bytes,
        original_sha256=v.original_sha256,
        source=v.source,
        conversion=conversion_out(v.conversion),
        create_time=timestamp(v.created_at),
        update_time=timestamp(v.updated_at),
        mlflow=None if v.origin is None else mlflow_origin(v.origin),
        converter=v.converter,
    )


def mlflow_origin(o: records.MlflowOrigin) -> model_pb2.MlflowOrigin:
    return model_pb2.MlflowOrigin(
        uri=o.uri,
        name=o.name,
        version=o.version,
        alias=o.alias,
        model_id=o.model_id,
        run_id=o.run_id,
        mlflow_version=o.mlflow_version,
        flavors=o.flavors,
        flavor=o.flavor,
        serialization=o.serialization,
        signature=o.signature,
        route=o.route,
    )


def model(m: records.Model, latest: records.ModelVersion | None) -> model_pb2.Model:
    message = model_pb2.Model(
        id=m.id,
        name=m.name,
        workspace_id=m.workspace_id,
        visibility=VISIBILITIES[m.visibility],
        create_time=timestamp(m.created_at),
        update_time=timestamp(m.updated_at),
    )
    if latest is not None:
        message.latest_version.CopyFrom(model_version(latest))
    return message


def runtime_kind(native: bool) -> model_pb2.RuntimeKind:
    return model_pb2.RUNTIME_KIND_NATIVE if native else model_pb2.RUNTIME_KIND_CONTAINERIZED


def framework(f: FrameworkSpec, family_built: Callable[[str], bool] | None = None) -> model_pb2.Framework:
    """`family_built`: whether a runtime family's environment is built (ModelService.family_built)."""
    hint = f.unavailable(family_built)
    return model_pb2.Framework(
        name=f.name,
        runtime_kind=runtime_kind(f.native),
        runtime=f.runtime,
        converts_to_onnx=f.converts_to_onnx,
        file_types=f.file_types,
        default_input_schema=f.default_input_schema.serialize().to_pybytes()
        if f.default_input_schema
        else b"",
        default_output_schema=f.default_output_schema.serialize().to_pybytes()
        if f.default_output_schema
        else b"",
        available=not hint,
        install_hint=hint,
    )


def alias_follow(follow: records.Follow) -> deployment_pb2.AliasFollow:
    return deployment_pb2.AliasFollow(
        uri=follow.uri,
        followed_version=follow.followed_version,
        status_reason=follow.status_reason,
        update_time=timestamp(follow.checked_at),
    )


def deployment(
    d: records.Deployment, live: Live | None, flight_location: str, follow: records.Follow | None = None
) -> deployment_pb2.Deployment:
    message = deployment_pb2.Deployment(
        id=d.id,
        name=d.name,
        workspace_id=d.workspace_id,
        status=DEPLOYMENT_STATUSES[d.status],
        status_reason=d.status_reason,
        create_time=timestamp(d.created_at),
        revision=d.revision,
        canary_percent=d.canary_percent,
        flight_path=route_key(d.workspace_id, d.name),
    )
    if d.pending_revision:
        message.pending_revision = d.pending_revision
    if follow is not None:
        message.follow.CopyFrom(alias_follow(follow))
    _steps(message.steps, d.steps, live.primary if live else None)
    _steps(message.canary_steps, d.canary, live.canary if live else None)
    _steps(message.shadow_steps, d.shadow, live.shadow if live else None)
    if live is not None:
        message.flight_location = flight_location
        message.input_schema = live.route.input_schema.serialize().to_pybytes()
        message.output_schema = (
            envelope_schema(live.route.input_schema, live.route.output_schema).serialize().to_pybytes()
        )
        if live.mirror is not None:
            stats = live.mirror.stats()
            message.shadow_stats.CopyFrom(
                deployment_pb2.ShadowStats(
                    batches=stats.batches,
                    rows=stats.rows,
                    failed=stats.failed,
                    dropped=stats.dropped,
                    disagreeing_rows=stats.disagreeing_rows,
                    mean_latency_ms=stats.mean_latency_ms,
                    max_latency_ms=stats.max_latency_ms,
                )
            )
    return message


def _steps(
    field: RepeatedCompositeFieldContainer[deployment_pb2.DeploymentStep],
    steps: Sequence[records.DeploymentStep],
    loaded: Loaded | None,
) -> None:
    """Steps as recorded; runtime and location from what is loaded for them, when it is these steps."""
    here = loaded if loaded is not None and loaded.pins == tuple(steps) else None
    for index, step in enumerate(steps):
        field.add(
            model_id=step.model_id,
            version=step.version,
            runtime=here.runtimes[index] if here else "",
            location=(here.steps[index].location or "") if here else "",
        )


REVISION_STATUSES = {
    records.RevisionStatus.PENDING: deployment_pb2.REVISION_STATUS_PENDING,
    records.RevisionStatus.LIVE: deployment_pb2.REVISION_STATUS_LIVE,
    records.RevisionStatus.FAILED: deployment_pb2.REVISION_STATUS_FAILED,
}


def revision(r: records.Revision) -> deployment_pb2.DeploymentRevision:
    def pins(steps: Sequence[records.DeploymentStep]) -> list[deployment_pb2.DeploymentStep]:
        return [deployment_pb2.DeploymentStep(model_id=s.model_id, version=s.version) for s in steps]

    return deployment_pb2.DeploymentRevision(
        revision=r.revision,
        status=REVISION_STATUSES[r.status],
        status_reason=r.status_reason,
        actor=r.actor,
        reason=r.reason,
        steps=pins(r.plan.steps),
        canary_steps=pins(r.plan.canary),
        canary_percent=r.plan.canary_percent,
        shadow_steps=pins(r.plan.shadow),
        create_time=timestamp(r.created_at),
    )


def requested_version(
    request: model_pb2.GetModelVersionRequest | model_pb2.WatchModelVersionRequest | deployment_pb2.StepSpec,
    field: str,
) -> int:
    """An `optional int32 version`: the number asked for, or 0 (the store's "latest") when absent."""
    if not request.HasField("version"):
        return 0
    if request.version <= 0:
        raise InvalidArgument(f"{field} must be 1 or more; leave it unset for the latest version")
    return request.version
