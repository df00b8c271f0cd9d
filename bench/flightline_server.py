"""Everything the bench knows about a Flightline server, in one module: how to start one with chosen
Settings, how to upload and deploy through the public client, which optional features this build has
(detected from Settings fields and the protobuf descriptors, never assumed), and which processes serve.

Other helpers change the server while the bench is written, so every assumption about it lives here.
Only public parts are used: `flightline serve` (`python -m flightline.server.cli serve`), the Settings
dataclass (its fields are read from FLIGHTLINE_* variables), `flightline.server.client.Client`, the
generated messages, and /proc for what runs under the server process."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight

from bench.procs import Processes, ServerProcess, descendants, free_port
from flightline.runtimes.flight_service import HeadersFactory
from flightline.server.client import Client
from flightline.server.settings import PREFIX, Settings
from flightline.v1 import deployment_pb2, model_pb2, workspace_pb2

READY_LINE = "FLIGHTLINE_SERVING "
# Results with the out. columns only (no echo of the inputs), like the bare reference's answers.
OUTPUTS_MODE = "outputs"
# The setting that keeps native ONNX out of the front door: the path user code (pickles, Python) takes.
IN_PROCESS_SETTING = "in_process_native"
WAIT_SECONDS = 300.0  # uploads (conversion) and deploys (runtime start) on a busy 2-core machine
POLL_SECONDS = 0.1  # polling interval of Get calls while a version or deployment is still pending


class NotInThisBuild(Exception):
    """An optional server feature the cell needs is missing from this build; the message says which."""


def has_setting(name: str) -> bool:
    return name in {field.name for field in dataclasses.fields(Settings)}


# DeployRequest's optional batching message (built concurrently); read by name, so this module type-checks
# against generated code with or without it.
BATCHING_FIELD = "batching"


def batching_supported() -> bool:
    """Whether DeployRequest has the optional `batching {max_batch_rows, max_delay_ms}` message."""
    field = deployment_pb2.DeployRequest.DESCRIPTOR.fields_by_name.get(BATCHING_FIELD)
    if field is None or field.message_type is None:
        return False
    return {"max_batch_rows", "max_delay_ms"} <= set(field.message_type.fields_by_name)


@dataclass(frozen=True)
class Batching:
    max_batch_rows: int
    max_delay_ms: int


@dataclass
class FlightlineServer:
    process: ServerProcess
    grpc_address: str
    flight_location: str

    @property
    def pid(self) -> int:
        return self.process.popen.pid

    def runtime_pids(self) -> list[int]:
        """The processes below the server: its runtime servers (and any preparation step running now)."""
        return descendants(self.pid)


BENCH_TOKEN = "flt.00000000000000be.bench-admin-token-of-a-throwaway-server"


def flight_middleware() -> list[flight.ClientMiddlewareFactory]:
    """Sends the bench's token on every Flight call (bare Flight servers ignore it)."""
    token = os.environ.get("FLIGHTLINE_TOKEN")
    return [HeadersFactory({"authorization": f"Bearer {token}"})] if token else []


def start_server(
    processes: Processes, data_dir: Path, name: str = "flightline", **settings: object
) -> FlightlineServer:
    """`flightline serve` on loopback ports, with `settings` (Settings field -> value) passed as the
    FLIGHTLINE_* variables Settings reads. A field this build's Settings lacks is refused here, so a
    renamed setting cannot silently measure the default instead."""
    # The server's admin gets this token at its first start; every bench client sends it.
    env: dict[str, str] = {PREFIX + "BOOTSTRAP_TOKEN": BENCH_TOKEN}
    os.environ["FLIGHTLINE_TOKEN"] = BENCH_TOKEN  # Client, and the Flight clients (flight_headers)
    for field, value in settings.items():
        if not has_setting(field):
            raise NotInThisBuild(f"Settings has no field {field!r} in this build")
        env[PREFIX + field.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    argv = [
        sys.executable,  # not the `flightline` script: its shebang may name another interpreter
        "-m",
        "flightline.server.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(free_port()),
        "--flight-port",
        str(free_port()),
        "--metrics-port",  # any free port: two benches (or a server) on one machine must not collide
        "0",
    ]
    process = processes.start(name, argv, env=env)
    line = process.wait_for_line(READY_LINE, timeout=120)
    fields = dict(part.split("=", 1) for part in line.removeprefix(READY_LINE).split())
    return FlightlineServer(process, fields["grpc"], fields["flight"])


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS, KiB); 0 when it is gone or is a kernel thread."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Deployer:
    """The control-plane calls the bench makes, through the public client. Works whether uploads and
    deploys answer when done (today) or at once with a pending state (then it polls Get until done)."""

    def __init__(self, address: str) -> None:
        self.client = Client(address)
        workspace = self.client.workspaces.CreateWorkspace(
            workspace_pb2.CreateWorkspaceRequest(name=f"bench-{os.getpid()}"), timeout=60
        )
        self.workspace_id: int = workspace.id

    def upload(
        self,
        path: Path,
        name: str,
        framework: str,
        *,
        input_schema: pa.Schema | None = None,
        output_schema: pa.Schema | None = None,
    ) -> model_pb2.ModelVersion:
        """Uploads a file and returns its version once READY; raises with the reason otherwise."""
        conversion = model_pb2.Conversion(
            framework=framework,
            input_schema=input_schema.serialize().to_pybytes() if input_schema is not None else b"",
            output_schema=output_schema.serialize().to_pybytes() if output_schema is not None else b"",
        )
        metadata = model_pb2.UploadMetadata(name=name, workspace_id=self.workspace_id, conversion=conversion)
        version = self.client.upload_file(path, metadata, timeout=WAIT_SECONDS).version
        deadline = time.monotonic() + WAIT_SECONDS
        while _status_name(model_pb2.ModelStatus, version.status) not in ("READY", "ERROR"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {name} not ready after {WAIT_SECONDS:.0f} s")
            time.sleep(POLL_SECONDS)
            version = self.client.models.GetModelVersion(
                model_pb2.GetModelVersionRequest(model_id=version.model_id, version=version.version),
                timeout=60,
            )
        if _status_name(model_pb2.ModelStatus, version.status) != "READY":
            raise RuntimeError(f"model {name} upload not ready: {version.status_reason}")
        return version

    def deploy(self, name: str, model_id: int, batching: Batching | None = None) -> deployment_pb2.Deployment:
        """Deploys one model (its latest version) and returns the deployment once RUNNING."""
        request = deployment_pb2.DeployRequest(
            workspace_id=self.workspace_id, name=name, steps=[deployment_pb2.StepSpec(model_id=model_id)]
        )
        if batching is not None:
            if not batching_supported():
                raise NotInThisBuild("DeployRequest has no batching field in this build")
            message = getattr(request, BATCHING_FIELD)
            message.max_batch_rows = batching.max_batch_rows
            message.max_delay_ms = batching.max_delay_ms
        deployment: deployment_pb2.Deployment = self.client.deployments.Deploy(request, timeout=WAIT_SECONDS)
        deadline = time.monotonic() + WAIT_SECONDS
        while _status_name(deployment_pb2.DeploymentStatus, deployment.status) == "DEPLOYING":
            if time.monotonic() > deadline:
                raise TimeoutError(f"deployment {name} not running after {WAIT_SECONDS:.0f} s")
            time.sleep(POLL_SECONDS)
            deployment = self.client.deployments.GetDeployment(
                deployment_pb2.GetDeploymentRequest(name=name), timeout=60
            )
        if _status_name(deployment_pb2.DeploymentStatus, deployment.status) != "RUNNING":
            raise RuntimeError(f"deployment {name} failed: {deployment.status_reason}")
        return deployment

    def close(self) -> None:
        self.client.close()


def _status_name(enum: object, value: int) -> str:
    """`MODEL_STATUS_READY` -> `READY`: compared by name, so renumbered enums keep working."""
    full: str = enum.Name(value)  # type: ignore[attr-defined]
    return full.split("_STATUS_", 1)[-1]


def input_schema_of(deployment: deployment_pb2.Deployment) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(deployment.input_schema))
