"""Runs the benchmark: `python -m bench [--quick] [--paths front,direct,...] [--models A,B]`.

Every path serves the same models; each (model, path, batch size) cell is timed on one long-lived
connection. Prints one table and the issue's target checks, and writes bench/results/bench.{md,csv}."""

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
from bench.paths import bare_flight, flightline, inprocess, json_http, mlflow_serve, mlserver
from bench.procs import Processes, signals_as_interrupt
from bench.report import Table, target_checks

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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short cells (about 0.5 s each) for a smoke run")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from: {','.join(PATHS)}")
    parser.add_argument("--models", default="A,B", help="comma-separated, from: A,B")
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="rows per request, comma-separated"
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS_DIR, help="folder for bench.md, bench.csv, logs"
    )
    args = parser.parse_args(argv)
    args.paths = [key.strip() for key in args.paths.split(",") if key.strip()]
    unknown = [key for key in args.paths if key not in PATHS]
    if unknown:
        parser.error(f"unknown path(s) {unknown}; choose from {list(PATHS)}")
    args.models = [key.strip().upper() for key in args.models.split(",") if key.strip()]
    if not set(args.models) <= {"A", "B"}:
        parser.error(f"unknown model(s) {args.models}; choose from A,B")
    args.sizes = sorted({int(size) for size in args.sizes.split(",")})
    return args


def failed(model: BenchModel, path: str, sizes: list[int], error: BaseException) -> list[Cell]:
    traceback.print_exception(error)
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return [Cell.skipped(model.key, path, rows, f"failed: {reason[:120]}") for rows in sizes]


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


def run_flightline(models: list[BenchModel], keys: list[str], ctx: RunContext) -> list[Cell]:
    selected = {PATHS[key][0] for key in keys if PATHS[key][1] is None}
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
            ctx = RunContext(processes, budget, args.sizes, work_dir)
            cells = run_paths(models, args.paths, ctx)
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, no results written", file=sys.stderr)
        return 130
    finally:
        restore_signals()

    order = {name: index for index, (name, _) in enumerate(PATHS.values())}
    cells.sort(key=lambda cell: (cell.model, order[cell.path], cell.rows))
    table = Table.of(cells, load_at_start)
    checks = target_checks(table, args.sizes)
    print(f"\n{table.date} | {table.machine}\n")
    print(table.console())
    print()
    for check in checks:
        print(check.line())
    args.results.mkdir(parents=True, exist_ok=True)
    descriptions = {model.key: model.description for model in models}
    (args.results / "bench.md").write_text(table.markdown(descriptions, checks))
    table.write_csv(args.results / "bench.csv")
    print(f"\nwritten: {args.results / 'bench.md'}, {args.results / 'bench.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
