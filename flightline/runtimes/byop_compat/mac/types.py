"""`InferenceData`: what `Inference._predict` takes and returns, a dict of numpy arrays by column."""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

InferenceData: TypeAlias = dict[str, npt.NDArray[np.generic]]
