"""`CustomInferenceConfig`: what `InferenceBuilder.create` receives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CustomInferenceConfig:
    """`model_path` is the folder the uploaded zip was unpacked into (read-only); every artifact the
    builder loads is relative to it, e.g. `config.model_path / "kmeans.pkl"`."""

    model_path: Path
    framework: str = "custom"
