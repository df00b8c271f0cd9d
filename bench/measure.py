"""The timing loop every path shares: warm up, then time requests bounded by count and seconds.

Depends on the standard library and numpy only, because the MLServer client runs it inside
MLServer's own virtual environment."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Budget:
    """How long one cell (a path, a model, a batch size) may run."""

    cell_seconds: float = 2.0  # timed requests stop after this, once min_requests are done
    warmup_seconds: float = 0.3
    min_requests: int = 3
    max_cell_seconds: float = 20.0  # a cell projected to need longer than this is skipped

    def max_requests(self, rows: int) -> int:
        # Enough samples for a p99 on small requests, few on large ones.
        return 3000 if rows <= 1 else 1000 if rows <= 1_000 else 300 if rows <= 10_000 else 60

    def max_warmup_requests(self, rows: int) -> int:
        return 200 if rows <= 1_000 else 3


class SkipCell(Exception):
    """Raised by a path's `prepare` when it cannot serve a batch size; the message says why."""


@dataclass(frozen=True)
class Cell:
    """One measured (or skipped) row of the table."""

    model: str
    path: str
    rows: int
    requests: int
    rows_per_s: float | None  # None: skipped, see note
    p50_ms: float | None
    p99_ms: float | None
    note: str = ""
    rss_mb: float | None = None  # memory cells: resident memory, MB (their rows_per_s is None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        return cls(**data)

    @classmethod
    def skipped(cls, model: str, path: str, rows: int, note: str) -> Cell:
        return cls(model, path, rows, 0, None, None, None, note)


def skip_reason(previous: Cell | None, rows: int, budget: Budget) -> str | None:
    """Why a cell of `rows` rows is skipped: the previous (smaller) cell's speed says one request
    would take too long for the cell's time budget."""
    if previous is None or previous.rows_per_s is None:
        return None if previous is None else "skipped: smaller batch already skipped"
    if previous.rows < 1_000:  # per-request overhead dominates small batches: no basis to extrapolate
        return None
    projected = rows / previous.rows_per_s
    if projected * (budget.min_requests + 1) > budget.max_cell_seconds:
        return f"skipped: ~{projected:.1f} s per request"
    return None


Call = Callable[[], object]
Check = Callable[[object], None]


def measure(model: str, path: str, rows: int, call: Call, budget: Budget, check: Check | None = None) -> Cell:
    """Warms up `call`, checks its first result with `check`, then times it. `call` sends one request
    of `rows` rows on an already open connection and returns once the whole answer is in."""
    result = call()
    if check is not None:
        check(result)
    del result
    warmup_end = time.perf_counter() + budget.warmup_seconds
    for _ in range(budget.max_warmup_requests(rows) - 1):
        if time.perf_counter() >= warmup_end:
            break
        call()

    latencies: list[int] = []
    limit = budget.max_requests(rows)
    start = time.perf_counter_ns()
    deadline = start + int(budget.cell_seconds * 1e9)
    now = start
    while len(latencies) < limit and (now < deadline or len(latencies) < budget.min_requests):
        call()
        end = time.perf_counter_ns()
        latencies.append(end - now)
        now = end
    elapsed_s = (now - start) / 1e9
    lat_ms = np.asarray(latencies, dtype=np.float64) / 1e6
    return Cell(
        model,
        path,
        rows,
        len(latencies),
        rows * len(latencies) / elapsed_s,
        float(np.percentile(lat_ms, 50)),
        float(np.percentile(lat_ms, 99)),
    )


def measure_sizes(
    model: str,
    path: str,
    sizes: list[int],
    budget: Budget,
    prepare: Callable[[int], tuple[Call, Check | None]],
) -> list[Cell]:
    """Measures each batch size in increasing order; `prepare(rows)` builds the request (untimed)
    and returns the call and its result check. Sizes too slow for the budget are skipped."""
    cells: list[Cell] = []
    previous: Cell | None = None
    for rows in sorted(sizes):
        reason = skip_reason(previous, rows, budget)
        if reason is not None:
            cell = Cell.skipped(model, path, rows, reason)
        else:
            try:
                call, check = prepare(rows)
            except SkipCell as skip:
                cell = Cell.skipped(model, path, rows, f"skipped: {skip}")
            else:
                cell = measure(model, path, rows, call, budget, check)
        print(f"  {model} {path:<24} {rows:>7} rows: {describe(cell)}", flush=True)
        cells.append(cell)
        previous = cell
    return cells


def best_of(path: str, variants: dict[str, list[Cell]]) -> list[Cell]:
    """Per batch size, the fastest of a reference path's variants (e.g. thread settings), named `path`
    with the winning variant in its note: a reference is only useful at its best."""
    best: list[Cell] = []
    for cells in zip(*variants.values(), strict=True):
        labelled = [
            (cell, label) for cell, label in zip(cells, variants, strict=True) if cell.rows_per_s is not None
        ]
        if not labelled:
            best.append(replace(cells[0], path=path))
            continue
        cell, label = max(labelled, key=lambda pair: pair[0].rows_per_s or 0.0)
        best.append(replace(cell, path=path, note=f"best of {', '.join(variants)}: {label}"))
    return best


def describe(cell: Cell) -> str:
    if cell.rows_per_s is None:
        return cell.note
    latency = f"p50 {cell.p50_ms:8.3f} ms  p99 {cell.p99_ms:8.3f} ms"
    return f"{cell.rows_per_s:>13,.0f} rows/s  {latency}  ({cell.requests} req)"
