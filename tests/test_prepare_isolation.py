"""Preparation never loads a model in the control plane: a tiny ONNX file whose inspection allocates
gigabytes fails inside the preparation subprocess, under its memory limit, as an ERROR version with a
clear reason, and the control plane's resident memory does not grow. What the subprocess answers is
not trusted: it may have run a hostile pickle."""

from __future__ import annotations

import pickle
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from support.wait import wait_until

from flightline.runtimes.base import ModelLoadError
from flightline.runtimes.catalog import get_framework
from flightline.server.client import Client
from flightline.server.services.prepare import Prepared, prepare
from flightline.v1 import model_pb2, workspace_pb2

HUGE_ROWS, HUGE_COLUMNS = 1 << 16, 1 << 15  # 2^31 float32 values: 8 GiB
TERMINAL = (model_pb2.MODEL_STATUS_READY, model_pb2.MODEL_STATUS_ERROR)


def memory_bomb(path: Path) -> Path:
    """A graph whose output shape depends on the input's values, so describing it means running it
    (the probe run on one row of zeros), and that run builds an 8 GiB tensor with ConstantOfShape."""
    offset = helper.make_tensor("offset", TensorProto.INT64, [2], [HUGE_ROWS, HUGE_COLUMNS])
    flat = helper.make_tensor("flat", TensorProto.INT64, [1], [-1])
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["row"]),
        helper.make_node("Add", ["row", "offset"], ["shape"]),
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["y"],
            value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
        [offset, flat],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def settled(client: Client, version: model_pb2.ModelVersion) -> model_pb2.ModelVersion:
    """The version once preparation finished (uploads may return before it does)."""
    latest = [version]

    def done() -> bool:
        latest[0] = client.models.GetModelVersion(
            model_pb2.GetModelVersionRequest(model_id=version.model_id, version=version.version)
        )
        return latest[0].status in TERMINAL

    assert wait_until(done, timeout=120, interval=0.1), latest[0]
    return latest[0]


@pytest.mark.timeout(300)
def test_onnx_memory_bomb_is_an_error_and_the_control_plane_does_not_grow(
    client: Client, tmp_path: Path
) -> None:
    bomb = memory_bomb(tmp_path / "bomb.onnx")
    assert bomb.stat().st_size < 512
    workspace = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="bombs")).id
    metadata = model_pb2.UploadMetadata(
        name="bomb", workspace_id=workspace, conversion=model_pb2.Conversion(framework="onnx")
    )
    before = resident_bytes()
    version = settled(client, client.upload_file(bomb, metadata).version)
    grown = resident_bytes() - before
    assert version.status == model_pb2.MODEL_STATUS_ERROR
    reason = version.status_reason
    assert "probe run failed" in reason and "allocate memory" in reason, reason
    assert "onnxruntime_src" not in reason and str(tmp_path) not in reason  # no source or server paths
    assert version.sha256 == version.original_sha256  # the upload itself is kept
    # The 8 GiB were asked for (and refused) in the subprocess; the server grew by far less than that.
    assert grown < 200 << 20, f"the control plane grew by {grown >> 20} MiB"


class _Runs:
    """Unpickles by running `code`: what a hostile pickle does in the preparation subprocess."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (self.code,)


def hostile_pickle(tmp_path: Path, code: str) -> Path:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_Runs(code)))
    return path


def prepare_pickle(tmp_path: Path, code: str, **limits: int) -> Prepared:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return prepare(
        get_framework("sklearn"),
        hostile_pickle(tmp_path, code),
        work,
        input_schema=None,
        output_schema=None,
        options={},
        **limits,
    )


FORGE = "import json, os; print(json.dumps({reply!r}), flush=True); os._exit(0)"


@pytest.mark.parametrize(
    ("reply", "refusal"),
    [
        ({"runtime": "onnx", "artifact": "../../../etc/passwd", "note": ""}, "outside its folder"),
        ({"runtime": "pytorch", "artifact": "", "note": ""}, "unknown runtime 'pytorch'"),
    ],
)
def test_a_forged_reply_from_the_subprocess_is_not_trusted(
    tmp_path: Path, reply: dict[str, str], refusal: str
) -> None:
    with pytest.raises(ModelLoadError, match=refusal):
        prepare_pickle(tmp_path, FORGE.format(reply=reply))


def test_a_crash_is_an_error_without_the_subprocess_output(tmp_path: Path) -> None:
    code = (
        "import os, signal, sys; sys.stderr.write('/srv/secret/path\\n'); sys.stderr.flush(); "
        "os.kill(os.getpid(), signal.SIGSEGV)"
    )
    with pytest.raises(ModelLoadError) as caught:
        prepare_pickle(tmp_path, code)
    assert "crashed" in str(caught.value) and "/srv/secret" not in str(caught.value)


def test_a_flood_of_output_does_not_grow_the_control_plane(tmp_path: Path) -> None:
    code = (
        "import os, sys\nfor _ in range(256): sys.stdout.write('x' * (1 << 20))\n"
        "sys.stdout.flush(); os._exit(1)"
    )
    before = resident_bytes()
    with pytest.raises(ModelLoadError, match="crashed"):
        prepare_pickle(tmp_path, code)
    assert resident_bytes() - before < 64 << 20  # 256 MiB were printed


def test_the_memory_limit_applies_to_the_subprocess(tmp_path: Path) -> None:
    code = "block = bytearray(3 << 30)"  # 3 GiB, over a 1 GiB limit
    with pytest.raises(ModelLoadError, match="MemoryError"):
        prepare_pickle(tmp_path, code, memory_limit=1 << 30)
