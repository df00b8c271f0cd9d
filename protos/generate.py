"""Generates the Python bindings in flightline/v1 from the .proto files in protos/flightline/v1.

python protos/generate.py          # regenerate
python protos/generate.py --check  # exit 1 if the committed bindings drift from the protos
"""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent  # protoc include root: protos/flightline/v1/*.proto
REPO = ROOT.parent
PROTOS = ROOT / "flightline" / "v1"
PACKAGE = REPO / "flightline" / "v1"  # where the bindings live, importable as flightline.v1
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT)) for p in PROTOS.glob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.endswith(GENERATED)}


def main() -> int:
    if "--check" not in sys.argv:
        generate(REPO)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "flightline" / "v1"
        names = generated_files(fresh) | generated_files(PACKAGE)
        drift = sorted(
            n
            for n in names
            if not (PACKAGE / n).exists()
            or not (fresh / n).exists()
            or not filecmp.cmp(PACKAGE / n, fresh / n, shallow=False)
        )
    if drift:
        print("generated code drifts from protos/; run `python protos/generate.py`:", *drift, sep="\n  ")
        return 1
    print("generated code matches protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
