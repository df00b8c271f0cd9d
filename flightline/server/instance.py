"""Server roles and the instance id: who owns the work a server process starts."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Final

ROLES: Final = ("all", "control", "frontdoor")
ID_FILE: Final = "instance-id"
_VALID_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def instance_id(configured: str, data_dir: Path) -> str:
    """The configured id, else the one kept in `data_dir/instance-id` (written on first start)."""
    path = data_dir / ID_FILE
    if not configured and path.exists():
        configured = path.read_text().strip()
    elif not configured:
        configured = uuid.uuid4().hex
        tmp = path.with_suffix(".tmp")
        tmp.write_text(configured + "\n")
        tmp.replace(path)  # atomic: a crash never leaves half an id
    if not _VALID_ID.fullmatch(configured):
        raise ValueError(
            f"instance id {configured!r}: 1 to 64 letters, digits, '.', '_' or '-', starting with one of "
            "the first two"
        )
    return configured
