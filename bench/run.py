"""Runs the benchmark: `python -m bench [--quick] [--paths front,direct,...] [--models A,B]
[--compare OLD.csv]`.

Every path serves the same models; each (model, path, batch size) cell is timed on one long-lived
connection. The serving cells (concurrent, batching, memory) drive many clients from several client
processes or measure memory. Prints one table and the issues' target checks, and writes
bench/results/bench.{md,csv}."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py` as well as `python -m bench`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.context import RunContext
from bench.measure import Budget, Cell
from bench.models import BenchModel, build_models
from bench.paths import (
    bare_flight,
    families,
    flightline,
    hf,
    inprocess,
    json_http,
    mlflow_serve,
    mlserver,
    rollout,
    serving,
)
from bench.procs import Processes, signals_as_interrupt
from bench.report import Table, comparison, target_checks

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SIZES = [1, 1_000, 10_000, 100_000]

Runner = Callable[[BenchModel, RunContext], list[Cell]]
# Selection key -> (table name, runner); Flightline's two paths share one server and run together.
PATHS: dict[str, tuple[str, Runner | None]] = {
    "inproc": (inprocess.NAME, inprocess.run),
    "bare": (bare_flight.NAME, bare_flight.run),
    "front": (flightline.FRONT_DOOR, None),
    "envelope": (flightline.FRONT_DOOR_ENVELOPE, None),
    "direct": (flightline.DIRECT, None),
    "json": (json_http.NAME, json_http.run),
    "mlserver": (mlserver.NAME, mlserver.run),
    "mlflow": (mlflow_serve.NAME, mlflow_serve.run),
}
SKLEARN_ONLY = {"mlserver", "mlflow"}
# Cells of many clients or many deployments, each on its own server: key -> (what, runner).
ServingRunner = Callable[[list[BenchModel], RunContext], list[Cell]]
SERVING: dict[str, tuple[str, ServingRunner]] = {
    "concurrent": ("64 concurrent 1-row clients, ONNX in and out of process", serving.run_concurrent),
    "batching": ("adaptive batching, Python step, 32 concurrent 1-row clients", serving.run_batching),
    "memory": ("resident memory of 20 (--quick: 5) sklearn-pickle deployments", serving.run_memory),
    "rollout": ("a client streaming through updates against steady state", rollout.run_rollout),
    "families": ("TensorFlow, Keras and TorchScript against the framework in-process", families.run_cells),
    "hf": ("Hugging Face text-classification, in-process vs service, batching, 1 and 32 clients", hf.run),
}
KEYS = [*PATHS, *SERVING]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short cells (about 0.5 s each) for a smoke run")
    parser.add_argument("--paths", default=",".join(KEYS), help=f"comma-separated, from: {','.join(KEYS)}")
    parser.add_argument("--models", default="A,B", help="comma-separated, from: A,B")
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="rows per request, comma-separated"
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS_DIR, help="folder for bench.md, bench.csv, logs"
    )
    parser.add_argument(
        "--compare",
        "--baseline",
        type=Path,
        metavar="OLD.csv",
        help="an earlier run's bench.csv: prints every cell's ratio to it, the large-batch regression "
        "check and both memory figures (read before this run overwrites the results)",
    )
    parser.add_argument(
        "--client-procs", type=int, default=4, help="client processes the concurrent cells' clients run in"
    )
    parser.add_argument(
        "--memory-models", type=int, help="deployments of the memory cell (default 20, 5 with --quick)"
    )
    args = parser.parse_args(argv)
    if args.memory_models is None:
        args.memory_models = 5 if args.quick else 20
    args.paths = [key.strip() for key in args.paths.split(",") if key.strip()]
    unknown = [key for key in args.paths if key not in KEYS]
    if unknown:
        parser.error(f"unknown path(s) {unknown}; choose from {KEYS}")
    if args.compare is not None and not args.compare.is_file():
        parser.error(f"--compare: no file {args.compare}")
    args.models = [key.strip().upper() for key in args.models.split(",") if key.strip()]
    if not set(args.models) <= {"A", "B"}:
        parser.error(f"unknown model(s) {args.models}; choose from A,B")
    args.sizes = sorted({int(size) for size in args.sizes.split(",")})
    return args


def failed(model: BenchModel | None, path: str, sizes: list[int], error: BaseException) -> list[Cell]:
    traceback.print_exception(error)
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    key = model.key if model is not None else "-"
    return [Cell.skipped(key, path, rows, f"failed: {reason[:120]}") for rows in sizes]


def run_paths(models: list[BenchModel], keys: list[str], ctx: RunContext) -> list[Cell]:
    cells: list[Cell] = []
    flightline_done = False
    for key in (key for key in PATHS if key in keys):
        name, runner = PATHS[key]
        if runner is None:  # Flightline: both of its paths on one server, measured once
            if not flightline_done:
                cells += run_flightline(models, keys, ctx)
                flightline_done = True
            continue
        for model in models:
            if key in SKLEARN_ONLY and model.sklearn_pickle is None:
                continue
            print(f"== model {model.key}, {name}", flush=True)
            try:
                cells += runner(model, ctx)
            except Exception as error:
                cells += failed(model, name, ctx.sizes, error)
    return cells


def run_serving(models: list[BenchModel], keys: list[str], ctx: RunContext) -> list[Cell]:
    cells: list[Cell] = []
    for key in (key for key in SERVING if key in keys):
        what, runner = SERVING[key]
        try:
            cells += runner(models, ctx)
        except Exception as error:
            cells += failed(models[0] if models else None, key, [1], error)
            print(f"  {key} ({what}) failed", flush=True)
    return cells


def run_flightline(models: list[BenchModel], keys: list[str], ctx: RunContext) -> list[Cell]:
    selected = {PATHS[key][0] for key in keys if key in PATHS and PATHS[key][1] is None}
    if not selected:
        return []
    print(f"== Flightline: {', '.join(sorted(selected))}", flush=True)
    try:
        return flightline.run_models(models, ctx, selected)
    except Exception as error:
        return [
            cell
            for model in models
            for path in sorted(selected)
            for cell in failed(model, path, ctx.sizes, error)
        ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(cell_seconds=0.5, warmup_seconds=0.1, max_cell_seconds=8.0) if args.quick else Budget()
    baseline = Table.read_csv(args.compare) if args.compare is not None else None
    load_at_start = os.getloadavg()[0]
    if load_at_start > 0.5:
        print(f"note: load average {load_at_start:.2f}; other work on this machine will skew the results")
    restore_signals = signals_as_interrupt()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="flightline-bench-") as work,
            Processes(args.results / "logs") as processes,
        ):
            work_dir = Path(work)
            print("building models", flush=True)
            models = build_models(work_dir / "models", "".join(args.models))
            ctx = RunContext(processes, budget, args.sizes, work_dir, args.client_procs, args.memory_models)
            cells = run_paths(models, args.paths, ctx)
            serving_cells = run_serving(models, args.paths, ctx)
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, no results written", file=sys.stderr)
        return 130
    finally:
        restore_signals()

    order = {name: index for index, (name, _) in enumerate(PATHS.values())}
    cells.sort(key=lambda cell: (cell.model, order[cell.path], cell.rows))
    table = Table.of(cells + serving_cells, load_at_start)
    checks = target_checks(table, args.sizes, baseline)
    print(f"\n{table.date} | {table.machine}\n")
    print(table.console())
    compared = comparison(table, baseline) if baseline is not None else None
    if baseline is not None and compared is not None:
        print(f"\nagainst {args.compare} ({baseline.date} | {baseline.machine}):\n")
        print("\n".join(compared))
    print()
    for check in checks:
        print(check.line())
    args.results.mkdir(parents=True, exist_ok=True)
    descriptions = {model.key: model.description for model in models}
    (args.results / "bench.md").write_text(table.markdown(descriptions, checks, compared))
    table.write_csv(args.results / "bench.csv")
    print(f"\nwritten: {args.results / 'bench.md'}, {args.results / 'bench.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
