"""Workspace roles, in order: each includes the rights of those below it."""

from __future__ import annotations

from enum import IntEnum


class Role(IntEnum):
    VIEWER = 1  # read the workspace's resources, infer on its deployments
    EDITOR = 2  # upload models, deploy and undeploy
    ADMIN = 3  # members and registries

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"role must be one of viewer, editor, admin, got {name!r}") from None
