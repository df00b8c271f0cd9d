"""The errors of the `mac` API."""

from __future__ import annotations


class InferenceDataValidationError(Exception):
    """The input data does not match what the Inference expects (`mac.types.InferenceData`); raised by
    a model's `_predict`, reported to the client as a failed model call."""


class ModelNotAssignedError(Exception):
    """`predict` was called on an Inference whose `model` was never assigned."""
