"""A front door in its own process, so a test can watch its memory: serves the ONNX model given as
argv[1] in process (LocalStep) as deployment "mlp" and prints `PORT <n>` once listening."""

from __future__ import annotations

import sys
from pathlib import Path

from flightline.runtimes import load_runtime
from flightline.runtimes.base import ModelSpec
from flightline.runtimes.host import Host
from flightline.server.dataplane.frontdoor import FrontDoor
from flightline.server.dataplane.routes import LocalStep, Route, Router


def main() -> None:
    router = Router()
    router.put(Route.of("mlp", [LocalStep(Host(load_runtime("onnx", ModelSpec(Path(sys.argv[1]), "onnx"))))]))
    server = FrontDoor(router)
    print(f"PORT {server.port}", flush=True)
    server.serve()


if __name__ == "__main__":
    main()
