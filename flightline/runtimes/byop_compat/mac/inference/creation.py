"""`InferenceBuilder`: builds one concrete Inference and assigns its model."""

from __future__ import annotations

import abc

from ..config.inference import CustomInferenceConfig
from . import Inference


class InferenceBuilder(abc.ABC):
    """`inference` returns a new instance of the Inference subclass; `create(config)` builds it, loads
    the model from `config.model_path` and assigns it (`inference.model = ...`)."""

    @property
    @abc.abstractmethod
    def inference(self) -> Inference:
        """A new, model-less instance of the concrete Inference."""

    @abc.abstractmethod
    def create(self, config: CustomInferenceConfig) -> Inference:
        """The Inference with its model loaded from `config.model_path` and assigned."""
