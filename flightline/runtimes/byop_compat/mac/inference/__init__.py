"""`Inference`: serves inferences of one model assigned to it."""

from __future__ import annotations

import abc
from typing import Any

from ..exceptions import ModelNotAssignedError
from ..types import InferenceData


class Inference(abc.ABC):
    """Subclasses name the model types they accept (`expected_model_types`) and implement `_predict`
    on a dict of numpy arrays. Assigning `model` checks its type against `expected_model_types`;
    `predict` refuses to run before a model is assigned."""

    def __init__(self) -> None:
        self._model: Any = None

    @property
    @abc.abstractmethod
    def expected_model_types(self) -> set[Any]:
        """The types `model` may have (typically one)."""

    @property
    def model(self) -> Any:
        return self._model

    @model.setter
    def model(self, model: Any) -> None:
        self.raise_error_if_model_is_wrong_type(model)
        self._model = model

    def predict(self, input_data: InferenceData) -> InferenceData:
        self.raise_error_if_model_is_not_assigned()
        return self._predict(input_data)

    @abc.abstractmethod
    def _predict(self, input_data: InferenceData) -> InferenceData:
        """The model's outputs for `input_data`, one array per output column, one row per input row.
        Raises InferenceDataValidationError when the input does not fit."""

    def raise_error_if_model_is_not_assigned(self) -> None:
        if self.model is None:
            raise ModelNotAssignedError(f"no model is assigned to the {type(self).__name__} inference")

    def raise_error_if_model_is_wrong_type(self, model: Any) -> None:
        expected = self.expected_model_types
        if not any(isinstance(model, kind) for kind in expected):
            names = sorted(getattr(kind, "__name__", str(kind)) for kind in expected)
            raise TypeError(
                f"the model is a {type(model).__name__}; {type(self).__name__}.expected_model_types "
                f"is {names}"
            )

    # The guide's class diagram marks both checks private ("-"): code written for it calls them so.
    _raise_error_if_model_is_not_assigned = raise_error_if_model_is_not_assigned
    _raise_error_if_model_is_wrong_type = raise_error_if_model_is_wrong_type
