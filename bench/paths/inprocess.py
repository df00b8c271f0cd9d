"""In-process `InferenceSession.run` on a numpy array: the compute limit every other path is held to."""

from __future__ import annotations

import onnxruntime as ort

from bench.context import RunContext
from bench.measure import Call, Cell, Check, measure_sizes
from bench.models import BenchModel

NAME = "in-process"


def run(model: BenchModel, ctx: RunContext) -> list[Cell]:
    session = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    primary = names.index(model.primary_output)

    def prepare(rows: int) -> tuple[Call, Check]:
        feed = {model.input_name: model.inputs(rows)}

        def check(result: object) -> None:
            assert isinstance(result, list)
            ctx.check_close(model, rows, result[primary])

        return lambda: session.run(names, feed), check

    return measure_sizes(model.key, NAME, ctx.sizes, ctx.budget, prepare)
