"""Per-request parameters (runtimes/params.py) over real Flight: the front door with an in-process step and
a remote step on a runtime server, both forwarding a request batch's app metadata to the runtime."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flightline.runtimes.base import InvalidInput, ModelSpec, Runtime
from flightline.runtimes.host import Host
from flightline.runtimes.params import decode, params_metadata, resolve
from flightline.runtimes.server import Model, RuntimeServer
from flightline.server.dataplane.frontdoor import FrontDoor
from flightline.server.dataplane.routes import LocalStep, RemoteStep, Route, Router

PARAMS = pa.schema([pa.field("scale", pa.float64()), pa.field("label", pa.string())])


class Scaler(Runtime):
    """x * scale (default 1.0); the label, when sent, is echoed per row."""

    name = "test-scaler"
    input_schema = pa.schema([pa.field("x", pa.float64())])
    output_schema = pa.schema([pa.field("y", pa.float64()), pa.field("label", pa.string())])
    params_schema = PARAMS

    @classmethod
    def load(cls, spec: ModelSpec) -> Self:
        return cls()

    def infer(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return self.infer_with_params(batch, {})

    def infer_with_params(self, batch: pa.RecordBatch, params: Mapping[str, Any]) -> pa.RecordBatch:
        x = batch.column("x").to_numpy()
        label = params.get("label") or "default"
        y = pa.array(x * float(params.get("scale", 1.0)))
        return pa.record_batch([y, pa.array([label] * len(x))], schema=self.output_schema)


def test_resolve_casts_keeps_declared_and_names_bad_values() -> None:
    sent = decode(params_metadata({"scale": 2, "other": "ignored"}).to_pybytes())
    assert resolve(sent, PARAMS) == {"scale": 2.0}
    assert resolve(sent, None) == {}
    with pytest.raises(InvalidInput, match="parameter 'scale'"):
        resolve(decode(params_metadata({"scale": "high"})), PARAMS)
    with pytest.raises(InvalidInput, match="one row"):
        decode(params_metadata(pa.record_batch({"scale": [1.0, 2.0]})))
    with pytest.raises(InvalidInput, match="not an Arrow IPC stream"):
        decode(b'{"scale": 2}')


@pytest.fixture(scope="module")
def runtime_server() -> Iterator[RuntimeServer]:
    server = RuntimeServer(artifacts=__import__("pathlib").Path("/nonexistent"))
    # Served as a loaded model would be (the test runtime is no registered plug-in).
    server._models["scaler"] = Model(None, Host(Scaler()), concurrent=True)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("where", ["local", "remote"])
def test_params_per_batch_through_the_front_door(where: str, runtime_server: RuntimeServer) -> None:
    router = Router()
    step = LocalStep(Host(Scaler())) if where == "local" else RemoteStep(runtime_server.location, "scaler")
    router.put(Route.of("scaled", [step]))
    with FrontDoor(router) as door, flight.connect(door.location) as client:
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_path("scaled", "outputs"))
        batch = pa.record_batch({"x": np.arange(4, dtype=np.float64)})
        writer.begin(batch.schema)
        writer.write_with_metadata(batch, params_metadata({"scale": 3.0, "label": "triple"}))
        first = reader.read_chunk().data
        writer.write_batch(batch)  # no metadata: the model's defaults, nothing sticky
        second = reader.read_chunk().data
        writer.write_with_metadata(batch, params_metadata({"scale": "much"}))
        with pytest.raises(pa.ArrowInvalid, match="parameter 'scale' is string"):
            reader.read_chunk()
        with pytest.raises(pa.ArrowInvalid):
            writer.close()
    assert first.column("out.y").to_pylist() == [0.0, 3.0, 6.0, 9.0]
    assert first.column("out.label").to_pylist() == ["triple"] * 4
    assert second.column("out.y").to_pylist() == [0.0, 1.0, 2.0, 3.0]
    assert second.column("out.label").to_pylist() == ["default"] * 4
