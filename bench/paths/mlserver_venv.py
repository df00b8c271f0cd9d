"""MLServer's own virtual environment, created on first use from bench/requirements-mlserver.txt."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REQUIREMENTS = BENCH_DIR / "requirements-mlserver.txt"
DEFAULT_VENV = BENCH_DIR / ".venv-mlserver"


def ensure_venv(venv: Path = DEFAULT_VENV) -> Path:
    """Returns the venv's python, (re)installing when the requirements file changed since the last install."""
    python = venv / "bin" / "python"
    marker = venv / ".requirements.sha256"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"creating MLServer environment in {venv} (first run only, a few minutes)", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
        check=True,
    )
    marker.write_text(wanted)
    return python
