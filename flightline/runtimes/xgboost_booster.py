"""Runs XGBoost booster files (`model.ubj`, `model.json`, the deprecated binary `model.xgb`/`.bin`, as the
MLflow xgboost flavor writes them) natively: the fallback when the ONNX conversion (onnxmltools, in
`convert.py`) is not possible or not verified. A booster file is data (no pickle), loaded by XGBoost
itself.

A file saved from XGBoost's scikit-learn wrapper records which one (`scikit_learn` attribute); it is
loaded into that wrapper, so it keeps `predict` (labels) and `predict_proba`. A bare Booster is loaded
into the wrapper its objective implies (`binary:`/`multi:` a classifier, else a regressor). Inputs and
outputs then follow the sklearn runtime (`sklearn.py`): one `inputs` list column or one column per
feature, outputs `output` and `probabilities`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

from flightline.runtimes.base import ModelLoadError, ModelSpec
from flightline.runtimes.sklearn import SklearnRuntime

BOOSTER_SUFFIXES = (".ubj", ".json", ".xgb", ".bin", ".model")
RUNTIME = "xgboost"
MODULE = "xgboost"  # the library's module: its estimators' classes live under it


def is_booster_file(artifact: Path) -> bool:
    return artifact.suffix in BOOSTER_SUFFIXES


def load_booster(artifact: Path) -> Any:
    """The booster in `artifact` inside XGBoost's scikit-learn wrapper; ModelLoadError when XGBoost
    cannot read it."""
    import xgboost

    if not artifact.is_file():
        raise ModelLoadError(f"model file {artifact} does not exist")
    try:
        booster = xgboost.Booster(model_file=str(artifact))
    except xgboost.core.XGBoostError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise ModelLoadError(f"not a loadable XGBoost booster file: {first[:300]}") from exc
    wrapper = _wrapper_class(booster)
    model = wrapper()
    model.load_model(str(artifact))
    return model


def _wrapper_class(booster: Any) -> Any:
    import xgboost

    kind = ""
    saved = booster.attr("scikit_learn")
    if saved:
        try:
            kind = str(json.loads(saved).get("_estimator_type", ""))
        except ValueError:
            kind = ""
    if not kind:
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        kind = "classifier" if objective.startswith(("binary:", "multi:")) else "regressor"
    return xgboost.XGBClassifier if kind == "classifier" else xgboost.XGBRegressor


def without_feature_names(estimator: Any) -> Any:
    """A copy whose XGBoost booster has no feature names: onnxmltools reads only f0, f1, ... (a model fitted
    on a DataFrame records the column names). The original keeps them for verification and serving."""
    final = estimator
    while hasattr(final, "steps"):
        final = final.steps[-1][1]
    if not type(final).__module__.startswith(MODULE) or getattr(final, "feature_names_in_", None) is None:
        return estimator
    import copy

    converted = copy.deepcopy(estimator)
    inner = converted
    while hasattr(inner, "steps"):
        inner = inner.steps[-1][1]
    inner.get_booster().feature_names = None
    return converted


class XGBoostRuntime(SklearnRuntime):
    name = RUNTIME

    @classmethod
    def load(cls, spec: ModelSpec) -> Self:
        return cls.from_estimator(load_booster(spec.artifact), spec)
