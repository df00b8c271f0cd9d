import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Registry(_message.Message):
    __slots__ = ("id", "name", "url", "has_token", "create_time", "update_time", "workspace_ids")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    HAS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_IDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    url: str
    has_token: bool
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    workspace_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., url: _Optional[str] = ..., has_token: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., workspace_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class CreateRegistryRequest(_message.Message):
    __slots__ = ("workspace_id", "name", "url", "token")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    workspace_id: int
    name: str
    url: str
    token: str
    def __init__(self, workspace_id: _Optional[int] = ..., name: _Optional[str] = ..., url: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class AttachRegistryRequest(_message.Message):
    __slots__ = ("registry_id", "workspace_id")
    REGISTRY_ID_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    registry_id: str
    workspace_id: int
    def __init__(self, registry_id: _Optional[str] = ..., workspace_id: _Optional[int] = ...) -> None: ...

class DetachRegistryRequest(_message.Message):
    __slots__ = ("registry_id", "workspace_id")
    REGISTRY_ID_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    registry_id: str
    workspace_id: int
    def __init__(self, registry_id: _Optional[str] = ..., workspace_id: _Optional[int] = ...) -> None: ...

class RegistryWorkspace(_message.Message):
    __slots__ = ("registry_id", "workspace_id")
    REGISTRY_ID_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    registry_id: str
    workspace_id: int
    def __init__(self, registry_id: _Optional[str] = ..., workspace_id: _Optional[int] = ...) -> None: ...

class GetRegistryRequest(_message.Message):
    __slots__ = ("registry_id",)
    REGISTRY_ID_FIELD_NUMBER: _ClassVar[int]
    registry_id: str
    def __init__(self, registry_id: _Optional[str] = ...) -> None: ...

class ListRegistriesRequest(_message.Message):
    __slots__ = ("workspace_id", "page_size", "page_token")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workspace_id: int
    page_size: int
    page_token: str
    def __init__(self, workspace_id: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRegistriesResponse(_message.Message):
    __slots__ = ("registries", "next_page_token")
    REGISTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    registries: _containers.RepeatedCompositeFieldContainer[Registry]
    next_page_token: str
    def __init__(self, registries: _Optional[_Iterable[_Union[Registry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RegisteredModel(_message.Message):
    __slots__ = ("name", "user_id", "description", "create_time", "update_time", "latest_versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    user_id: str
    description: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    latest_versions: _containers.RepeatedCompositeFieldContainer[RegisteredModelVersion]
    def __init__(self, name: _Optional[str] = ..., user_id: _Optional[str] = ..., description: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latest_versions: _Optional[_Iterable[_Union[RegisteredModelVersion, _Mapping]]] = ...) -> None: ...

class RegisteredModelVersion(_message.Message):
    __slots__ = ("name", "description", "version", "status", "run_id", "run_link", "source", "current_stage", "create_time", "update_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_LINK_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STAGE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    version: str
    status: str
    run_id: str
    run_link: str
    source: str
    current_stage: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., version: _Optional[str] = ..., status: _Optional[str] = ..., run_id: _Optional[str] = ..., run_link: _Optional[str] = ..., source: _Optional[str] = ..., current_stage: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListRegistryModelsRequest(_message.Message):
    __slots__ = ("registry_id", "page_size", "page_token")
    REGISTRY_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    registry_id: str
    page_size: int
    page_token: str
    def __init__(self, registry_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRegistryModelsResponse(_message.Message):
    __slots__ = ("registered_models", "next_page_token")
    REGISTERED_MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    registered_models: _containers.RepeatedCompositeFieldContainer[RegisteredModel]
    next_page_token: str
    def __init__(self, registered_models: _Optional[_Iterable[_Union[RegisteredModel, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListRegistryModelVersionsRequest(_message.Message):
    __slots__ = ("registry_id", "name", "page_size", "page_token")
    REGISTRY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    registry_id: str
    name: str
    page_size: int
    page_token: str
    def __init__(self, registry_id: _Optional[str] = ..., name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRegistryModelVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[RegisteredModelVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[RegisteredModelVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListModelVersionArtifactsRequest(_message.Message):
    __slots__ = ("registry_id", "name", "version", "page_size", "page_token")
    REGISTRY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    registry_id: str
    name: str
    version: str
    page_size: int
    page_token: str
    def __init__(self, registry_id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class RegistryArtifact(_message.Message):
    __slots__ = ("file_size", "full_path", "is_dir", "update_time", "path")
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    FULL_PATH_FIELD_NUMBER: _ClassVar[int]
    IS_DIR_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    file_size: int
    full_path: str
    is_dir: bool
    update_time: _timestamp_pb2.Timestamp
    path: str
    def __init__(self, file_size: _Optional[int] = ..., full_path: _Optional[str] = ..., is_dir: _Optional[bool] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., path: _Optional[str] = ...) -> None: ...

class ListModelVersionArtifactsResponse(_message.Message):
    __slots__ = ("artifacts", "next_page_token")
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[RegistryArtifact]
    next_page_token: str
    def __init__(self, artifacts: _Optional[_Iterable[_Union[RegistryArtifact, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
