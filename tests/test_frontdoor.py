"""The Flight front door end to end: real runtime server processes under the local backend, routes in process
(LocalStep) and over Flight (RemoteStep), checked against onnxruntime run in the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from support.mlp import build_mlp
from support.wait import wait_until

from flightline.runtimes import load_runtime
from flightline.runtimes.base import ModelSpec
from flightline.runtimes.host import Host
from flightline.runtimes.server import remote_error_message
from flightline.server.dataplane.frontdoor import FrontDoor
from flightline.server.dataplane.routes import LocalStep, RemoteStep, Route, Router
from flightline.server.hosting.backend import LoadRequest, ServerGroup
from flightline.server.hosting.local import LocalBackend
from flightline.server.store.artifacts import ArtifactStore

FEATURES = 29
POSTPROCESS = """
import numpy as np
import pandas as pd


def wallaroo_json(data: pd.DataFrame) -> pd.DataFrame:
    scores = np.stack(data["output"].to_numpy())
    return pd.DataFrame({"score": scores.sum(axis=1) * 2.0 + 1.0})
"""


def features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, FEATURES), dtype=np.float32)


def request(x: np.ndarray) -> pa.RecordBatch:
    column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    return pa.record_batch([column], names=["input"])


def tensor(column: pa.Array | pa.ChunkedArray, width: int) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.asarray(array.values.to_numpy()).reshape(len(array), width)


def exchange(client: flight.FlightClient, *path: str, batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_path(*path))
    with writer:
        writer.begin(batches[0].schema)
        results = []
        for batch in batches:
            writer.write_batch(batch)
            results.append(reader.read_chunk().data)
        writer.done_writing()
        assert reader.read_all().num_rows == 0
    return results


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mlp(tmp_path_factory.mktemp("models") / "mlp.onnx")


@pytest.fixture(scope="module")
def reference(model: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


SHARED = ServerGroup("server", "shared")
STEPS = ServerGroup("server", "ws-1")


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    root = tmp_path_factory.mktemp("runtimes")
    with LocalBackend(root, ArtifactStore(str(root / "store")), check_interval=0.1) as hosting:
        yield hosting


def host(backend: LocalBackend, group: ServerGroup, key: str, runtime: str, path: Path) -> RemoteStep:
    """Loads a model file on the group's runtime server; the step that reaches it."""
    sha256 = backend.store.put_file(path).sha256
    location = backend.ensure_server(group)
    backend.load(group, LoadRequest(key=key, runtime=runtime, artifact=sha256, framework=runtime))
    return RemoteStep(location, key, secret=backend.secret(group))


@pytest.fixture(scope="module")
def front_door(
    model: Path, backend: LocalBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FrontDoor]:
    script = tmp_path_factory.mktemp("steps") / "postprocess.py"
    script.write_text(POSTPROCESS)
    mlp = host(backend, SHARED, "mlp.0", "onnx", model)
    post = host(backend, STEPS, "post.0", "python", script)
    local = LocalStep(Host(load_runtime("onnx", ModelSpec(model, "onnx"))))
    router = Router()
    router.put(Route.of("local", [local]))
    router.put(Route.of("remote", [mlp]))
    router.put(Route.of("pipeline", [local, post]))
    router.put(Route.of("remote-pipeline", [mlp, post]))
    with FrontDoor(router) as server:
        yield server


@pytest.fixture(scope="module")
def client(front_door: FrontDoor) -> Iterator[flight.FlightClient]:
    with flight.connect(front_door.location) as c:
        yield c


@pytest.mark.parametrize("route", ["local", "remote"])
def test_outputs_equal_onnxruntime(
    client: flight.FlightClient, reference: ort.InferenceSession, route: str
) -> None:
    xs = [features(rows, seed) for seed, rows in enumerate([1, 7, 1000])]
    results = exchange(client, route, "outputs", batches=[request(x) for x in xs])
    for x, result in zip(xs, results, strict=True):
        assert result.schema.names == ["out.output"]
        np.testing.assert_allclose(
            tensor(result.column(0), 2), reference.run(None, {"input": x})[0], rtol=1e-5
        )


@pytest.mark.parametrize("route", ["local", "remote"])
def test_envelope_echoes_inputs_next_to_outputs(
    client: flight.FlightClient, reference: ort.InferenceSession, route: str
) -> None:
    x = features(50)
    (result,) = exchange(client, route, batches=[request(x)])
    assert result.schema.names == ["time", "in.input", "out.output", "check_failures"]
    assert result.schema.field("time").type == pa.timestamp("ms", tz="UTC")
    np.testing.assert_array_equal(tensor(result.column("in.input"), FEATURES), x)
    np.testing.assert_allclose(
        tensor(result.column("out.output"), 2), reference.run(None, {"input": x})[0], rtol=1e-5
    )
    assert result.column("check_failures").to_numpy().tolist() == [0] * 50
    info = client.get_flight_info(flight.FlightDescriptor.for_path(route))
    assert info.schema.equals(result.schema)


def test_flight_info_has_the_schema_and_no_endpoints(client: flight.FlightClient) -> None:
    # Nothing is served by do_get, and Flight clients must consume every endpoint: none are listed.
    info = client.get_flight_info(flight.FlightDescriptor.for_path("remote-pipeline", "outputs"))
    assert info.schema.names == []  # a Python step without a declared output schema: known per batch
    assert info.endpoints == []
    info = client.get_flight_info(flight.FlightDescriptor.for_path("remote", "outputs"))
    assert info.schema.names == ["out.output"]
    assert info.endpoints == []
    assert client.get_schema(flight.FlightDescriptor.for_path("local", "outputs")).schema.names == [
        "out.output"
    ]
    assert client.get_flight_info(flight.FlightDescriptor.for_path("local")).endpoints == []
    listed = {tuple(i.descriptor.path) for i in client.list_flights()}
    assert listed == {(b"local",), (b"remote",), (b"pipeline",), (b"remote-pipeline",)}
    (ok,) = client.do_action(flight.Action("healthcheck", b""))
    assert ok.body.to_pybytes() == b"ok"


@pytest.mark.parametrize("route", ["pipeline", "remote-pipeline"])
def test_pipeline_feeds_model_outputs_to_python_step(
    client: flight.FlightClient, reference: ort.InferenceSession, route: str
) -> None:
    xs = [features(100, seed=1), features(3, seed=2)]
    results = exchange(client, route, batches=[request(x) for x in xs])
    for x, result in zip(xs, results, strict=True):
        assert result.schema.names == ["time", "in.input", "out.score", "check_failures"]
        expected = reference.run(None, {"input": x})[0].sum(axis=1) * 2.0 + 1.0
        np.testing.assert_allclose(result.column("out.score").to_numpy(), expected, rtol=1e-5)


def test_raw_mode_is_for_runtime_servers_only(client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowInvalid, match=r"response mode 'raw' is served by runtime servers only"):
        exchange(client, "local", "raw", batches=[request(features(1))])


BAD_CAST_STEP = """
import pandas as pd


def wallaroo_json(data: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"label": ["not a number"] * len(data)})
"""


def test_model_output_failing_its_declared_cast_is_internal(
    client: flight.FlightClient, front_door: FrontDoor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script = tmp_path / "bad_cast.py"
    script.write_text(BAD_CAST_STEP)
    spec = ModelSpec(script, "python", output_schema=pa.schema([("label", pa.int64())]))
    front_door.router.put(Route.of("bad-cast", [LocalStep(Host(load_runtime("python", spec)))]))
    try:
        batch = pa.record_batch([pa.array([1.0, 2.0])], names=["x"])
        # The model broke its own declared schema: INTERNAL, not the client's INVALID_ARGUMENT.
        with pytest.raises(flight.FlightInternalError) as failure:
            exchange(client, "bad-cast", batches=[batch])
        # The model's own words (here a sample of its data) stay in the server log.
        assert remote_error_message(failure.value) == (
            "step 1 of 'bad-cast' failed: the model failed; see the server log"
        )
        assert "Failed to parse string: 'not a number'" in caplog.text
    finally:
        front_door.router.remove("bad-cast")


def test_close_does_not_wait_for_a_stream_a_client_holds_open(model: Path) -> None:
    router = Router()
    router.put(Route.of("mlp", [LocalStep(Host(load_runtime("onnx", ModelSpec(model, "onnx"))))]))
    door = FrontDoor(router)
    client = flight.connect(door.location)
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_path("mlp", "outputs"))
    writer.begin(request(features(1)).schema)
    writer.write_batch(request(features(2)))
    assert reader.read_chunk().data.num_rows == 2
    started = time.monotonic()
    assert door.close(grace=0.5) is False  # the stream is still open
    assert time.monotonic() - started < 2.0
    with flight.connect(door.location) as late, pytest.raises(flight.FlightUnavailableError):  # refused
        list(late.do_action(flight.Action("healthcheck", b""), flight.FlightCallOptions(timeout=5)))
    writer.done_writing()  # the held stream still ends normally
    reader.read_all()
    writer.close()
    client.close()


def test_close_of_an_idle_front_door_returns_at_once() -> None:
    door = FrontDoor(Router())
    started = time.monotonic()
    assert door.close(grace=5.0) is True
    assert time.monotonic() - started < 2.0


def test_unknown_deployment_is_not_found(client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowKeyError, match="deployment 'nope' not found"):
        exchange(client, "nope", batches=[request(features(1))])
    with pytest.raises(pa.ArrowKeyError, match="'nope'"):
        client.get_flight_info(flight.FlightDescriptor.for_path("nope"))
    with pytest.raises(pa.ArrowInvalid, match="unknown response mode 'json'"):
        exchange(client, "local", "json", batches=[request(features(1))])


RAGGED = pa.record_batch(
    [pa.array([[0.5] * FEATURES, [0.5] * (FEATURES - 1)], pa.list_(pa.float32()))], names=["input"]
)
WRONG_DTYPE = pa.record_batch(
    [pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(FEATURES)), FEATURES)], names=["input"]
)
WRONG_COLUMN = pa.record_batch([request(features(2)).column(0)], names=["inputs"])


@pytest.mark.parametrize("route", ["local", "remote"])
@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (RAGGED, "column 'input' is ragged: row 1 has 28 values, expected 29"),
        (WRONG_DTYPE, "column 'input' has type fixed_size_list<item: double>"),
        (WRONG_COLUMN, "column 'input' is missing"),
    ],
    ids=["ragged", "dtype", "column"],
)
def test_bad_batches_fail_naming_the_column(
    client: flight.FlightClient, route: str, batch: pa.RecordBatch, message: str
) -> None:
    with pytest.raises(pa.ArrowInvalid, match=message) as failure:
        exchange(client, route, batches=[batch])
    # The runtime's own words, not wrapped in a second "Flight returned ... with message:" by the hop.
    assert remote_error_message(failure.value).startswith(message)
    (good,) = exchange(client, route, "outputs", batches=[request(features(4))])
    assert good.num_rows == 4


@pytest.mark.parametrize("route", ["local", "remote"])
def test_batches_over_16_mb_pass(
    client: flight.FlightClient, reference: ort.InferenceSession, route: str
) -> None:
    x = features(160_000, seed=3)  # 18.6 MB of features, echoed back in the envelope
    (result,) = exchange(client, route, batches=[request(x)])
    assert result.num_rows == 160_000
    np.testing.assert_allclose(
        tensor(result.column("out.output"), 2), reference.run(None, {"input": x})[0], rtol=1e-5
    )


def test_runtime_killed_mid_stream_fails_clearly_then_recovers(
    client: flight.FlightClient, front_door: FrontDoor, backend: LocalBackend, model: Path
) -> None:
    group = ServerGroup("server", "victim")
    front_door.router.put(Route.of("victim", [host(backend, group, "victim.0", "onnx", model)]))
    victim = backend.server(group)
    try:
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_path("victim", "outputs"))
        writer.begin(request(features(1)).schema)
        writer.write_batch(request(features(5)))
        assert reader.read_chunk().data.num_rows == 5
        os.kill(victim.pid, signal.SIGKILL)
        with pytest.raises(
            flight.FlightUnavailableError,
            match="runtime for step 1 of 'victim' died; it is being restarted, retry",
        ):
            writer.write_batch(request(features(5)))
            reader.read_chunk()
        with pytest.raises(flight.FlightUnavailableError):
            writer.close()  # the stream ended with the error; closing reports it again
        assert wait_until(lambda: victim.restarts == 1, timeout=10)
        backend.wait_healthy(group, timeout=30)
        (result,) = exchange(client, "victim", "outputs", batches=[request(features(6))])
        assert result.num_rows == 6
    finally:
        front_door.router.remove("victim")
        backend.unload(group, "victim.0")


def test_hundred_concurrent_streams(client: flight.FlightClient, reference: ort.InferenceSession) -> None:
    def one_stream(i: int) -> bool:
        xs = [features(10 + i, seed=i), features(3, seed=1000 + i)]
        results = exchange(client, ("local", "remote")[i % 2], "outputs", batches=[request(x) for x in xs])
        return all(
            np.allclose(tensor(r.column(0), 2), reference.run(None, {"input": x})[0], rtol=1e-5)
            for x, r in zip(xs, results, strict=True)
        )

    with ThreadPoolExecutor(max_workers=100) as pool:
        futures = [pool.submit(one_stream, i) for i in range(100)]
        assert all(f.result(timeout=60) for f in futures)


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def test_million_row_request_streams_in_bounded_memory(model: Path) -> None:
    support = Path(__file__).parent / "support" / "frontdoor_process.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    with subprocess.Popen(
        [sys.executable, str(support), str(model)], stdout=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline().split()[1])
            with flight.connect(f"grpc+tcp://127.0.0.1:{port}") as c:
                batch = request(features(25_000))  # 2.9 MB per batch, 116 MB for the whole request
                exchange(c, "mlp", batches=[batch, batch])  # warm the allocator with batches of this size
                before = peak_rss_mb(proc.pid)
                writer, reader = c.do_exchange(flight.FlightDescriptor.for_path("mlp"))
                writer.begin(batch.schema)
                sent = rows = 0
                while rows < 1_000_000:
                    while sent < 40 and sent * 25_000 - rows < 50_000:  # keep two batches in flight
                        writer.write_batch(batch)
                        sent += 1
                    rows += reader.read_chunk().data.num_rows
                writer.done_writing()
                assert reader.read_all().num_rows == 0
                writer.close()
                growth = peak_rss_mb(proc.pid) - before
            assert growth < 50, f"front door peak RSS grew {growth:.0f} MB for a 116 MB request"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
