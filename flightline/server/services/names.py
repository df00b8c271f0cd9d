"""Names that become Flight descriptors and (later) Kubernetes objects must be DNS labels."""

from __future__ import annotations

import re

import pyarrow as pa

from flightline.server.errors import InvalidArgument

# fullmatch, not match with "$": "$" also matches before a trailing newline ("model\n" would pass).
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def check_dns_name(kind: str, name: str) -> str:
    if not _DNS_LABEL.fullmatch(name):
        raise InvalidArgument(
            f"{kind} name {name!r} is not DNS compliant: use 1-63 lower-case letters, digits or '-', "
            "starting and ending with a letter or digit ('.' and '_' are not allowed)"
        )
    return name


def parse_schema(field: str, data: bytes) -> pa.Schema | None:
    """Reads an Arrow IPC-serialized schema; b"" means none was given."""
    if not data:
        return None
    try:
        return pa.ipc.read_schema(pa.py_buffer(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidArgument(
            f"{field} is not an Arrow IPC-serialized schema (pyarrow: schema.serialize()): {exc}"
        ) from exc
