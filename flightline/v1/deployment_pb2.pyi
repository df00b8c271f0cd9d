import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeploymentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_STATUS_UNSPECIFIED: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_DEPLOYING: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_RUNNING: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_FAILED: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_STOPPED: _ClassVar[DeploymentStatus]

class RevisionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVISION_STATUS_UNSPECIFIED: _ClassVar[RevisionStatus]
    REVISION_STATUS_PENDING: _ClassVar[RevisionStatus]
    REVISION_STATUS_LIVE: _ClassVar[RevisionStatus]
    REVISION_STATUS_FAILED: _ClassVar[RevisionStatus]
DEPLOYMENT_STATUS_UNSPECIFIED: DeploymentStatus
DEPLOYMENT_STATUS_DEPLOYING: DeploymentStatus
DEPLOYMENT_STATUS_RUNNING: DeploymentStatus
DEPLOYMENT_STATUS_FAILED: DeploymentStatus
DEPLOYMENT_STATUS_STOPPED: DeploymentStatus
REVISION_STATUS_UNSPECIFIED: RevisionStatus
REVISION_STATUS_PENDING: RevisionStatus
REVISION_STATUS_LIVE: RevisionStatus
REVISION_STATUS_FAILED: RevisionStatus

class StepSpec(_message.Message):
    __slots__ = ("model_id", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: int
    version: int
    def __init__(self, model_id: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class DeployRequest(_message.Message):
    __slots__ = ("workspace_id", "name", "steps", "batching")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    workspace_id: int
    name: str
    steps: _containers.RepeatedCompositeFieldContainer[StepSpec]
    batching: Batching
    def __init__(self, workspace_id: _Optional[int] = ..., name: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[StepSpec, _Mapping]]] = ..., batching: _Optional[_Union[Batching, _Mapping]] = ...) -> None: ...

class FollowAliasRequest(_message.Message):
    __slots__ = ("workspace_id", "name", "registry_id", "uri")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    workspace_id: int
    name: str
    registry_id: str
    uri: str
    def __init__(self, workspace_id: _Optional[int] = ..., name: _Optional[str] = ..., registry_id: _Optional[str] = ..., uri: _Optional[str] = ...) -> None: ...

class StopFollowingAliasRequest(_message.Message):
    __slots__ = ("workspace_id", "name")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    workspace_id: int
    name: str
    def __init__(self, workspace_id: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class AliasFollow(_message.Message):
    __slots__ = ("uri", "followed_version", "status_reason", "update_time")
    URI_FIELD_NUMBER: _ClassVar[int]
    FOLLOWED_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    uri: str
    followed_version: str
    status_reason: str
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, uri: _Optional[str] = ..., followed_version: _Optional[str] = ..., status_reason: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Batching(_message.Message):
    __slots__ = ("max_batch_rows", "max_delay_ms")
    MAX_BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    max_batch_rows: int
    max_delay_ms: int
    def __init__(self, max_batch_rows: _Optional[int] = ..., max_delay_ms: _Optional[int] = ...) -> None: ...

class DeploymentStep(_message.Message):
    __slots__ = ("model_id", "version", "runtime", "location")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    model_id: int
    version: int
    runtime: str
    location: str
    def __init__(self, model_id: _Optional[int] = ..., version: _Optional[int] = ..., runtime: _Optional[str] = ..., location: _Optional[str] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("id", "name", "workspace_id", "status", "status_reason", "steps", "flight_location", "input_schema", "output_schema", "create_time", "flight_path", "revision", "pending_revision", "canary_steps", "canary_percent", "shadow_steps", "shadow_stats", "follow")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    FLIGHT_LOCATION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FLIGHT_PATH_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PENDING_REVISION_FIELD_NUMBER: _ClassVar[int]
    CANARY_STEPS_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_STEPS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_STATS_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    workspace_id: int
    status: DeploymentStatus
    status_reason: str
    steps: _containers.RepeatedCompositeFieldContainer[DeploymentStep]
    flight_location: str
    input_schema: bytes
    output_schema: bytes
    create_time: _timestamp_pb2.Timestamp
    flight_path: str
    revision: int
    pending_revision: int
    canary_steps: _containers.RepeatedCompositeFieldContainer[DeploymentStep]
    canary_percent: int
    shadow_steps: _containers.RepeatedCompositeFieldContainer[DeploymentStep]
    shadow_stats: ShadowStats
    follow: AliasFollow
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., workspace_id: _Optional[int] = ..., status: _Optional[_Union[DeploymentStatus, str]] = ..., status_reason: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[DeploymentStep, _Mapping]]] = ..., flight_location: _Optional[str] = ..., input_schema: _Optional[bytes] = ..., output_schema: _Optional[bytes] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., flight_path: _Optional[str] = ..., revision: _Optional[int] = ..., pending_revision: _Optional[int] = ..., canary_steps: _Optional[_Iterable[_Union[DeploymentStep, _Mapping]]] = ..., canary_percent: _Optional[int] = ..., shadow_steps: _Optional[_Iterable[_Union[DeploymentStep, _Mapping]]] = ..., shadow_stats: _Optional[_Union[ShadowStats, _Mapping]] = ..., follow: _Optional[_Union[AliasFollow, _Mapping]] = ...) -> None: ...

class ShadowStats(_message.Message):
    __slots__ = ("batches", "rows", "failed", "dropped", "disagreeing_rows", "mean_latency_ms", "max_latency_ms")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    DISAGREEING_ROWS_FIELD_NUMBER: _ClassVar[int]
    MEAN_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    batches: int
    rows: int
    failed: int
    dropped: int
    disagreeing_rows: int
    mean_latency_ms: float
    max_latency_ms: float
    def __init__(self, batches: _Optional[int] = ..., rows: _Optional[int] = ..., failed: _Optional[int] = ..., dropped: _Optional[int] = ..., disagreeing_rows: _Optional[int] = ..., mean_latency_ms: _Optional[float] = ..., max_latency_ms: _Optional[float] = ...) -> None: ...

class UpdateDeploymentRequest(_message.Message):
    __slots__ = ("workspace_id", "name", "steps", "batching", "reason")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    workspace_id: int
    name: str
    steps: _containers.RepeatedCompositeFieldContainer[StepSpec]
    batching: Batching
    reason: str
    def __init__(self, workspace_id: _Optional[int] = ..., name: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[StepSpec, _Mapping]]] = ..., batching: _Optional[_Union[Batching, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class SetTrafficSplitRequest(_message.Message):
    __slots__ = ("workspace_id", "name", "canary_steps", "canary_percent", "reason")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CANARY_STEPS_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    workspace_id: int
    name: str
    canary_steps: _containers.RepeatedCompositeFieldContainer[StepSpec]
    canary_percent: int
    reason: str
    def __init__(self, workspace_id: _Optional[int] = ..., name: _Optional[str] = ..., canary_steps: _Optional[_Iterable[_Union[StepSpec, _Mapping]]] = ..., canary_percent: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SetShadowRequest(_message.Message):
    __slots__ = ("workspace_id", "name", "shadow_steps", "reason")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHADOW_STEPS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    workspace_id: int
    name: str
    shadow_steps: _containers.RepeatedCompositeFieldContainer[StepSpec]
    reason: str
    def __init__(self, workspace_id: _Optional[int] = ..., name: _Optional[str] = ..., shadow_steps: _Optional[_Iterable[_Union[StepSpec, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class DeploymentRevision(_message.Message):
    __slots__ = ("revision", "status", "status_reason", "actor", "reason", "steps", "canary_steps", "canary_percent", "shadow_steps", "create_time")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CANARY_STEPS_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_STEPS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    revision: int
    status: RevisionStatus
    status_reason: str
    actor: str
    reason: str
    steps: _containers.RepeatedCompositeFieldContainer[DeploymentStep]
    canary_steps: _containers.RepeatedCompositeFieldContainer[DeploymentStep]
    canary_percent: int
    shadow_steps: _containers.RepeatedCompositeFieldContainer[DeploymentStep]
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, revision: _Optional[int] = ..., status: _Optional[_Union[RevisionStatus, str]] = ..., status_reason: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[DeploymentStep, _Mapping]]] = ..., canary_steps: _Optional[_Iterable[_Union[DeploymentStep, _Mapping]]] = ..., canary_percent: _Optional[int] = ..., shadow_steps: _Optional[_Iterable[_Union[DeploymentStep, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListDeploymentRevisionsRequest(_message.Message):
    __slots__ = ("workspace_id", "name", "page_size", "page_token")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workspace_id: int
    name: str
    page_size: int
    page_token: str
    def __init__(self, workspace_id: _Optional[int] = ..., name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeploymentRevisionsResponse(_message.Message):
    __slots__ = ("revisions", "next_page_token")
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    revisions: _containers.RepeatedCompositeFieldContainer[DeploymentRevision]
    next_page_token: str
    def __init__(self, revisions: _Optional[_Iterable[_Union[DeploymentRevision, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchDeploymentRequest(_message.Message):
    __slots__ = ("name", "workspace_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    workspace_id: int
    def __init__(self, name: _Optional[str] = ..., workspace_id: _Optional[int] = ...) -> None: ...

class UndeployRequest(_message.Message):
    __slots__ = ("name", "workspace_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    workspace_id: int
    def __init__(self, name: _Optional[str] = ..., workspace_id: _Optional[int] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("name", "workspace_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    workspace_id: int
    def __init__(self, name: _Optional[str] = ..., workspace_id: _Optional[int] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ("workspace_id", "page_size", "page_token")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workspace_id: int
    page_size: int
    page_token: str
    def __init__(self, workspace_id: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments", "next_page_token")
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    next_page_token: str
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
