"""Clients in other languages can use the control plane from protos/flightline/v1/*.proto alone.

A Node.js client loads the .proto files at run time and talks to the real gRPC server, and another infers
over Arrow Flight with grpc-js and apache-arrow alone (no Flight library); protoc's Java, C++ and C#
generators accept every file, the Java and C++ output compiles, and Java bytes round-trip with Python.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from grpc_tools import protoc as grpc_tools_protoc
from sklearn.linear_model import LogisticRegression

import flightline
from flightline.server.app import App
from flightline.v1 import deployment_pb2, model_pb2, registry_pb2, workspace_pb2

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
PROTOS = sorted(PROTO_ROOT.glob("flightline/v1/*.proto"))
# protoc's own include dir may be absent; grpc_tools always ships google/protobuf/*.proto.
WELL_KNOWN = Path(grpc_tools_protoc.__file__).parent / "_proto"
NODE_CLIENT = ROOT / "tests" / "clients" / "node"
PROTOBUF_JAR = Path("/usr/share/java/protobuf.jar")
PB2_MODULES: tuple[ModuleType, ...] = (deployment_pb2, model_pb2, registry_pb2, workspace_pb2)
SETUP_HINT = "apt-get install protobuf-compiler libprotobuf-dev libprotobuf-java (see .ci/run)"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: {SETUP_HINT}")
    return path


def run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, cwd=cwd)
    assert done.returncode == 0, f"{args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def generate(language: str, out: Path) -> Path:
    # grpc_tools' protoc carries only the Python generators, so other languages need the full protoc.
    out.mkdir(parents=True, exist_ok=True)
    protoc = require_tool("protoc")
    run([protoc, f"-I{PROTO_ROOT}", f"-I{WELL_KNOWN}", f"--{language}_out={out}", *map(str, PROTOS)])
    return out


def top_level_types(module: ModuleType) -> list[str]:
    descriptor = module.DESCRIPTOR
    return [*descriptor.message_types_by_name, *descriptor.enum_types_by_name]


def java_files() -> set[str]:
    """java_multiple_files: one class per top-level message (plus its OrBuilder) and enum."""
    files = set()
    for module in PB2_MODULES:
        for name in top_level_types(module):
            files.add(f"dev/flightline/v1/{name}.java")
        for name in module.DESCRIPTOR.message_types_by_name:
            files.add(f"dev/flightline/v1/{name}OrBuilder.java")
    return files


def cpp_files() -> set[str]:
    return {f"flightline/v1/{p.stem}.pb.{ext}" for p in PROTOS for ext in ("h", "cc")}


def csharp_files() -> set[str]:
    return {f"{p.stem.title()}.cs" for p in PROTOS}


EXPECTED: dict[str, Callable[[], set[str]]] = {"java": java_files, "cpp": cpp_files, "csharp": csharp_files}


def node() -> str:
    if not (NODE_CLIENT / "node_modules").is_dir():
        pytest.fail(f"{NODE_CLIENT}/node_modules is missing: run `npm ci --prefix tests/clients/node`")
    return require_tool("node")


def test_node_client_uses_the_control_plane_from_protos_alone(app: App) -> None:
    done = run([node(), str(NODE_CLIENT / "client.mjs"), app.grpc_address, "from-node"], cwd=ROOT)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert int(seen["workspace_id"]) > 0
    assert seen["fetched_id"] == seen["workspace_id"]
    assert seen["name"] == "from-node"
    assert int(seen["create_time_seconds"]) > 0
    assert seen["framework_count"] == 25
    assert seen["paged_frameworks"] == seen["first_frameworks"] and len(seen["paged_frameworks"]) == 2
    assert seen["deployment_count"] == 0
    assert seen["has_sklearn"] is True
    assert seen["unknown_workspace_status"] == 5  # NOT_FOUND
    assert seen["who"] == "admin"  # authenticated with FLIGHTLINE_TOKEN (the test server's admin token)
    assert seen["without_token_status"] == 16  # UNAUTHENTICATED


def node_infer(app: App, workspace: str, name: str, rows: object) -> subprocess.CompletedProcess[str]:
    command = [node(), str(NODE_CLIENT / "infer.mjs"), app.grpc_address, workspace, name, "-"]
    return subprocess.run(command, input=json.dumps(rows), capture_output=True, text=True, timeout=120)


def test_node_infers_over_flight_with_grpc_and_arrow_ipc_alone(app: App, tmp_path: Path) -> None:
    """Both input forms (one fixed-size tensor column; named scalar columns) give what the Python client
    gets, and the answer says which revision answered."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 4))
    frame = pd.DataFrame(x, columns=["amount", "age", "score", "tenure"])
    model = LogisticRegression().fit(x, x[:, 0] + x[:, 1] > 0)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    tensor = pa.schema([pa.field("inputs", pa.list_(pa.float32(), 4))])
    named = pa.schema([pa.field(c, pa.float64()) for c in frame.columns])
    with flightline.connect(app.grpc_address) as fl:
        ws = fl.workspaces.create("node-flight")
        for name, schema, rows, data in (
            ("tensor", tensor, [{"inputs": r} for r in x[:3].tolist()], {"inputs": x[:3].tolist()}),
            ("named", named, frame.head(3).to_dict("records"), frame.head(3)),
        ):
            version = fl.upload(
                tmp_path / "model.pkl", name=name, workspace=ws, framework="sklearn", input_schema=schema
            )
            deployment = fl.deploy(name, version, workspace=ws)
            expected = deployment.infer(data)
            done = node_infer(app, "node-flight", name, rows)
            assert done.returncode == 0, done.stderr
            *lines, summary = [json.loads(line) for line in done.stdout.splitlines()]
            assert [r["out.predictions"] for r in lines] == expected["out.predictions"].to_pylist()
            np.testing.assert_allclose(
                [r["out.probabilities"] for r in lines], expected["out.probabilities"].to_pylist(), rtol=1e-6
            )
            assert summary["rows"] == 3
            assert summary["answered_by"].startswith("revision=1;variant=primary")
        # apache-arrow would pad a short tensor row with NaN without a word; the client refuses it.
        short = node_infer(app, "node-flight", "tensor", [{"inputs": [1.0, 2.0]}])
        assert short.returncode == 1
        assert short.stderr.strip() == "error: row 0: column inputs must be a list of 4 values"


def test_node_flight_client_reports_the_servers_errors_in_one_line(app: App) -> None:
    with flightline.connect(app.grpc_address) as fl:
        fl.workspaces.create("node-errors")
    missing = node_infer(app, "node-errors", "absent", [])
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: deployment 'absent' does not exist"
    unknown = node_infer(app, "no-such-workspace", "absent", [])
    assert unknown.stderr.strip() == 'error: workspace "no-such-workspace" does not exist'


@pytest.mark.parametrize("language", sorted(EXPECTED))
def test_protoc_generates_every_file_for(language: str, tmp_path: Path) -> None:
    out = generate(language, tmp_path / language)
    produced = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    missing = EXPECTED[language]() - produced
    assert not missing, f"{language}: protoc did not generate {sorted(missing)}"


def test_generated_cpp_compiles_against_libprotobuf(tmp_path: Path) -> None:
    out = generate("cpp", tmp_path / "cpp")
    compiler = require_tool("g++")
    run([compiler, "-std=c++17", "-fsyntax-only", f"-I{out}", *map(str, sorted(out.rglob("*.pb.cc")))])


JAVA_ECHO = """
import dev.flightline.v1.StepSpec;
import dev.flightline.v1.Workspace;

public class Echo {
  public static void main(String[] args) throws Exception {
    if (args.length > 0 && args[0].equals("step")) {
      // proto3 optional: Java sees whether `version` was sent, even when it is 0.
      StepSpec in = StepSpec.parseFrom(System.in);
      StepSpec out = in.hasVersion() ? in.toBuilder().setVersion(in.getVersion() + 1).build()
                                     : in.toBuilder().setModelId(-in.getModelId()).build();
      out.writeTo(System.out);
    } else {
      Workspace in = Workspace.parseFrom(System.in);
      Workspace out = in.toBuilder().setId(in.getId() - 1).setName(in.getName() + "-from-java").build();
      out.writeTo(System.out);
    }
    System.out.flush();
  }
}
"""


def test_generated_java_compiles_and_round_trips_bytes_with_python(tmp_path: Path) -> None:
    if not PROTOBUF_JAR.is_file():
        pytest.fail(f"{PROTOBUF_JAR} is missing: {SETUP_HINT}")
    sources = generate("java", tmp_path / "src")
    classes = tmp_path / "classes"
    javac, java = require_tool("javac"), require_tool("java")
    run([javac, "-nowarn", "-cp", str(PROTOBUF_JAR), "-d", str(classes), *map(str, sources.rglob("*.java"))])
    echo = tmp_path / "Echo.java"
    echo.write_text(JAVA_ECHO)

    def through_java(message: bytes, *args: str) -> bytes:
        done = subprocess.run(
            [java, "-cp", f"{classes}:{PROTOBUF_JAR}", str(echo), *args],
            input=message,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout

    sent = workspace_pb2.Workspace(id=2**63 - 1, name="ws")
    sent.create_time.FromSeconds(1_700_000_000)
    back = workspace_pb2.Workspace.FromString(through_java(sent.SerializeToString()))
    assert (back.id, back.name, back.create_time.seconds) == (2**63 - 2, "ws-from-java", 1_700_000_000)

    absent = deployment_pb2.StepSpec(model_id=7).SerializeToString()  # no version: the latest
    latest = deployment_pb2.StepSpec.FromString(through_java(absent, "step"))
    assert latest.model_id == -7 and not latest.HasField("version")
    zero = deployment_pb2.StepSpec(model_id=7, version=0)
    assert zero.HasField("version")
    assert deployment_pb2.StepSpec.FromString(through_java(zero.SerializeToString(), "step")).version == 1
