"""Python steps (wallaroo_json scripts) behind a Host."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flightline.runtimes import load_runtime
from flightline.runtimes.base import InvalidInput, ModelLoadError, ModelSpec
from flightline.runtimes.host import Host, ModelOutputError
from flightline.runtimes.python_step import PythonStepRuntime
from flightline.runtimes.rules import from_tensor
from flightline.runtimes.server import remote_error_message
from flightline.server.client import Client, infer
from flightline.v1 import deployment_pb2, model_pb2, workspace_pb2

# The post-processing example of the product guide, verbatim apart from the print.
SEED_EXAMPLE = """
import pandas as pd

def wallaroo_json(data: pd.DataFrame):
    return [{"output": [data["dense_2"].to_list()[0][0]]}]
"""

DATAFRAME_STEP = """
import numpy as np
import pandas as pd

def wallaroo_json(data: pd.DataFrame):
    scores = np.stack(data["dense_2"].to_numpy())
    return pd.DataFrame({"label": scores.argmax(axis=1), "score": scores.max(axis=1)})
"""


def _step(tmp_path: Path, source: str, **spec: pa.Schema) -> Host:
    script = tmp_path / "step.py"
    script.write_text(textwrap.dedent(source))
    return Host(load_runtime("python", ModelSpec(script, "python", **spec)))


def _scores(rows: int) -> pa.RecordBatch:
    values = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) % 5
    return pa.record_batch([from_tensor(values)], names=["dense_2"])


def test_seed_example_list_of_rows(tmp_path: Path) -> None:
    host = _step(tmp_path, SEED_EXAMPLE)
    batch = pa.record_batch([pa.array([[12.886651, 0.5]], pa.list_(pa.float64()))], names=["dense_2"])
    result = host.respond(batch)
    assert result.schema.names == ["time", "in.dense_2", "out.output", "check_failures"]
    assert result.column("out.output").to_pylist() == [[12.886651]]
    assert result.schema.field("in.dense_2").type == pa.list_(pa.float64(), 2)  # normalised


def test_dataframe_result(tmp_path: Path) -> None:
    host = _step(tmp_path, DATAFRAME_STEP)
    outputs = host.respond(_scores(4), "raw")
    assert outputs.schema.names == ["label", "score"]
    assert outputs.column("label").to_pylist() == [2, 1, 2, 0]
    assert outputs.column("score").to_pylist() == [2.0, 4.0, 3.0, 4.0]


def test_declared_output_schema_is_applied(tmp_path: Path) -> None:
    schema = pa.schema([("score", pa.float32()), ("label", pa.int32())])
    host = _step(tmp_path, DATAFRAME_STEP, output_schema=schema)
    assert host.respond(_scores(2), "raw").schema == schema
    assert host.result_schema("outputs").names == ["out.score", "out.label"]


def test_declared_output_column_missing(tmp_path: Path) -> None:
    host = _step(tmp_path, DATAFRAME_STEP, output_schema=pa.schema([("probability", pa.float32())]))
    with pytest.raises(ValueError, match="returned no column 'probability'"):
        host.run(_scores(2))


def test_declared_input_schema_is_enforced(tmp_path: Path) -> None:
    host = _step(tmp_path, DATAFRAME_STEP, input_schema=pa.schema([("dense_2", pa.list_(pa.float32(), 3))]))
    assert host.run(_scores(2)).num_rows == 2
    with pytest.raises(InvalidInput, match="column 'dense_2' has type fixed_size_list<item: double>"):
        host.run(pa.record_batch([from_tensor(np.zeros((2, 3)))], names=["dense_2"]))


def test_open_schema_still_refuses_ragged_tensors(tmp_path: Path) -> None:
    host = _step(tmp_path, DATAFRAME_STEP)
    ragged = pa.record_batch([pa.array([[1.0, 2.0, 3.0], [1.0]])], names=["dense_2"])
    with pytest.raises(InvalidInput, match="column 'dense_2' is ragged: row 1 has 1 values, expected 3"):
        host.run(ragged)


def test_rows_out_must_equal_rows_in(tmp_path: Path) -> None:
    host = _step(tmp_path, SEED_EXAMPLE)  # always returns one row
    with pytest.raises(ModelOutputError, match="model returned 1 rows for 3 input rows"):
        host.respond(_scores(3))


def test_arrow_table_and_bad_return_types(tmp_path: Path) -> None:
    table_step = _step(
        tmp_path,
        """
        import pyarrow as pa
        def wallaroo_json(data):
            return pa.table({"n": list(range(len(data)))})
    """,
    )
    assert table_step.run(_scores(3)).column("n").to_pylist() == [0, 1, 2]
    string_step = _step(tmp_path, "def wallaroo_json(data):\n    return 'hello'\n")
    with pytest.raises(TypeError, match="returned str; expected a pandas DataFrame"):
        string_step.run(_scores(1))


def test_scripts_do_not_share_globals(tmp_path: Path) -> None:
    source = (
        "COUNT = 0\ndef wallaroo_json(data):\n    global COUNT\n    COUNT += 1\n    return [{'n': COUNT}]\n"
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _step(tmp_path / "a", source), _step(tmp_path / "b", source)
    one_row = _scores(1)
    assert [first.run(one_row).column(0)[0].as_py() for _ in range(3)] == [1, 2, 3]
    assert second.run(one_row).column(0)[0].as_py() == 1


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not define a function wallaroo_json"):
        _step(tmp_path, "def predict(data):\n    return data\n")
    with pytest.raises(ModelLoadError, match=r"step\.py failed to import: SyntaxError"):
        _step(tmp_path, "def wallaroo_json(data) return data\n")
    with pytest.raises(ModelLoadError, match="failed to import: ModuleNotFoundError"):
        _step(tmp_path, "import no_such_module_here\ndef wallaroo_json(data):\n    return data\n")
    with pytest.raises(ModelLoadError, match="does not exist"):
        PythonStepRuntime.load(ModelSpec(tmp_path / "missing.py", "python"))


# -- deployed: the guide's three return forms in one pipeline, and the row rule in the deployment's terms

FRAME_STEP = """
import pandas as pd

def wallaroo_json(data: pd.DataFrame):
    return pd.DataFrame({"doubled": (data["x"] * 2.0).to_numpy()}, index=data.index + 100)  # not kept
"""
TABLE_STEP = """
import pyarrow as pa

def wallaroo_json(data):
    halves = pa.chunked_array([pa.array(data["doubled"][:1] + 1.0), pa.array(data["doubled"][1:] + 1.0)])
    return pa.table({"plus_one": halves})  # two chunks: served as one batch
"""
ROWS_STEP = """
def wallaroo_json(data):
    return [{"output": [value]} for value in data["plus_one"]]  # the guide's list of row dicts
"""
LOSSY_STEP = """
def wallaroo_json(data):
    return [{"output": [float(data["plus_one"].sum())]}]  # one row, whatever came in
"""


def _deploy_steps(client: Client, tmp_path: Path, name: str, sources: list[str]) -> deployment_pb2.Deployment:
    workspace = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name=name)).id
    model_ids = []
    for index, source in enumerate(sources):
        script = tmp_path / f"{name}-{index}.py"
        script.write_text(textwrap.dedent(source))
        conversion = model_pb2.Conversion(framework="python")
        meta = model_pb2.UploadMetadata(name=f"{name}-{index}", workspace_id=workspace, conversion=conversion)
        version = client.upload_file(script, meta).version
        assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
        model_ids.append(version.model_id)
    deployment = client.deploy(workspace, name, *model_ids)
    assert deployment.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, deployment.status_reason
    return deployment


def test_dataframe_table_and_row_dict_steps_chain_in_a_deployment(client: Client, tmp_path: Path) -> None:
    deployment = _deploy_steps(client, tmp_path, "chain", [FRAME_STEP, TABLE_STEP, ROWS_STEP])
    result = infer(deployment.flight_location, "chain", pa.table({"x": [1.0, 2.0, 3.0]}))
    assert result.schema.names == ["time", "in.x", "out.output", "check_failures"]
    assert result.column("out.output").to_pylist() == [[3.0], [5.0], [7.0]]


def test_a_step_returning_other_row_counts_is_a_model_error_naming_the_rule(
    client: Client, tmp_path: Path
) -> None:
    deployment = _deploy_steps(client, tmp_path, "lossy", [FRAME_STEP, TABLE_STEP, LOSSY_STEP])
    one = infer(deployment.flight_location, "lossy", pa.table({"x": [1.0]}), mode="outputs")
    assert one.column("out.output").to_pylist() == [[3.0]]  # one row in, one out: served
    with pytest.raises(flight.FlightInternalError) as failure:
        infer(deployment.flight_location, "lossy", pa.table({"x": [1.0, 2.0, 3.0]}))
    assert remote_error_message(failure.value) == (
        "step 3 of 'lossy' failed: model returned 1 rows for 3 input rows; a model must return exactly "
        "one output row per input row; see the server log"
    )
