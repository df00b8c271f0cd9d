"""gRPC server reflection as both grpc.reflection.v1 (what current grpcurl, Postman and grpc-js ask for
first) and grpc.reflection.v1alpha (older clients).

grpcio-reflection ships only v1alpha. The v1 service is the same protocol: identical messages and field
numbers under another package. So one servicer answers both, and a v1 copy of the reflection .proto is
added to the descriptor pool so reflection clients can describe the v1 service itself too.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_SERVICE = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def enable(service_names: Iterable[str], server: grpc.Server) -> None:
    """Serves reflection v1 and v1alpha for `service_names` (the reflection services are added)."""
    _add_v1_descriptor()
    names = [*service_names, V1_SERVICE, V1ALPHA_SERVICE]
    reflection.enable_server_reflection(names, server)  # v1alpha
    servicer = reflection.ReflectionServicer(names)
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))


def _add_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
        return  # another App in this process added it
    except KeyError:
        pass
    source = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(source)
    alpha = f".{source.package}."
    source.name = V1_FILE
    source.package = V1_PACKAGE
    source.options.Clear()
    for message in source.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(alpha, f".{V1_PACKAGE}.")
    for service in source.service:
        for method in service.method:
            method.input_type = method.input_type.replace(alpha, f".{V1_PACKAGE}.")
            method.output_type = method.output_type.replace(alpha, f".{V1_PACKAGE}.")
    pool.Add(source)
