"""What every path gets: the servers, the budget, the sizes, and reference outputs to check against."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.measure import Budget
from bench.models import BenchModel
from bench.procs import Processes


@dataclass
class RunContext:
    processes: Processes
    budget: Budget
    sizes: list[int]
    work_dir: Path
    client_processes: int = 4  # client processes of the concurrent cells
    memory_models: int = 20  # deployments of the memory cell
    _sessions: dict[str, ort.InferenceSession] = field(default_factory=dict)
    _expected: dict[tuple[str, int], dict[str, np.ndarray]] = field(default_factory=dict)

    def expected(self, model: BenchModel, rows: int) -> dict[str, np.ndarray]:
        """The model's outputs on its first `rows` input rows, computed in-process."""
        key = (model.key, rows)
        if key not in self._expected:
            session = self._sessions.get(model.key)
            if session is None:
                session = self._sessions[model.key] = ort.InferenceSession(
                    str(model.onnx_path), providers=["CPUExecutionProvider"]
                )
            names = [output.name for output in session.get_outputs()]
            values = session.run(names, {model.input_name: model.inputs(rows)})
            self._expected[key] = dict(zip(names, (np.asarray(v) for v in values), strict=True))
        return self._expected[key]

    def check_close(self, model: BenchModel, rows: int, actual: np.ndarray) -> None:
        expected = self.expected(model, rows)[model.primary_output]
        np.testing.assert_allclose(actual.reshape(expected.shape), expected, rtol=1e-4, atol=1e-5)

    def check_labels(self, model: BenchModel, rows: int, actual: np.ndarray) -> None:
        """sklearn computes in float64 and ONNX in float32: labels may differ on a rare borderline row."""
        expected = self.expected(model, rows)["label"]
        agreement = float(np.mean(actual.reshape(-1) == expected))
        if agreement < 0.99:
            raise AssertionError(f"only {agreement:.1%} of labels agree with the ONNX model's")
