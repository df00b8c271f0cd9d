"""Records to protobuf messages and back. Pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from flightline.runtimes.catalog import FrameworkSpec
from flightline.runtimes.envelope import envelope_schema
from flightline.server.errors import InvalidArgument
from flightline.server.registries import mlflow
from flightline.server.services.deployments import Live
from flightline.server.store import records
from flightline.v1 import deployment_pb2, model_pb2, registry_pb2, workspace_pb2

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

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


def page_size(page: object) -> int:
    size = getattr(page, "page_size", 0)
    return DEFAULT_PAGE_SIZE if size <= 0 else min(size, MAX_PAGE_SIZE)


def page_after(page: object) -> int:
    """Our own lists page by the last id seen; the token is that id as text."""
    token = getattr(page, "page_token", "")
    if not token:
        return 0
    if not token.isdigit():
        raise InvalidArgument(f"page_token {token!r} was not issued by this server")
    return int(token)


def next_token(items: list[object], limit: int, key: str) -> str:
    return str(getattr(items[-1], key)) if len(items) == limit else ""


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return ts


def millis(value: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(value)
    return ts


def workspace(w: records.Workspace) -> workspace_pb2.Workspace:
    return workspace_pb2.Workspace(id=w.id, name=w.name, created_at=timestamp(w.created_at))


def registry(r: records.Registry) -> registry_pb2.Registry:
    return registry_pb2.Registry(
        id=r.id,
        name=r.name,
        url=r.url,
        has_token=bool(r.token),
        created_at=timestamp(r.created_at),
        updated_at=timestamp(r.updated_at),
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
        creation_timestamp=millis(v.creation_timestamp),
        last_updated_timestamp=millis(v.last_updated_timestamp),
    )


def registered_model(m: mlflow.RegisteredModel) -> registry_pb2.RegisteredModel:
    return registry_pb2.RegisteredModel(
        name=m.name,
        user_id=m.user_id,
        description=m.description,
        creation_timestamp=millis(m.creation_timestamp),
        last_updated_timestamp=millis(m.last_updated_timestamp),
        latest_versions=[registered_version(v) for v in m.latest_versions],
    )


def registry_artifact(a: mlflow.ArtifactInfo) -> registry_pb2.RegistryArtifact:
    return registry_pb2.RegistryArtifact(
        file_size=a.file_size,
        full_path=a.full_path,
        is_dir=a.is_dir,
        modification_time=millis(a.modification_time),
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
        created_at=timestamp(v.created_at),
        updated_at=timestamp(v.updated_at),
    )


def model(m: records.Model, latest: records.ModelVersion | None) -> model_pb2.Model:
    message = model_pb2.Model(
        id=m.id,
        name=m.name,
        workspace_id=m.workspace_id,
        visibility=VISIBILITIES[m.visibility],
        created_at=timestamp(m.created_at),
        updated_at=timestamp(m.updated_at),
    )
    if latest is not None:
        message.latest_version.CopyFrom(model_version(latest))
    return message


def runtime_kind(native: bool) -> model_pb2.RuntimeKind:
    return model_pb2.RUNTIME_KIND_NATIVE if native else model_pb2.RUNTIME_KIND_CONTAINERIZED


def framework(f: FrameworkSpec) -> model_pb2.Framework:
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
        available=f.available,
        install_hint=f.install_hint,
    )


def deployment(d: records.Deployment, live: Live | None, flight_location: str) -> deployment_pb2.Deployment:
    message = deployment_pb2.Deployment(
        id=d.id,
        name=d.name,
        workspace_id=d.workspace_id,
        status=DEPLOYMENT_STATUSES[d.status],
        status_reason=d.status_reason,
        created_at=timestamp(d.created_at),
    )
    for index, step in enumerate(d.steps):
        message.steps.add(
            model_id=step.model_id,
            version=step.version,
            runtime=live.runtimes[index] if live else "",
            location=(live.route.steps[index].location or "") if live else "",
        )
    if live is not None:
        message.flight_location = flight_location
        message.input_schema = live.route.input_schema.serialize().to_pybytes()
        message.output_schema = (
            envelope_schema(live.route.input_schema, live.route.output_schema).serialize().to_pybytes()
        )
    return message
