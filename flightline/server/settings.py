"""One typed settings object, read from FLIGHTLINE_* environment variables; CLI flags override it."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

PREFIX = "FLIGHTLINE_"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".flightline")
    # Empty means embedded defaults under data_dir: SQLite metadata, a local artifact folder.
    database_url: str = ""
    artifacts_url: str = ""
    host: str = "127.0.0.1"
    grpc_port: int = 50051  # 0 picks a free port
    flight_port: int = 8815  # 0 picks a free port
    # Native runtimes (onnx, python) also run inside the front door: one network hop instead of two.
    in_process_native: bool = True
    registry_timeout: float = 30.0
    # How the front door reaches runtime servers: "unix" sockets (faster, one host) or "tcp" loopback.
    runtime_transport: str = "unix"

    @property
    def metadata_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'flightline.db').resolve()}"

    @property
    def artifact_url(self) -> str:
        return self.artifacts_url or str((self.data_dir / "artifacts").resolve())

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ) if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.type, raw)
        return replace(cls(**values), **{k: v for k, v in overrides.items() if v is not None})


def _parse(kind: object, raw: str) -> Any:
    if kind in ("bool", bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind in ("int", int):
        return int(raw)
    if kind in ("float", float):
        return float(raw)
    if kind in ("Path", Path):
        return Path(raw)
    return raw
