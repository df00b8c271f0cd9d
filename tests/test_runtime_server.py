"""The generic Flight runtime server: in-process `RuntimeServer`s for the protocol, and real
`python -m flightline.runtimes.server` processes for the process contract and large streams."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from support import runtime_models

from flightline.runtimes import load_runtime
from flightline.runtimes.base import ModelSpec
from flightline.runtimes.host import Host
from flightline.runtimes.rules import as_tensor, from_tensor
from flightline.runtimes.server import EXIT_WITH_STDIN, LOAD_ERROR, READY, RuntimeServer, remote_error_message

FEATURES = runtime_models.FEATURES


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return runtime_models.mlp(tmp_path_factory.mktemp("server") / "mlp.onnx")


@pytest.fixture(scope="module")
def server(mlp_path: Path) -> Iterator[RuntimeServer]:
    with RuntimeServer(Host(load_runtime("onnx", ModelSpec(mlp_path, "onnx")))) as running:
        yield running


@pytest.fixture
def client(server: RuntimeServer) -> Iterator[flight.FlightClient]:
    with flight.connect(server.location) as connected:
        yield connected


def _features(rows: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, FEATURES)).astype(np.float32)


def _request(features: np.ndarray) -> pa.RecordBatch:
    return pa.record_batch([from_tensor(features)], names=["tensor"])


def _expected(mlp_path: Path, features: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(mlp_path), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None, {"tensor": features})[0]
    return result


def exchange(client: flight.FlightClient, batches: list[pa.RecordBatch], *path: str) -> list[pa.RecordBatch]:
    """Sends each batch on one stream and reads its result before sending the next."""
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_path(*path))
    results = []
    with writer:
        writer.begin(batches[0].schema)
        for batch in batches:
            writer.write_batch(batch)
            results.append(reader.read_chunk().data)
        writer.done_writing()
    return results


def test_envelope_numbers_equal_onnxruntime(client: flight.FlightClient, mlp_path: Path) -> None:
    features = _features(64)
    [result] = exchange(client, [_request(features)])
    assert result.schema.names == ["time", "in.tensor", "out.dense_1", "check_failures"]
    np.testing.assert_array_equal(as_tensor(result.column("in.tensor")), features)
    np.testing.assert_array_equal(as_tensor(result.column("out.dense_1")), _expected(mlp_path, features))
    assert result.column("check_failures").to_pylist() == [0] * 64


def test_one_result_per_batch_on_a_long_lived_stream(client: flight.FlightClient) -> None:
    batches = [_request(_features(rows, seed=rows)) for rows in (1, 7, 1, 300)]
    results = exchange(client, batches, "outputs")
    assert [r.num_rows for r in results] == [1, 7, 1, 300]
    assert all(r.schema.names == ["out.dense_1"] for r in results)


def test_schemas_per_mode(client: flight.FlightClient, server: RuntimeServer) -> None:
    request = _request(_features(2))
    for path in ((), ("outputs",), ("raw",)):
        descriptor = flight.FlightDescriptor.for_path(*path)
        info = client.get_flight_info(descriptor)
        [result] = exchange(client, [request], *path)
        assert info.schema == result.schema
        assert client.get_schema(descriptor).schema == result.schema
        assert info.endpoints == []  # nothing is served by do_get: do_exchange on this descriptor, here
    assert client.get_schema(flight.FlightDescriptor.for_path("raw")).schema.names == ["dense_1"]


def test_actions(client: flight.FlightClient) -> None:
    assert [r.body.to_pybytes() for r in client.do_action("healthcheck")] == [b"ok"]
    inputs, outputs = (pa.ipc.read_schema(r.body) for r in client.do_action("schemas"))
    assert inputs == pa.schema([("tensor", pa.list_(pa.float32(), FEATURES))])
    assert outputs.names == ["dense_1"]
    assert {a.type for a in client.list_actions()} == {"healthcheck", "schemas"}
    with pytest.raises(pa.ArrowNotImplementedError, match="unknown action 'reboot'"):  # UNIMPLEMENTED
        list(client.do_action("reboot"))


BAD_BATCHES = {
    "ragged": (
        pa.record_batch([pa.array([[0.5] * FEATURES, [0.5] * 3], pa.list_(pa.float32()))], names=["tensor"]),
        "column 'tensor' is ragged: row 1 has 3 values, expected 29",
    ),
    "wrong dtype": (
        pa.record_batch([from_tensor(np.zeros((1, FEATURES)))], names=["tensor"]),
        "column 'tensor' has type fixed_size_list<item: double>[29], expected "
        "fixed_size_list<item: float>[29]",
    ),
    "wrong column name": (
        pa.record_batch([from_tensor(np.zeros((1, FEATURES), np.float32))], names=["x"]),
        "column 'tensor' is missing; the model expects columns ['tensor']",
    ),
    "mixed dtypes": (
        pa.record_batch([pa.array([["0.5", "a"]])], names=["tensor"]),
        "column 'tensor' has type list<item: string>, expected fixed_size_list<item: float>[29]",
    ),
    "null": (
        pa.record_batch([pa.array([[0.5] * FEATURES, None], pa.list_(pa.float32()))], names=["tensor"]),
        "column 'tensor' has a null at row 1; tensors cannot hold nulls",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_bad_batch_fails_its_stream_only(client: flight.FlightClient, case: str) -> None:
    bad, message = BAD_BATCHES[case]
    good = _request(_features(1))
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_path())
    with writer:  # a long-lived stream, open while another one fails
        writer.begin(good.schema)
        writer.write_batch(good)
        reader.read_chunk()

        with pytest.raises(pa.ArrowInvalid) as failure:  # INVALID_ARGUMENT
            exchange(client, [bad])
        assert remote_error_message(failure.value) == message

        writer.write_batch(good)
        assert reader.read_chunk().data.num_rows == 1
        writer.done_writing()
    assert exchange(client, [good])[0].num_rows == 1


def test_unknown_mode(client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowInvalid, match="unknown response mode 'json'"):
        exchange(client, [_request(_features(1))], "json")


def test_python_step_with_open_schema(tmp_path: Path) -> None:
    script = tmp_path / "step.py"
    script.write_text(
        textwrap.dedent("""
        import pandas as pd
        def wallaroo_json(data: pd.DataFrame):
            if len(data) > 2:
                return [{"output": 1.0}]
            return pd.DataFrame({"output": [len(x) for x in data["v"]]})
    """)
    )
    host = Host(load_runtime("python", ModelSpec(script, "python")))
    with RuntimeServer(host) as running, flight.connect(running.location) as client:
        one = pa.record_batch([pa.array([[1.0, 2.0]])], names=["v"])
        two = pa.record_batch([pa.array([[1.0, 2.0], [3.0, 4.0]])], names=["v"])
        results = exchange(client, [one, two], "outputs")
        assert [r.column("out.output").to_pylist() for r in results] == [[2], [2, 2]]
        with pytest.raises(flight.FlightInternalError) as failure:
            exchange(client, [pa.record_batch([pa.array([[1.0]] * 3)], names=["v"])])
        assert remote_error_message(failure.value) == (
            "model returned 1 rows for 3 input rows; a model must return exactly one output row per input row"
        )


@contextmanager
def runtime_process(
    runtime: str, spec_dir: Path, *args: str, stdin: int | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real runtime server process; yields it and the first line it printed."""
    command = [
        sys.executable,
        "-m",
        "flightline.runtimes.server",
        "--runtime",
        runtime,
        "--spec",
        str(spec_dir),
        *args,
    ]
    process = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield process, process.stdout.readline().strip()
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=30)


def _ready_location(line: str) -> str:
    marker, location = line.split(" ", 1)
    assert marker == READY, line
    return location


def test_process_streams_a_million_rows(tmp_path: Path, mlp_path: Path) -> None:
    ModelSpec(mlp_path, "onnx").save(tmp_path / "spec")
    features = _features(1_000_000)
    batches = [_request(features[i : i + 125_000]) for i in range(0, len(features), 125_000)]  # ~14.5 MB each
    with runtime_process("onnx", tmp_path / "spec") as (process, line):
        with flight.connect(_ready_location(line)) as client:
            results = exchange(client, batches)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert sum(r.num_rows for r in results) == 1_000_000
    inputs = np.concatenate([as_tensor(r.column("in.tensor")) for r in results])
    outputs = np.concatenate([as_tensor(r.column("out.dense_1")) for r in results])
    np.testing.assert_array_equal(inputs, features)
    np.testing.assert_array_equal(outputs, _expected(mlp_path, features))


def test_process_load_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00garbage")
    ModelSpec(corrupt, "onnx").save(tmp_path / "spec")
    with runtime_process("onnx", tmp_path / "spec") as (process, line):
        assert process.wait(timeout=30) == 3
    assert line.startswith(f"{LOAD_ERROR} corrupt.onnx is not a valid ONNX model")
    with runtime_process("pytorch", tmp_path / "spec") as (process, line):
        assert process.wait(timeout=30) == 3
    assert line.startswith(f"{LOAD_ERROR} unknown runtime 'pytorch'")


def test_process_stdout_carries_only_the_protocol_line(tmp_path: Path) -> None:
    script = tmp_path / "noisy.py"
    script.write_text("print('loading...')\ndef wallaroo_json(data):\n    print(data)\n    return data\n")
    ModelSpec(script, "python").save(tmp_path / "spec")
    with runtime_process("python", tmp_path / "spec") as (process, line):
        with flight.connect(_ready_location(line)) as client:
            [result] = exchange(client, [pa.record_batch([pa.array([1, 2])], names=["n"])], "raw")
        assert result.column("n").to_pylist() == [1, 2]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert process.stdout is not None
        assert process.stdout.read() == ""


def test_process_stops_on_sigterm_despite_open_streams(tmp_path: Path, mlp_path: Path) -> None:
    ModelSpec(mlp_path, "onnx").save(tmp_path / "spec")
    with runtime_process("onnx", tmp_path / "spec", "--shutdown-grace", "0.5") as (process, line):
        client = flight.connect(_ready_location(line))
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_path())
        request = _request(_features(1))
        writer.begin(request.schema)
        writer.write_batch(request)
        reader.read_chunk()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        with pytest.raises(flight.FlightUnavailableError):
            writer.write_batch(request)
            reader.read_chunk()
        client.close()


def test_process_exits_when_its_stdin_pipe_closes(tmp_path: Path, mlp_path: Path) -> None:
    ModelSpec(mlp_path, "onnx").save(tmp_path / "spec")
    with runtime_process("onnx", tmp_path / "spec", EXIT_WITH_STDIN, stdin=subprocess.PIPE) as (
        process,
        line,
    ):
        location = _ready_location(line)
        with flight.connect(location) as client:
            assert [r.body.to_pybytes() for r in client.do_action("healthcheck")] == [b"ok"]
        assert process.stdin is not None
        process.stdin.close()  # what a parent's death does to the pipe
        assert process.wait(timeout=10) == 0


def test_process_without_the_flag_ignores_end_of_stdin(tmp_path: Path, mlp_path: Path) -> None:
    ModelSpec(mlp_path, "onnx").save(tmp_path / "spec")
    # /dev/null is at its end at once; without the flag, that must not stop the server.
    with runtime_process("onnx", tmp_path / "spec", stdin=subprocess.DEVNULL) as (process, line):
        with flight.connect(_ready_location(line)) as client:
            for _ in range(3):
                assert [r.body.to_pybytes() for r in client.do_action("healthcheck")] == [b"ok"]
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
