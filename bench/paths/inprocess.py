"""In-process `InferenceSession.run` on a numpy array: the compute limit every other path is held to."""

from __future__ import annotations

from bench.context import RunContext
from bench.measure import Call, Cell, Check, best_of, measure_sizes
from bench.models import BenchModel
from bench.ort_options import THREAD_VARIANTS, session

NAME = "in-process"


def run(model: BenchModel, ctx: RunContext) -> list[Cell]:
    return best_of(
        NAME, {label: run_variant(model, ctx, label, threads) for label, threads in THREAD_VARIANTS.items()}
    )


def run_variant(model: BenchModel, ctx: RunContext, label: str, threads: int) -> list[Cell]:
    inference = session(str(model.onnx_path), threads)
    names = [output.name for output in inference.get_outputs()]
    primary = names.index(model.primary_output)

    def prepare(rows: int) -> tuple[Call, Check]:
        feed = {model.input_name: model.inputs(rows)}

        def check(result: object) -> None:
            assert isinstance(result, list)
            ctx.check_close(model, rows, result[primary])

        return lambda: inference.run(names, feed), check

    return measure_sizes(model.key, f"{NAME} ({label})", ctx.sizes, ctx.budget, prepare)
