"""The results table (Markdown and CSV, with date and machine) and the issue's target checks."""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.measure import Cell

IN_PROCESS = "in-process"
BARE = "bare-flight"
FRONT_DOOR = "flightline-front-door"
DIRECT = "flightline-direct"
JSON = "json-http"
MLSERVER = "mlserver-grpc"

COLUMNS = [
    "model",
    "path",
    "rows/request",
    "requests",
    "rows/s",
    "p50 ms",
    "p99 ms",
    "x in-process",
    "x bare",
    "note",
]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    return f"{cpu}, {os.cpu_count()} cores, {system}"


@dataclass(frozen=True)
class Table:
    cells: list[Cell]
    date: str
    machine: str

    @classmethod
    def of(cls, cells: list[Cell], load_at_start: float) -> Table:
        # Other work on the machine skews the ratios, so the table says how busy it was.
        return cls(
            cells,
            dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            f"{machine()}, load average {load_at_start:.2f} at start",
        )

    def find(self, model: str, path: str, rows: int) -> Cell | None:
        for cell in self.cells:
            if (cell.model, cell.path, cell.rows) == (model, path, rows) and cell.rows_per_s is not None:
                return cell
        return None

    def ratio(self, cell: Cell, reference_path: str) -> float | None:
        reference = self.find(cell.model, reference_path, cell.rows)
        if cell.rows_per_s is None or reference is None or reference.rows_per_s is None:
            return None
        return cell.rows_per_s / reference.rows_per_s

    def rows(self) -> list[list[str]]:
        out = []
        for cell in self.cells:
            measured = cell.rows_per_s is not None
            out.append(
                [
                    cell.model,
                    cell.path,
                    f"{cell.rows:,}",
                    str(cell.requests) if measured else "-",
                    _rate(cell.rows_per_s),
                    _num(cell.p50_ms),
                    _num(cell.p99_ms),
                    _ratio(self.ratio(cell, IN_PROCESS)),
                    _ratio(self.ratio(cell, BARE)),
                    cell.note,
                ]
            )
        return out

    def markdown(self, models: dict[str, str], checks: list[Check]) -> str:
        lines = [
            "# Flightline benchmark",
            "",
            f"Date: {self.date}. Machine: {self.machine}.",
            "",
            *(f"- Model {key}: {description}" for key, description in models.items()),
            "",
            "| " + " | ".join(COLUMNS) + " |",
            "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|",
            *("| " + " | ".join(row) + " |" for row in self.rows()),
            "",
            "Targets:",
            "",
            *(f"- {check.line()}" for check in checks),
            "",
        ]
        return "\n".join(lines)

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as file:
            file.write(f"# date: {self.date}\n# machine: {self.machine}\n")
            writer = csv.writer(file)
            writer.writerow(
                [
                    "model",
                    "path",
                    "rows",
                    "requests",
                    "rows_per_s",
                    "p50_ms",
                    "p99_ms",
                    "x_in_process",
                    "x_bare",
                    "note",
                ]
            )
            for cell in self.cells:
                writer.writerow(
                    [
                        cell.model,
                        cell.path,
                        cell.rows,
                        cell.requests,
                        _raw(cell.rows_per_s),
                        _raw(cell.p50_ms),
                        _raw(cell.p99_ms),
                        _raw(self.ratio(cell, IN_PROCESS)),
                        _raw(self.ratio(cell, BARE)),
                        cell.note,
                    ]
                )

    def console(self) -> str:
        rows = [COLUMNS, *self.rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
        return "\n".join(
            "  ".join(
                value.ljust(width) if i < 2 or i == len(row) - 1 else value.rjust(width)
                for i, (value, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in rows
        )


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool | None  # None: not measured
    detail: str

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "N/A "}[self.passed]
        return f"{verdict} {self.name}: {self.detail}"


def _compare(
    table: Table,
    name: str,
    pairs: list[tuple[Cell | None, Cell | None]],
    minimum: float,
    label: Callable[[Cell], str],
) -> Check:
    """PASS when every pair's throughput ratio (first / second) is at least `minimum`."""
    parts, verdicts = [], []
    for cell, reference in pairs:
        if cell is None or reference is None or cell.rows_per_s is None or reference.rows_per_s is None:
            continue
        ratio = cell.rows_per_s / reference.rows_per_s
        verdicts.append(ratio >= minimum)
        parts.append(f"{label(cell)} {ratio:.2f}x")
    if not verdicts:
        return Check(name, None, "not measured")
    return Check(name, all(verdicts), ", ".join(parts))


def target_checks(table: Table, sizes: list[int]) -> list[Check]:
    def by_rows(cell: Cell) -> str:
        return f"{cell.rows:,} rows"

    def pairs(
        model: str, path: str, reference: str, rows: list[int]
    ) -> list[tuple[Cell | None, Cell | None]]:
        return [(table.find(model, path, n), table.find(model, reference, n)) for n in rows if n in sizes]

    large = [n for n in sizes if n >= 1_000]
    checks = [
        _compare(
            table,
            "model B front door >= 0.9x in-process at 1k-100k rows",
            pairs("B", FRONT_DOOR, IN_PROCESS, large),
            0.9,
            by_rows,
        ),
        _compare(
            table,
            "model A direct to runtime >= 0.9x bare reference at every size",
            pairs("A", DIRECT, BARE, sizes),
            0.9,
            by_rows,
        ),
        _compare(
            table,
            "model A front door >= 0.7x bare reference at every size",
            pairs("A", FRONT_DOOR, BARE, sizes),
            0.7,
            by_rows,
        ),
    ]
    latency = [table.find(model, FRONT_DOOR, 1) for model in ("A", "B")]
    measured = [cell for cell in latency if cell is not None and cell.p50_ms is not None]
    checks.append(
        Check(
            "p50 at 1 row < 0.7 ms through the front door",
            all(cell.p50_ms is not None and cell.p50_ms < 0.7 for cell in measured) if measured else None,
            ", ".join(f"model {cell.model} {cell.p50_ms:.3f} ms" for cell in measured) or "not measured",
        )
    )
    checks.append(
        _compare(
            table,
            "model A front door >= 10x MLServer at 10k rows",
            pairs("A", FRONT_DOOR, MLSERVER, [10_000]),
            10.0,
            by_rows,
        )
    )
    checks.append(
        _compare(
            table,
            "model A front door >= 100x JSON path at 100k rows",
            pairs("A", FRONT_DOOR, JSON, [100_000]),
            100.0,
            by_rows,
        )
    )
    return checks


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}" if value >= 0.01 else f"{value:.4f}"


def _raw(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"
