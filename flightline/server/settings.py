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
    # Registry HTTP timeouts (seconds; httpx's four parts), each also cut to the calling RPC's deadline.
    # read: the longest silence allowed between bytes of an answer; a DBFS chunk (1 MiB) or a listing of a
    #   busy registry takes seconds, so 30 s only ends a registry that has stopped answering.
    # connect: a reachable host connects in milliseconds; 5 s tells "down or firewalled" quickly.
    # write: requests are small GETs, so sending one never legitimately takes long.
    # pool: each call has its own client, so waiting for a pooled connection would mean a bug.
    registry_timeout: float = 30.0
    # How long a runtime that cannot start for a fault (port taken, crash) is retried before its deployment
    # FAILS; and how long SIGTERM waits for Flight clients' open streams before the process exits anyway.
    runtime_retry_seconds: float = 60.0
    shutdown_grace: float = 5.0
    registry_connect_timeout: float = 5.0
    registry_write_timeout: float = 10.0
    registry_pool_timeout: float = 5.0
    # gRPC worker threads, and how many of them slow, remote-bound calls (registry listings and downloads,
    # uploads) may hold at once. The difference (24) is kept for health checks, reads and writes, which
    # therefore never queue behind slow work; a slow call beyond the lane is refused with a retry hint.
    grpc_workers: int = 32
    slow_lane: int = 8
    # Model preparations (conversions) and deployment starts run at most this many at a time each:
    # both are CPU- or memory-heavy child processes, and 2 keeps a small machine responsive.
    prepare_workers: int = 2
    deploy_workers: int = 2
    metrics_port: int = 9464  # Prometheus /metrics; 0 picks a free port, -1 turns it off
    log_format: str = "text"  # or "json": one JSON object per line (used by `flightline serve`)
    # What this process runs: "all" (control plane, front door and runtimes), "control" (gRPC; owns the
    # runtime processes of the deployments it starts) or "frontdoor" (Flight only; learns the routes of
    # RUNNING deployments from the metadata store, so several can serve the same deployments).
    role: str = "all"
    # Who owns the work this process starts (preparations, deployments' runtimes); "" reads it from
    # data_dir/instance-id, created once, so a restarted instance is the same owner. Two processes must
    # not share an id (nor, therefore, a data_dir) unless they are one instance.
    instance_id: str = ""
    # How often a front door of role "frontdoor" checks the metadata store for changed routes (seconds).
    route_poll_seconds: float = 1.0
    # The front door that clients of a role "control" server are told to use (Deployment.flight_location).
    public_flight_location: str = ""
    # How the front door reaches runtime servers: "unix" sockets (faster, one host) or "tcp" loopback.
    runtime_transport: str = "unix"
    # The environment cache (hosting/environments.py); "" is its default: /var/cache/flightline/envs as
    # root, else ~/.cache/flightline/envs. Shared with `flightline runtimes install --envs-dir`.
    envs_dir: str = ""
    # -- access control (flightline/server/access/, README "Access control")
    # The platform admin's first token, created at the first start when no user exists yet; "" makes a
    # fresh one. Either way it is written to data_dir/admin-token, readable by the server's user only.
    bootstrap_token: str = ""
    # Keys that encrypt registry tokens (and runtime servers' secrets) at rest, comma-separated, newest
    # first; "" keeps one in data_dir/secret-key (created owner-only). Servers sharing a database must
    # share it. `flightline keys rotate` re-encrypts with a new key.
    secret_key: str = ""
    # TLS for gRPC and Flight: PEM files of the server's certificate chain and key; with tls_client_ca,
    # clients must present a certificate signed by that CA (mTLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Per caller (user), at once: uploads in flight, and streams (gRPC Watch streams, Flight exchanges).
    # Past them: RESOURCE_EXHAUSTED (gRPC), UNAVAILABLE with the reason (Flight). And the largest gRPC
    # request message for anyone (bytes; uploads come in chunks far below it).
    caller_max_uploads: int = 4
    caller_max_streams: int = 64
    max_request_bytes: int = 64 * 1024 * 1024
    # How long a verified token is remembered (a revocation elsewhere applies within this).
    token_cache_seconds: float = 1.0

    @property
    def tls(self) -> bool:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        return bool(self.tls_cert)

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
