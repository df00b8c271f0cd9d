"""The `flightline` command as a user runs it: a subprocess against a real server (the `app` fixture),
every verb, the one-line errors and their exit codes, `infer` on Parquet, CSV and Arrow files compared
with the model run in-process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from support.mlp import build_mlp

from flightline.server.app import App

COMMAND = [sys.executable, "-m", "flightline.server.cli"]  # works without activating the venv


def run(*args: str, server: str | None = None, check: bool = True, env: dict[str, str] | None = None) -> Any:
    command = [*COMMAND, *(["--server", server] if server else []), *args]
    environment = {**os.environ, "COLUMNS": "200", **(env or {})}
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=environment)
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def as_json(*args: str, server: str) -> Any:
    return json.loads(run(*args, "--output", "json", server=server).stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def features(rows: int) -> np.ndarray:
    return np.random.default_rng(3).normal(size=(rows, 29)).astype(np.float32)


def test_every_verb_from_workspace_to_inference_on_three_file_kinds(app: App, tmp_path: Path) -> None:
    server = app.grpc_address
    assert "workspace fraud-team (id 1)" in run("workspaces", "create", "fraud-team", server=server).stdout
    assert [w["name"] for w in as_json("workspaces", "list", server=server)] == ["fraud-team"]
    assert "fraud-team" in run("workspaces", "list", server=server).stdout  # the table form

    model = build_mlp(tmp_path / "fraud.onnx")
    uploaded = run(
        "models",
        "upload",
        str(model),
        "--name",
        "fraud",
        "--framework",
        "onnx",
        "-w",
        "fraud-team",
        server=server,
    )
    assert "model fraud (id 1) version 1: ready on runtime onnx" in uploaded.stdout
    again = run(
        "upload", str(model), "--name", "fraud", "--framework", "onnx", "--workspace-id", "1", server=server
    )
    assert "version 2: ready" in again.stdout  # the `upload` alias
    [listed] = as_json("models", "list", "-w", "1", server=server)
    assert listed["name"] == "fraud" and listed["latest_version"]["status"] == "ready"
    versions = as_json("models", "versions", "fraud", "-w", "fraud-team", server=server)
    assert [v["version"] for v in versions] == [1, 2] and {v["status"] for v in versions} == {"ready"}
    got = as_json("models", "get", "1", "--version", "1", server=server)
    assert got["version"] == 1 and got["input_schema"] == {"input": "fixed_size_list<item: float>[29]"}
    frameworks = {f["name"]: f for f in as_json("frameworks", server=server)}
    assert frameworks["onnx"]["available"] is True and "tensorflow" in frameworks

    deployed = run("deploy", "fraud", "fraud:1", "--workspace", "fraud-team", server=server)
    assert "deployment fraud: running at grpc+tcp://" in deployed.stdout
    [listed_deployment] = as_json("deployments", "list", server=server)
    assert listed_deployment["status"] == "running" and listed_deployment["steps"][0]["version"] == 1
    assert as_json("deployments", "get", "fraud", server=server)["name"] == "fraud"

    values = features(2500)
    session = ort.InferenceSession(str(model))
    expected = session.run(None, {session.get_inputs()[0].name: values})[0]
    table = pa.table({"input": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 29)})
    pq.write_table(table, tmp_path / "in.parquet")
    with ipc.new_file(tmp_path / "in.arrow", table.schema) as writer:
        writer.write_table(table, max_chunksize=1000)
    pcsv.write_csv(pa.table({"input": [json.dumps(r) for r in values.tolist()]}), tmp_path / "in.csv")
    for kind in ("parquet", "arrow", "csv"):
        out = tmp_path / f"out-{kind}.{kind}"
        done = run(
            "infer",
            "fraud",
            "--input",
            str(tmp_path / f"in.{kind}"),
            "--output",
            str(out),
            "--batch-rows",
            "1000",
            server=server,
        )
        assert f"2500 rows written to {out}" in " ".join(done.stdout.split())
        if kind == "parquet":
            result = pq.read_table(out).column("out.output").to_pylist()
        elif kind == "arrow":
            result = ipc.open_file(out).read_all().column("out.output").to_pylist()
        else:
            result = [json.loads(v) for v in pcsv.read_csv(out).column("out.output").to_pylist()]
        np.testing.assert_allclose(np.array(result, dtype=np.float32), expected, rtol=1e-5, atol=1e-6)

    pq.write_table(table.slice(0, 3), tmp_path / "three.parquet")
    shown = run("infer", "fraud", "-i", str(tmp_path / "three.parquet"), server=server).stdout
    assert "out.output" in shown and f"{expected[0][0]:.6g}" in shown  # printed as a table
    envelope = run(
        "infer", "fraud", "-i", str(tmp_path / "three.parquet"), "--envelope", server=server
    ).stdout
    assert "in.input" in envelope and "check_failures" in envelope

    assert "deployment fraud: stopped" in run("undeploy", "fraud", server=server).stdout
    assert as_json("deployments", "get", "fraud", server=server)["status"] == "stopped"


def test_registry_verbs_and_upload_from_registry(app: App, mlflow_registry: Any) -> None:
    url, logged = mlflow_registry
    server = app.grpc_address
    run("workspaces", "create", "reg-a", server=server)
    run("workspaces", "create", "reg-b", server=server)
    created = run("registries", "create", "mlflow", url, "-w", "reg-a", server=server).stdout
    registry_id = created.split("(id ")[1].split(")")[0]
    assert as_json("registries", "list", "-w", "reg-a", server=server)[0]["id"] == registry_id
    run("registries", "attach", registry_id, "-w", "reg-b", server=server)
    assert as_json("registries", "list", "-w", "reg-b", server=server)[0]["workspace_ids"] == [1, 2]
    run("registries", "detach", registry_id, "-w", "reg-b", server=server)
    assert as_json("registries", "list", "-w", "reg-b", server=server) == []
    names = sorted(m["name"] for m in as_json("registries", "models", registry_id, server=server))
    assert names == logged["names"]  # more than one page of the registry's listing
    multi = logged["multi_version_model"]
    versions = as_json("registries", "versions", registry_id, multi, server=server)
    assert sorted(v["version"] for v in versions) == ["1", "2", "3"]
    artifacts = as_json("registries", "artifacts", registry_id, multi, "2", server=server)
    pickle_path = next(a["path"] for a in artifacts if a["path"].endswith("model.pkl"))

    schema = pa.schema([pa.field("inputs", pa.list_(pa.float64(), 4))])
    schema_file = Path(app.settings.data_dir) / "schema.arrow"
    schema_file.write_bytes(schema.serialize().to_pybytes())
    done = run(
        "models",
        "upload",
        pickle_path,
        "--registry",
        registry_id,
        "--name",
        "iris",
        "--framework",
        "sklearn",
        "--input-schema",
        str(schema_file),
        "-w",
        "reg-a",
        server=server,
    )
    assert "model iris (id 1) version 1: ready on runtime onnx" in done.stdout


def test_one_line_errors_and_exit_codes(app: App, tmp_path: Path) -> None:
    server = app.grpc_address
    cases = [
        (("models", "list", "-w", "7"), 2, "error: workspace 7 does not exist"),
        (("deploy", "Bad_Name", "1", "-w", "1"), 2, "error: deployment name 'Bad_Name' is not DNS compliant"),
        (("deployments", "get", "nothing"), 2, "error: deployment 'nothing' does not exist"),
        (("infer", "x", "--input", str(tmp_path / "in.txt")), 2, "error: --input"),
        (
            ("models", "upload", "models:/m/1", "--name", "m", "--framework", "onnx", "-w", "1"),
            2,
            "error: models:/m/1: no such file (a registry path needs --registry)",
        ),
        (("workspaces", "get"), 2, "error: No such command 'get'."),
    ]
    for args, code, line in cases:
        done = run(*args, server=server, check=False)
        assert done.returncode == code, (args, done.stderr)
        assert done.stderr.startswith(line) and done.stderr.count("\n") == 1, (args, done.stderr)
        assert "Traceback" not in done.stderr
    run("workspaces", "create", "taken", server=server)
    taken = run("workspaces", "create", "taken", server=server, check=False)
    assert (taken.returncode, taken.stderr) == (2, "error: workspace 'taken' already exists\n")

    port = free_port()
    down = run("workspaces", "list", server=f"127.0.0.1:{port}", check=False)
    assert (down.returncode, down.stderr) == (1, f"error: cannot reach the server at 127.0.0.1:{port}\n")
    from_env = run("workspaces", "list", check=False, env={"FLIGHTLINE_SERVER": f"127.0.0.1:{port}"})
    assert from_env.stderr == f"error: cannot reach the server at 127.0.0.1:{port}\n"

    debug = run("--debug", "models", "list", "-w", "7", server=server, check=False)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert debug.stderr.endswith("error: workspace 7 does not exist\n")


@pytest.mark.parametrize("taken", ["gRPC", "Flight", "metrics"])
def test_serve_says_which_port_is_taken(taken: str, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = {"gRPC": "0", "Flight": "0", "metrics": "0", taken: str(port)}
        done = run(
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--grpc-port",
            ports["gRPC"],
            "--flight-port",
            ports["Flight"],
            "--metrics-port",
            ports["metrics"],
            check=False,
        )
    option = {"gRPC": "--grpc-port", "Flight": "--flight-port", "metrics": "--metrics-port"}[taken]
    assert done.returncode == 1
    assert done.stderr == (
        f"error: the {taken} port {port} on 127.0.0.1 is already in use (choose another with {option})\n"
    )
    assert not (tmp_path / "data").exists()  # nothing was started


def test_version_token_and_installed_script(tmp_path: Path) -> None:
    from flightline import __version__

    assert run("--version").stdout.strip() == __version__
    script = Path(sys.executable).parent / "flightline"  # the console script of this venv
    done = subprocess.run(
        [sys.executable, str(script), "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == __version__

    seen: list[tuple[str, str]] = []

    class Spy(grpc.ServerInterceptor):  # type: ignore[misc]
        def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
            seen.extend(details.invocation_metadata)
            return continuation(details)

    spy = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[Spy()])
    port = spy.add_insecure_port("127.0.0.1:0")
    spy.start()
    try:
        done = run(
            "workspaces", "list", server=f"127.0.0.1:{port}", check=False, env={"FLIGHTLINE_TOKEN": "t0k"}
        )
    finally:
        spy.stop(None)
    assert done.returncode == 1 and done.stderr.startswith("error: ")  # the spy serves nothing
    assert ("authorization", "Bearer t0k") in seen


def test_a_user_a_token_and_a_role_from_the_command_line(app: App) -> None:
    server = app.grpc_address
    run("workspaces", "create", "cli-team", server=server)
    created = run("users", "create", "dana", server=server).stdout
    user_id = created.split("(id ")[1].split(")")[0]
    run("members", "set", user_id, "viewer", "--workspace", "cli-team", server=server)
    done = run("tokens", "create", "--user", user_id, "--name", "laptop", "--ttl", "3600", server=server)
    token = done.stdout.strip()  # the token alone on stdout, the note on stderr
    assert token.startswith("flt.") and "shown once" in done.stderr
    me = run("whoami", server=server, env={"FLIGHTLINE_TOKEN": token}).stdout
    assert "user dana" in me and "viewer of" in me
    refused = run(
        "workspaces", "create", "nope", server=server, check=False, env={"FLIGHTLINE_TOKEN": "flt.0.bad"}
    )
    assert refused.returncode == 2 and "invalid token" in refused.stderr  # the caller's mistake
    token_id = token.split(".")[1]
    run("tokens", "revoke", token_id, server=server)
    gone = run("whoami", server=server, check=False, env={"FLIGHTLINE_TOKEN": token})
    assert gone.returncode == 2 and "token revoked" in gone.stderr
    # The lists show what was made and revoked; a member removed has no role any more.
    users = as_json("users", "list", server=server)
    assert {"name": "dana", "admin": False} in [{"name": u["name"], "admin": u["admin"]} for u in users]
    (listed,) = as_json("tokens", "list", "--user", user_id, server=server)
    assert (listed["id"], listed["name"]) == (token_id, "laptop")
    assert listed["revoke_time"] is not None and listed["expire_time"] is not None
    assert "secret" not in json.dumps(listed) and token not in json.dumps(listed)
    members = as_json("members", "list", "--workspace", "cli-team", server=server)
    assert {"user_id": int(user_id), "user_name": "dana", "role": "viewer"} in [
        {k: m[k] for k in ("user_id", "user_name", "role")} for m in members
    ]
    assert "dana" in run("members", "list", "--workspace", "cli-team", server=server).stdout  # the table
    removed = run("members", "remove", user_id, "--workspace", "cli-team", server=server).stdout
    assert removed.strip() == "user " + user_id + ": no role in workspace cli-team"
    after = as_json("members", "list", "--workspace", "cli-team", server=server)
    assert int(user_id) not in [m["user_id"] for m in after]
