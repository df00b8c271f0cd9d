"""What Flight clients see, over real Flight servers (the front door, runtime server processes under a
LocalBackend, an in-process RuntimeServer): each error kind has the right code and a short message with
no traceback and no server path; zero-row batches give zero-row results on every runtime; FlightInfo
and list_flights promise only what is served."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from sklearn.kernel_ridge import KernelRidge
from support.mlp import build_mlp
from support.wait import wait_until

import flightline
from flightline.runtimes import load_runtime
from flightline.runtimes.base import ModelSpec
from flightline.runtimes.flight_service import runtime_client as secret_client
from flightline.runtimes.host import Host
from flightline.runtimes.server import LoadSpec, RuntimeServer
from flightline.server.dataplane.frontdoor import FrontDoor
from flightline.server.dataplane.routes import LocalStep, RemoteStep, Route, Router, Step, StepStream
from flightline.server.hosting.backend import LoadRequest, ServerGroup
from flightline.server.hosting.local import LocalBackend
from flightline.server.store.artifacts import ArtifactStore

FEATURES = 29
RAISES = """
def wallaroo_json(data):
    raise ValueError("cannot open /srv/models/secret-weights.bin (see model.py line 3)")
"""
DECLARED_STEP = """
import pandas as pd


def wallaroo_json(data):
    return pd.DataFrame({"doubled": data["n"] * 2})
"""
OPEN_STEP = """
import pandas as pd


def wallaroo_json(data):
    return pd.DataFrame({"rows": [len(data)] * len(data)})
"""


class BrokenStep(Step):
    """A step with a bug: opening a stream raises an unexpected exception that names a server file."""

    input_schema = pa.schema([("n", pa.int64())])
    output_schema = pa.schema([("n", pa.int64())])
    location = None

    def open(self) -> StepStream:
        raise RuntimeError(f"bug in {flightline.__file__}")


def request(rows: int) -> pa.RecordBatch:
    values = np.random.default_rng(rows).random((rows, FEATURES), dtype=np.float32)
    return pa.record_batch(
        [pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), pa.float32()), FEATURES)], names=["input"]
    )


def exchange(
    client: flight.FlightClient, descriptor: flight.FlightDescriptor, batch: pa.RecordBatch
) -> pa.RecordBatch:
    writer, reader = client.do_exchange(descriptor)
    with writer:
        writer.begin(batch.schema)
        writer.write_batch(batch)
        result = reader.read_chunk().data
        writer.done_writing()
        reader.read_all()
    return result


def assert_clean(error: BaseException) -> str:
    """The text a client got (message and extra_info): short, without traceback or server paths."""
    text = str(error) + bytes(getattr(error, "extra_info", b"") or b"").decode(errors="replace")
    for leak in ("Traceback", 'File "', ".py", "/srv", os.path.dirname(flightline.__file__), sys.prefix):
        assert leak not in text, f"{leak!r} reached the client: {text}"
    return text


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 4))
    sklearn_model = folder / "ridge.pkl"
    sklearn_model.write_bytes(pickle.dumps(KernelRidge().fit(x, x[:, 0])))
    paths = {"mlp": build_mlp(folder / "mlp.onnx"), "sklearn": sklearn_model}
    for name, source in (("raises", RAISES), ("declared", DECLARED_STEP), ("open", OPEN_STEP)):
        paths[name] = folder / f"{name}.py"
        paths[name].write_text(source)
    return paths


SKLEARN_INPUT = pa.schema([("inputs", pa.list_(pa.float64(), 4))])
DECLARED_IN = pa.schema([("n", pa.int64())])
DECLARED_OUT = pa.schema([("doubled", pa.int64())])


GROUP = ServerGroup("server", "ws-1")


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    store = ArtifactStore(str(tmp_path_factory.mktemp("store")))
    with LocalBackend(tmp_path_factory.mktemp("runtimes"), store, check_interval=0.1) as hosting:
        yield hosting


@pytest.fixture(scope="module")
def specs(models: dict[str, Path]) -> dict[str, tuple[str, ModelSpec]]:
    return {
        "mlp": ("onnx", ModelSpec(models["mlp"], "onnx")),
        "sklearn": ("sklearn", ModelSpec(models["sklearn"], "sklearn", SKLEARN_INPUT)),
        "raises": ("python", ModelSpec(models["raises"], "python")),
        "declared": ("python", ModelSpec(models["declared"], "python", DECLARED_IN, DECLARED_OUT)),
        "open": ("python", ModelSpec(models["open"], "python")),
    }


@pytest.fixture(scope="module")
def front_door(backend: LocalBackend, specs: dict[str, tuple[str, ModelSpec]]) -> Iterator[FrontDoor]:
    router = Router()
    for name, (runtime, spec) in specs.items():
        sha256 = backend.store.put_file(spec.artifact).sha256
        model = LoadRequest(
            f"{name}.0", runtime, sha256, spec.framework, spec.input_schema, spec.output_schema
        )
        backend.load(GROUP, model)
        router.put(
            Route.of(
                f"{name}-remote",
                [RemoteStep(backend.ensure_server(GROUP), model.key, secret=backend.secret(GROUP))],
            )
        )
        if runtime != "sklearn":
            router.put(Route.of(f"{name}-local", [LocalStep(Host(load_runtime(runtime, spec)))]))
    router.put(Route.of("broken", [BrokenStep()]))
    with FrontDoor(router) as door:
        yield door


@pytest.fixture(scope="module")
def door(front_door: FrontDoor) -> Iterator[flight.FlightClient]:
    with flight.connect(front_door.location) as client:
        yield client


def runtime_client(backend: LocalBackend) -> flight.FlightClient:
    return secret_client(backend.ensure_server(GROUP), backend.secret(GROUP))


# -- errors


@pytest.mark.parametrize("route", ["raises-local", "raises-remote"])
def test_a_model_that_raised_is_internal_with_a_generic_message(
    door: flight.FlightClient, route: str, caplog: pytest.LogCaptureFixture
) -> None:
    batch = pa.record_batch([pa.array([1, 2])], names=["n"])
    with pytest.raises(flight.FlightInternalError) as failure:
        exchange(door, flight.FlightDescriptor.for_path(route), batch)
    text = assert_clean(failure.value)
    assert text.startswith(f"step 1 of '{route}' failed: the model failed; see the server log")
    if route.endswith("local"):  # in this process: the model's own words are in this log, not the reply
        assert "secret-weights.bin" in caplog.text and "Traceback" in caplog.text


def test_runtime_server_errors_are_short(backend: LocalBackend, front_door: FrontDoor) -> None:
    with runtime_client(backend) as client:
        with pytest.raises(flight.FlightInternalError) as model_failed:
            exchange(
                client,
                flight.FlightDescriptor.for_path("raises.0"),
                pa.record_batch([pa.array([1])], names=["n"]),
            )
        assert assert_clean(model_failed.value).startswith("the model failed; see the server log")
        with pytest.raises(pa.ArrowInvalid) as bad_batch:  # INVALID_ARGUMENT naming the column
            exchange(
                client,
                flight.FlightDescriptor.for_path("mlp.0"),
                pa.record_batch([pa.array([1])], names=["x"]),
            )
        assert assert_clean(bad_batch.value).startswith("column 'input' is missing")
        with pytest.raises(pa.ArrowNotImplementedError) as unknown_action:
            list(client.do_action(flight.Action("reboot", b"")))
        assert assert_clean(unknown_action.value).startswith("unknown action 'reboot'")
        with pytest.raises(pa.ArrowNotImplementedError) as do_get:
            client.do_get(flight.Ticket(b"anything")).read_all()
        assert assert_clean(do_get.value).startswith("do_get is not served")


def test_runtime_server_tells_a_deployment_name_to_call_the_front_door(
    backend: LocalBackend, front_door: FrontDoor
) -> None:
    # Runtime servers address models by key now: a deployment's name is an unknown key (NOT_FOUND), a
    # descriptor without a key is INVALID_ARGUMENT; both point at the front door.
    batch = request(1)
    with runtime_client(backend) as client:
        for descriptor, error in (
            (flight.FlightDescriptor.for_path("fraud"), pa.ArrowKeyError),
            (flight.FlightDescriptor.for_path("fraud", "outputs"), pa.ArrowKeyError),
            (flight.FlightDescriptor.for_path(), pa.ArrowInvalid),
            (flight.FlightDescriptor.for_command(b"fraud"), pa.ArrowInvalid),
        ):
            for call in (
                lambda d=descriptor: exchange(client, d, batch),
                lambda d=descriptor: client.get_flight_info(d),
                lambda d=descriptor: client.get_schema(d),
            ):
                with pytest.raises(error) as failure:
                    call()
                text = assert_clean(failure.value)
                assert "runtime servers are internal and address models by key" in text
                assert "call the front door" in text


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda c: exchange(c, flight.FlightDescriptor.for_path("nope"), request(1)),
            pa.ArrowKeyError,
            "deployment 'nope' not found",
        ),
        (
            lambda c: c.get_flight_info(flight.FlightDescriptor.for_path("nope")),
            pa.ArrowKeyError,
            "deployment 'nope' not found",
        ),
        (
            lambda c: c.get_schema(flight.FlightDescriptor.for_path("nope")),
            pa.ArrowKeyError,
            "deployment 'nope' not found",
        ),
        (
            lambda c: exchange(c, flight.FlightDescriptor.for_path(), request(1)),
            pa.ArrowInvalid,
            "expected FlightDescriptor.for_path(deployment)",
        ),
        (
            lambda c: exchange(c, flight.FlightDescriptor.for_command(b"mlp-local"), request(1)),
            pa.ArrowInvalid,
            "expected FlightDescriptor.for_path(deployment)",
        ),
        (
            lambda c: exchange(c, flight.FlightDescriptor.for_path("mlp-local", "json"), request(1)),
            pa.ArrowInvalid,
            "unknown response mode 'json'",
        ),
        (
            lambda c: exchange(
                c,
                flight.FlightDescriptor.for_path("mlp-local"),
                pa.record_batch([pa.array([1])], names=["x"]),
            ),
            pa.ArrowInvalid,
            "column 'input' is missing",
        ),
        (
            lambda c: exchange(
                c,
                flight.FlightDescriptor.for_path("mlp-remote"),
                pa.record_batch([pa.array([1])], names=["x"]),
            ),
            pa.ArrowInvalid,
            "column 'input' is missing",
        ),
        (
            lambda c: list(c.do_action(flight.Action("reboot", b""))),
            pa.ArrowNotImplementedError,
            "unknown action 'reboot'",
        ),
        (
            lambda c: c.do_get(flight.Ticket(b"mlp-local")).read_all(),
            pa.ArrowNotImplementedError,
            "do_get is not served",
        ),
        (
            lambda c: exchange(
                c, flight.FlightDescriptor.for_path("broken"), pa.record_batch([pa.array([1])], names=["n"])
            ),
            flight.FlightInternalError,
            "internal error; see the server log",
        ),
    ],
    ids=[
        "exchange-unknown",
        "info-unknown",
        "schema-unknown",
        "no-name",
        "command",
        "mode",
        "bad-batch-local",
        "bad-batch-remote",
        "action",
        "do-get",
        "bug",
    ],
)
def test_front_door_errors_have_their_code_and_a_short_message(
    door: flight.FlightClient, call: object, error: type[BaseException], message: str
) -> None:
    with pytest.raises(error) as failure:
        call(door)  # type: ignore[operator]
    assert assert_clean(failure.value).startswith(message)


def test_do_put_is_refused_cleanly(door: flight.FlightClient) -> None:
    batch = request(1)
    with pytest.raises(pa.ArrowNotImplementedError) as failure:
        writer, _ = door.do_put(flight.FlightDescriptor.for_path("mlp-local"), batch.schema)
        writer.write_batch(batch)
        writer.close()
    assert assert_clean(failure.value).startswith("do_put is not served")


def test_a_runtime_that_died_is_unavailable_with_a_short_message(
    door: flight.FlightClient, backend: LocalBackend
) -> None:
    process = backend.server(GROUP)
    restarts = process.restarts
    writer, reader = door.do_exchange(flight.FlightDescriptor.for_path("mlp-remote", "outputs"))
    writer.begin(request(1).schema)
    writer.write_batch(request(2))
    assert reader.read_chunk().data.num_rows == 2
    os.kill(process.pid, signal.SIGKILL)
    with pytest.raises(flight.FlightUnavailableError) as failure:
        writer.write_batch(request(2))
        reader.read_chunk()
    assert assert_clean(failure.value).startswith("runtime for step 1 of 'mlp-remote' died")
    with pytest.raises(flight.FlightUnavailableError):
        writer.close()
    # Until its watcher notices (and `poll()` sees the kill land), the dead process still reads HEALTHY:
    # waiting for health at once could return before the restart, and the next test would then reach
    # the new process while it reloads its models ("no model 'mlp.0'"). Wait for the restart first.
    assert wait_until(lambda: process.restarts > restarts, timeout=30)
    backend.wait_healthy(GROUP, timeout=60)


# -- zero rows


@pytest.mark.parametrize(
    ("route", "batch", "columns"),
    [
        ("mlp-local", request(0), ["out.output"]),
        ("mlp-remote", request(0), ["out.output"]),
        (
            "sklearn-remote",
            pa.record_batch([pa.array([], pa.list_(pa.float64(), 4))], names=["inputs"]),
            ["out.predictions"],
        ),
        ("declared-local", pa.record_batch([pa.array([], pa.int64())], names=["n"]), ["out.doubled"]),
        ("declared-remote", pa.record_batch([pa.array([], pa.int64())], names=["n"]), ["out.doubled"]),
        ("open-local", pa.record_batch([pa.array([], pa.int64())], names=["n"]), ["out.rows"]),
        ("open-remote", pa.record_batch([pa.array([], pa.int64())], names=["n"]), ["out.rows"]),
    ],
)
def test_a_zero_row_batch_gets_a_zero_row_result(
    door: flight.FlightClient, route: str, batch: pa.RecordBatch, columns: list[str]
) -> None:
    result = exchange(door, flight.FlightDescriptor.for_path(route, "outputs"), batch)
    assert (result.num_rows, result.schema.names) == (0, columns)
    envelope = exchange(door, flight.FlightDescriptor.for_path(route), batch)
    assert envelope.num_rows == 0 and envelope.schema.names[0] == "time"


def test_sklearn_runtime_server_answers_zero_rows(backend: LocalBackend, front_door: FrontDoor) -> None:
    empty = pa.record_batch([pa.array([], pa.list_(pa.float64(), 4))], names=["inputs"])
    with runtime_client(backend) as client:
        result = exchange(client, flight.FlightDescriptor.for_path("sklearn.0", "raw"), empty)
    assert (result.num_rows, result.schema.names) == (0, ["predictions"])


# -- metadata: what get_flight_info and list_flights promise is served


def test_a_stock_client_following_flight_info_reads_nothing_and_exchanges_on_the_descriptor(
    door: flight.FlightClient,
) -> None:
    descriptor = flight.FlightDescriptor.for_path("mlp-remote", "outputs")
    info = door.get_flight_info(descriptor)
    # Flight's meaning: the data is the union of every endpoint's do_get. There are none to follow...
    assert info.endpoints == []
    followed = [door.do_get(endpoint.ticket).read_all() for endpoint in info.endpoints]
    assert followed == []
    # ...and inference is do_exchange on the same descriptor, here, with the schema the info gave.
    result = exchange(door, info.descriptor, request(3))
    assert result.schema.equals(info.schema) and result.num_rows == 3
    assert door.get_schema(descriptor).schema.equals(info.schema)


def test_list_flights_lists_each_deployment_with_its_schema_and_no_endpoints(
    door: flight.FlightClient, front_door: FrontDoor
) -> None:
    listed = {info.descriptor.path[0].decode(): info for info in door.list_flights()}
    assert sorted(listed) == front_door.router.names()
    for name, info in listed.items():
        assert info.endpoints == []
        assert info.schema.equals(door.get_flight_info(flight.FlightDescriptor.for_path(name)).schema)


def test_runtime_server_flight_info_has_no_endpoints(models: dict[str, Path], tmp_path: Path) -> None:
    sha256 = hashlib.sha256(models["mlp"].read_bytes()).hexdigest()
    shutil.copyfile(models["mlp"], tmp_path / sha256)
    with RuntimeServer(tmp_path) as server, flight.connect(server.location) as client:
        server.load(LoadSpec("mlp.0", "onnx", sha256, "onnx"))
        info = client.get_flight_info(flight.FlightDescriptor.for_path("mlp.0", "outputs"))
        assert info.endpoints == []
        result = exchange(client, info.descriptor, request(2))
        assert result.schema.equals(info.schema)
        assert list(client.list_flights()) == []
