"""The generic Flight runtime server: in-process `RuntimeServer`s for the protocol (many models, loaded
and unloaded by actions), and real `python -m flightline.runtimes.server` processes for the process
contract and large streams."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from support import runtime_models

from flightline.runtimes.rules import as_tensor, from_tensor
from flightline.runtimes.server import (
    EXIT_WITH_STDIN,
    FRONT_DOOR_HINT,
    READY,
    LoadSpec,
    RuntimeServer,
    remote_error_message,
)

FEATURES = runtime_models.FEATURES
KEY = "mlp.0"


def put(artifacts: Path, source: Path) -> str:
    """Places `source` in an artifacts folder under its sha256, as a backend does; returns the digest."""
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, artifacts / sha256)
    return sha256


def load(client: flight.FlightClient, key: str, runtime: str, sha256: str, framework: str = "") -> None:
    spec = LoadSpec(key=key, runtime=runtime, artifact=sha256, framework=framework or runtime)
    assert [r.body.to_pybytes() for r in client.do_action(flight.Action("load", spec.to_json()))] == [b"ok"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return runtime_models.mlp(tmp_path_factory.mktemp("server") / "mlp.onnx")


@pytest.fixture(scope="module")
def mlp_sha(artifacts: Path, mlp_path: Path) -> str:
    return put(artifacts, mlp_path)


@pytest.fixture(scope="module")
def server(artifacts: Path, mlp_sha: str) -> Iterator[RuntimeServer]:
    with RuntimeServer(artifacts) as running:
        with flight.connect(running.location) as client:
            load(client, KEY, "onnx", mlp_sha)
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
    [result] = exchange(client, [_request(features)], KEY)
    assert result.schema.names == ["time", "in.tensor", "out.dense_1", "check_failures"]
    np.testing.assert_array_equal(as_tensor(result.column("in.tensor")), features)
    np.testing.assert_array_equal(as_tensor(result.column("out.dense_1")), _expected(mlp_path, features))
    assert result.column("check_failures").to_pylist() == [0] * 64


def test_one_result_per_batch_on_a_long_lived_stream(client: flight.FlightClient) -> None:
    batches = [_request(_features(rows, seed=rows)) for rows in (1, 7, 1, 300)]
    results = exchange(client, batches, KEY, "outputs")
    assert [r.num_rows for r in results] == [1, 7, 1, 300]
    assert all(r.schema.names == ["out.dense_1"] for r in results)


def test_schemas_per_mode(client: flight.FlightClient) -> None:
    request = _request(_features(2))
    for mode in ((), ("outputs",), ("raw",)):
        descriptor = flight.FlightDescriptor.for_path(KEY, *mode)
        info = client.get_flight_info(descriptor)
        [result] = exchange(client, [request], KEY, *mode)
        assert info.schema == result.schema
        assert client.get_schema(descriptor).schema == result.schema
        assert info.endpoints == []  # runtime servers are not advertised
    assert client.get_schema(flight.FlightDescriptor.for_path(KEY, "raw")).schema.names == ["dense_1"]


def test_actions(client: flight.FlightClient) -> None:
    assert [r.body.to_pybytes() for r in client.do_action("healthcheck")] == [b"ok"]
    inputs, outputs = (
        pa.ipc.read_schema(r.body) for r in client.do_action(flight.Action("schemas", KEY.encode()))
    )
    assert inputs == pa.schema([("tensor", pa.list_(pa.float32(), FEATURES))])
    assert outputs.names == ["dense_1"]
    assert {a.type for a in client.list_actions()} == {"load", "unload", "models", "healthcheck", "schemas"}
    [listed] = client.do_action("models")
    assert [m["key"] for m in json.loads(listed.body.to_pybytes())] == [KEY]
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
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_path(KEY))
    with writer:  # a long-lived stream, open while another one fails
        writer.begin(good.schema)
        writer.write_batch(good)
        reader.read_chunk()

        with pytest.raises(pa.ArrowInvalid) as failure:  # INVALID_ARGUMENT
            exchange(client, [bad], KEY)
        assert remote_error_message(failure.value) == message

        writer.write_batch(good)
        assert reader.read_chunk().data.num_rows == 1
        writer.done_writing()
    assert exchange(client, [good], KEY)[0].num_rows == 1


def test_unknown_mode(client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowInvalid, match="unknown response mode 'json'"):
        exchange(client, [_request(_features(1))], KEY, "json")


def test_unknown_key_and_bad_load_requests(client: flight.FlightClient) -> None:
    request = _request(_features(1))
    with pytest.raises(pa.ArrowKeyError) as unknown:  # NOT_FOUND
        exchange(client, [request], "ghost.0")
    # A deployment's name is an unknown key here too: the message points at the front door.
    expected = f"no model 'ghost.0' on this runtime server; {FRONT_DOOR_HINT}"
    assert remote_error_message(unknown.value) == expected
    with pytest.raises(pa.ArrowKeyError, match=r"no model 'ghost\.0'"):
        list(client.do_action(flight.Action("schemas", b"ghost.0")))
    with pytest.raises(pa.ArrowKeyError, match=r"no model 'ghost\.0'"):
        list(client.do_action(flight.Action("unload", b"ghost.0")))
    with pytest.raises(pa.ArrowInvalid, match="'artifact' must be a sha256"):  # never a host path
        list(
            client.do_action(
                flight.Action(
                    "load",
                    json.dumps(
                        {"key": "x", "runtime": "onnx", "framework": "onnx", "artifact": "../../etc/passwd"}
                    ).encode(),
                )
            )
        )
    with pytest.raises(pa.ArrowInvalid, match="field 'runtime' must be a non-empty string"):
        list(client.do_action(flight.Action("load", b'{"key": "x"}')))
    with pytest.raises(pa.ArrowInvalid, match="is not in the runtime server's artifacts folder"):
        load(client, "x", "onnx", "0" * 64)
    with pytest.raises(pa.ArrowInvalid, match=r"expected FlightDescriptor\.for_path"):
        exchange(client, [request])


def test_load_error_names_the_reason(
    server: RuntimeServer, client: flight.FlightClient, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00garbage")
    sha = put(server.artifacts, corrupt)
    with pytest.raises(pa.ArrowInvalid) as failure:  # INVALID_ARGUMENT
        load(client, "corrupt.0", "onnx", sha)
    assert "is not a valid ONNX model" in remote_error_message(failure.value)
    with pytest.raises(pa.ArrowInvalid, match="unknown runtime 'pytorch'"):
        load(client, "corrupt.0", "pytorch", sha)
    assert server.keys() == [KEY]


STEP = textwrap.dedent("""
    import pandas as pd
    def wallaroo_json(data: pd.DataFrame):
        if len(data) > 2:
            return [{"output": 1.0}]
        return pd.DataFrame({"output": [len(x) for x in data["v"]]})
""")


def test_two_models_one_unloaded_while_the_other_serves(tmp_path: Path, mlp_path: Path) -> None:
    script = tmp_path / "step.py"
    script.write_text(STEP)
    artifacts = tmp_path / "artifacts"
    mlp_sha, step_sha = put(artifacts, mlp_path), put(artifacts, script)
    with RuntimeServer(artifacts) as running, flight.connect(running.location) as client:
        load(client, "a.0", "onnx", mlp_sha)
        load(client, "b.0", "python", step_sha)
        assert running.keys() == ["a.0", "b.0"]
        request = _request(_features(3))
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_path("a.0", "outputs"))
        with writer:  # a stream on "a.0" open across the unload of "b.0"
            writer.begin(request.schema)
            writer.write_batch(request)
            first = reader.read_chunk().data
            one = pa.record_batch([pa.array([[1.0, 2.0]])], names=["v"])
            assert exchange(client, [one], "b.0", "outputs")[0].column("out.output").to_pylist() == [2]
            assert [r.body.to_pybytes() for r in client.do_action(flight.Action("unload", b"b.0"))] == [b"ok"]
            with pytest.raises(pa.ArrowKeyError, match=r"no model 'b\.0'"):
                exchange(client, [one], "b.0")
            writer.write_batch(request)
            assert reader.read_chunk().data.equals(first)
            writer.done_writing()
        assert exchange(client, [request], "a.0", "outputs")[0].equals(first)
        [listed] = client.do_action("models")
        assert json.loads(listed.body.to_pybytes()) == [
            {"key": "a.0", "runtime": "onnx", "framework": "onnx", "artifact": mlp_sha}
        ]


def test_python_step_with_open_schema(tmp_path: Path) -> None:
    script = tmp_path / "step.py"
    script.write_text(STEP)
    artifacts = tmp_path / "artifacts"
    sha = put(artifacts, script)
    with RuntimeServer(artifacts) as running, flight.connect(running.location) as client:
        load(client, "s.0", "python", sha)
        one = pa.record_batch([pa.array([[1.0, 2.0]])], names=["v"])
        two = pa.record_batch([pa.array([[1.0, 2.0], [3.0, 4.0]])], names=["v"])
        results = exchange(client, [one, two], "s.0", "outputs")
        assert [r.column("out.output").to_pylist() for r in results] == [[2], [2, 2]]
        with pytest.raises(flight.FlightInternalError) as failure:
            exchange(client, [pa.record_batch([pa.array([[1.0]] * 3)], names=["v"])], "s.0")
        assert remote_error_message(failure.value) == (
            "model returned 1 rows for 3 input rows; a model must return exactly one output row per input row"
        )


SLOW_STEP = textwrap.dedent("""
    import time
    import pandas as pd
    inside = 0
    most = 0
    def wallaroo_json(data: pd.DataFrame):
        global inside, most
        inside += 1
        most = max(most, inside)
        time.sleep(0.02)
        inside -= 1
        return pd.DataFrame({"most": [most] * len(data)})
""")


def test_python_steps_are_not_called_concurrently(tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text(SLOW_STEP)
    artifacts = tmp_path / "artifacts"
    sha = put(artifacts, script)
    with RuntimeServer(artifacts) as running:
        with flight.connect(running.location) as client:
            load(client, "slow.0", "python", sha)
        seen: list[int] = []

        def stream() -> None:
            with flight.connect(running.location) as own:
                batch = pa.record_batch([pa.array([1])], names=["n"])
                results = exchange(own, [batch] * 5, "slow.0", "raw")
                seen.extend(r.column("most")[0].as_py() for r in results)

        threads = [threading.Thread(target=stream) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert len(seen) == 20 and max(seen) == 1  # never two calls inside the step at once


@contextmanager
def runtime_process(
    artifacts: Path, *args: str, listen: str = "grpc+tcp://127.0.0.1:0", stdin: int | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real runtime server process; yields it and the first line it printed."""
    command = [
        sys.executable,
        "-m",
        "flightline.runtimes.server",
        "--listen",
        listen,
        "--artifacts",
        str(artifacts),
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
    sha = put(tmp_path / "artifacts", mlp_path)
    features = _features(1_000_000)
    batches = [_request(features[i : i + 125_000]) for i in range(0, len(features), 125_000)]  # ~14.5 MB each
    with runtime_process(tmp_path / "artifacts") as (process, line):
        with flight.connect(_ready_location(line)) as client:
            load(client, KEY, "onnx", sha)
            results = exchange(client, batches, KEY)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert sum(r.num_rows for r in results) == 1_000_000
    inputs = np.concatenate([as_tensor(r.column("in.tensor")) for r in results])
    outputs = np.concatenate([as_tensor(r.column("out.dense_1")) for r in results])
    np.testing.assert_array_equal(inputs, features)
    np.testing.assert_array_equal(outputs, _expected(mlp_path, features))


def test_process_on_a_unix_socket_starts_empty(tmp_path: Path, mlp_path: Path) -> None:
    sha = put(tmp_path / "artifacts", mlp_path)
    socket = tmp_path / "rt.sock"
    socket.write_text("left over by a killed predecessor")
    with runtime_process(tmp_path / "artifacts", listen=f"grpc+unix://{socket}") as (process, line):
        location = _ready_location(line)
        assert location == f"grpc+unix://{socket}"
        with flight.connect(location) as client:
            [listed] = client.do_action("models")
            assert json.loads(listed.body.to_pybytes()) == []
            load(client, KEY, "onnx", sha)
            features = _features(5)
            [result] = exchange(client, [_request(features)], KEY, "raw")
        np.testing.assert_array_equal(as_tensor(result.column("dense_1")), _expected(mlp_path, features))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_process_stdout_carries_only_the_protocol_line(tmp_path: Path) -> None:
    script = tmp_path / "noisy.py"
    script.write_text("print('loading...')\ndef wallaroo_json(data):\n    print(data)\n    return data\n")
    sha = put(tmp_path / "artifacts", script)
    with runtime_process(tmp_path / "artifacts") as (process, line):
        with flight.connect(_ready_location(line)) as client:
            load(client, "noisy.0", "python", sha)
            [result] = exchange(client, [pa.record_batch([pa.array([1, 2])], names=["n"])], "noisy.0", "raw")
        assert result.column("n").to_pylist() == [1, 2]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert process.stdout is not None
        assert process.stdout.read() == ""


def test_process_stops_on_sigterm_despite_open_streams(tmp_path: Path, mlp_path: Path) -> None:
    sha = put(tmp_path / "artifacts", mlp_path)
    with runtime_process(tmp_path / "artifacts", "--shutdown-grace", "0.5") as (process, line):
        client = flight.connect(_ready_location(line))
        load(client, KEY, "onnx", sha)
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_path(KEY))
        request = _request(_features(1))
        writer.begin(request.schema)
        writer.write_batch(request)
        reader.read_chunk()
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - started < 10
        with pytest.raises(flight.FlightUnavailableError):
            writer.write_batch(request)
            reader.read_chunk()
        client.close()


def test_process_exits_when_its_stdin_pipe_closes(tmp_path: Path) -> None:
    with runtime_process(tmp_path, EXIT_WITH_STDIN, stdin=subprocess.PIPE) as (process, line):
        with flight.connect(_ready_location(line)) as client:
            assert [r.body.to_pybytes() for r in client.do_action("healthcheck")] == [b"ok"]
        assert process.stdin is not None
        process.stdin.close()  # what a parent's death does to the pipe
        assert process.wait(timeout=10) == 0


def test_process_without_the_flag_ignores_end_of_stdin(tmp_path: Path) -> None:
    # /dev/null is at its end at once; without the flag, that must not stop the server.
    with runtime_process(tmp_path, stdin=subprocess.DEVNULL) as (process, line):
        with flight.connect(_ready_location(line)) as client:
            for _ in range(3):
                assert [r.body.to_pybytes() for r in client.do_action("healthcheck")] == [b"ok"]
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
