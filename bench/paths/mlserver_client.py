"""Times MLServer's gRPC V2 `ModelInfer` on one channel. Runs INSIDE MLServer's virtual environment
(its own generated stubs), so it needs only numpy, grpc and mlserver; prints one JSON Cell per line.

Tensors go as `raw_input_contents` (little-endian bytes), MLServer's fastest request encoding; each
request message is built once per batch size, outside the timing."""

from __future__ import annotations

import argparse
import json

import grpc
import numpy as np
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

from bench.measure import Budget, Call, Check, SkipCell, measure_sizes

# MLServer's default grpc.max_receive_message_length; larger requests are refused with default settings.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
RAW_DTYPES = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "FP64": np.float64}


def output_values(response: pb.ModelInferResponse) -> np.ndarray:
    output = response.outputs[0]
    if response.raw_output_contents:
        return np.frombuffer(response.raw_output_contents[0], dtype=RAW_DTYPES[output.datatype])
    contents = output.contents
    for field in ("int64_contents", "int_contents", "fp32_contents", "fp64_contents", "bool_contents"):
        values = getattr(contents, field)
        if len(values):
            return np.asarray(values)
    raise ValueError(f"empty output {output.name!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--inputs", required=True, help=".npy file of float32 rows")
    parser.add_argument("--labels", required=True, help=".npy file of the expected labels")
    parser.add_argument("--sizes", required=True)
    parser.add_argument("--budget", required=True, help="JSON of bench.measure.Budget")
    args = parser.parse_args()
    inputs = np.load(args.inputs)
    labels = np.load(args.labels)
    budget = Budget(**json.loads(args.budget))
    channel = grpc.insecure_channel(
        f"127.0.0.1:{args.port}",
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    def prepare(rows: int) -> tuple[Call, Check]:
        matrix = np.ascontiguousarray(inputs[:rows])
        request = pb.ModelInferRequest(
            model_name=args.model,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="input-0", datatype="FP32", shape=list(matrix.shape)
                )
            ],
            raw_input_contents=[matrix.tobytes()],
        )
        if request.ByteSize() > DEFAULT_MAX_MESSAGE_BYTES:
            raise SkipCell(
                f"{request.ByteSize() / 2**20:.1f} MiB request > MLServer's default 4 MiB gRPC limit"
            )

        def check(result: object) -> None:
            assert isinstance(result, pb.ModelInferResponse)
            agreement = float(np.mean(output_values(result).reshape(-1) == labels[:rows]))
            if agreement < 0.99:
                raise AssertionError(f"only {agreement:.1%} of MLServer's labels agree with the ONNX model's")

        return lambda: stub.ModelInfer(request), check

    for cell in measure_sizes(args.key, "mlserver-grpc", json.loads(args.sizes), budget, prepare):
        print("CELL " + json.dumps(cell.to_dict()), flush=True)
    channel.close()


if __name__ == "__main__":
    main()
