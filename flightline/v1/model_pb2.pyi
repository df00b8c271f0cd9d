import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Visibility(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VISIBILITY_UNSPECIFIED: _ClassVar[Visibility]
    VISIBILITY_PRIVATE: _ClassVar[Visibility]
    VISIBILITY_PUBLIC: _ClassVar[Visibility]

class ModelStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATUS_UNSPECIFIED: _ClassVar[ModelStatus]
    MODEL_STATUS_PENDING_CONVERSION: _ClassVar[ModelStatus]
    MODEL_STATUS_CONVERTING: _ClassVar[ModelStatus]
    MODEL_STATUS_READY: _ClassVar[ModelStatus]
    MODEL_STATUS_ERROR: _ClassVar[ModelStatus]

class RuntimeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUNTIME_KIND_UNSPECIFIED: _ClassVar[RuntimeKind]
    RUNTIME_KIND_NATIVE: _ClassVar[RuntimeKind]
    RUNTIME_KIND_CONTAINERIZED: _ClassVar[RuntimeKind]
VISIBILITY_UNSPECIFIED: Visibility
VISIBILITY_PRIVATE: Visibility
VISIBILITY_PUBLIC: Visibility
MODEL_STATUS_UNSPECIFIED: ModelStatus
MODEL_STATUS_PENDING_CONVERSION: ModelStatus
MODEL_STATUS_CONVERTING: ModelStatus
MODEL_STATUS_READY: ModelStatus
MODEL_STATUS_ERROR: ModelStatus
RUNTIME_KIND_UNSPECIFIED: RuntimeKind
RUNTIME_KIND_NATIVE: RuntimeKind
RUNTIME_KIND_CONTAINERIZED: RuntimeKind

class Conversion(_message.Message):
    __slots__ = ("framework", "python_version", "requirements", "input_schema", "output_schema", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    framework: str
    python_version: str
    requirements: _containers.RepeatedScalarFieldContainer[str]
    input_schema: bytes
    output_schema: bytes
    options: _containers.ScalarMap[str, str]
    def __init__(self, framework: _Optional[str] = ..., python_version: _Optional[str] = ..., requirements: _Optional[_Iterable[str]] = ..., input_schema: _Optional[bytes] = ..., output_schema: _Optional[bytes] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UploadFromRegistryRequest(_message.Message):
    __slots__ = ("registry_id", "name", "path", "visibility", "workspace_id", "conversion")
    REGISTRY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_FIELD_NUMBER: _ClassVar[int]
    registry_id: str
    name: str
    path: str
    visibility: Visibility
    workspace_id: int
    conversion: Conversion
    def __init__(self, registry_id: _Optional[str] = ..., name: _Optional[str] = ..., path: _Optional[str] = ..., visibility: _Optional[_Union[Visibility, str]] = ..., workspace_id: _Optional[int] = ..., conversion: _Optional[_Union[Conversion, _Mapping]] = ...) -> None: ...

class UploadMetadata(_message.Message):
    __slots__ = ("name", "workspace_id", "visibility", "conversion", "filename", "size_bytes", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    workspace_id: int
    visibility: Visibility
    conversion: Conversion
    filename: str
    size_bytes: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., workspace_id: _Optional[int] = ..., visibility: _Optional[_Union[Visibility, str]] = ..., conversion: _Optional[_Union[Conversion, _Mapping]] = ..., filename: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadModelRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: UploadMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[UploadMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadModelResponse(_message.Message):
    __slots__ = ("model_id", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: int
    version: ModelVersion
    def __init__(self, model_id: _Optional[int] = ..., version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("id", "name", "workspace_id", "visibility", "create_time", "update_time", "latest_version")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    workspace_id: int
    visibility: Visibility
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    latest_version: ModelVersion
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., workspace_id: _Optional[int] = ..., visibility: _Optional[_Union[Visibility, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latest_version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("model_id", "model_name", "version", "framework", "runtime", "runtime_kind", "status", "status_reason", "conversion_note", "input_schema", "output_schema", "sha256", "size_bytes", "original_sha256", "source", "conversion", "create_time", "update_time", "mlflow", "converter")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_NOTE_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_SHA256_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_FIELD_NUMBER: _ClassVar[int]
    CONVERTER_FIELD_NUMBER: _ClassVar[int]
    model_id: int
    model_name: str
    version: int
    framework: str
    runtime: str
    runtime_kind: RuntimeKind
    status: ModelStatus
    status_reason: str
    conversion_note: str
    input_schema: bytes
    output_schema: bytes
    sha256: str
    size_bytes: int
    original_sha256: str
    source: str
    conversion: Conversion
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    mlflow: MlflowOrigin
    converter: str
    def __init__(self, model_id: _Optional[int] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., framework: _Optional[str] = ..., runtime: _Optional[str] = ..., runtime_kind: _Optional[_Union[RuntimeKind, str]] = ..., status: _Optional[_Union[ModelStatus, str]] = ..., status_reason: _Optional[str] = ..., conversion_note: _Optional[str] = ..., input_schema: _Optional[bytes] = ..., output_schema: _Optional[bytes] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., original_sha256: _Optional[str] = ..., source: _Optional[str] = ..., conversion: _Optional[_Union[Conversion, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., mlflow: _Optional[_Union[MlflowOrigin, _Mapping]] = ..., converter: _Optional[str] = ...) -> None: ...

class MlflowOrigin(_message.Message):
    __slots__ = ("uri", "name", "version", "alias", "model_id", "run_id", "mlflow_version", "flavors", "flavor", "serialization", "signature", "route")
    URI_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    FLAVORS_FIELD_NUMBER: _ClassVar[int]
    FLAVOR_FIELD_NUMBER: _ClassVar[int]
    SERIALIZATION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    uri: str
    name: str
    version: str
    alias: str
    model_id: str
    run_id: str
    mlflow_version: str
    flavors: _containers.RepeatedScalarFieldContainer[str]
    flavor: str
    serialization: str
    signature: str
    route: str
    def __init__(self, uri: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., alias: _Optional[str] = ..., model_id: _Optional[str] = ..., run_id: _Optional[str] = ..., mlflow_version: _Optional[str] = ..., flavors: _Optional[_Iterable[str]] = ..., flavor: _Optional[str] = ..., serialization: _Optional[str] = ..., signature: _Optional[str] = ..., route: _Optional[str] = ...) -> None: ...

class WatchModelVersionRequest(_message.Message):
    __slots__ = ("model_id", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: int
    version: int
    def __init__(self, model_id: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: int
    def __init__(self, model_id: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("workspace_id", "page_size", "page_token")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workspace_id: int
    page_size: int
    page_token: str
    def __init__(self, workspace_id: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetModelVersionRequest(_message.Message):
    __slots__ = ("model_id", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: int
    version: int
    def __init__(self, model_id: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class ListModelVersionsRequest(_message.Message):
    __slots__ = ("model_id", "page_size", "page_token")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_id: int
    page_size: int
    page_token: str
    def __init__(self, model_id: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListFrameworksRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Framework(_message.Message):
    __slots__ = ("name", "runtime_kind", "runtime", "converts_to_onnx", "file_types", "default_input_schema", "default_output_schema", "available", "install_hint")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_KIND_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    CONVERTS_TO_ONNX_FIELD_NUMBER: _ClassVar[int]
    FILE_TYPES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    INSTALL_HINT_FIELD_NUMBER: _ClassVar[int]
    name: str
    runtime_kind: RuntimeKind
    runtime: str
    converts_to_onnx: bool
    file_types: str
    default_input_schema: bytes
    default_output_schema: bytes
    available: bool
    install_hint: str
    def __init__(self, name: _Optional[str] = ..., runtime_kind: _Optional[_Union[RuntimeKind, str]] = ..., runtime: _Optional[str] = ..., converts_to_onnx: _Optional[bool] = ..., file_types: _Optional[str] = ..., default_input_schema: _Optional[bytes] = ..., default_output_schema: _Optional[bytes] = ..., available: _Optional[bool] = ..., install_hint: _Optional[str] = ...) -> None: ...

class ListFrameworksResponse(_message.Message):
    __slots__ = ("frameworks", "next_page_token")
    FRAMEWORKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    frameworks: _containers.RepeatedCompositeFieldContainer[Framework]
    next_page_token: str
    def __init__(self, frameworks: _Optional[_Iterable[_Union[Framework, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
