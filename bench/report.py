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
from bench.paths import serving

IN_PROCESS = "in-process"
BARE = "bare-flight"
FRONT_DOOR = "flightline-front-door"
FRONT_DOOR_ENVELOPE = "flightline-front-envelope"
DIRECT = "flightline-direct"
JSON = "json-http"
MLSERVER = "mlserver-grpc"

CSV_COLUMNS = [
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
    "rss_mb",
]
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

    @classmethod
    def read_csv(cls, path: Path) -> Table:
        """An earlier run's bench.csv (also one written before the rss_mb column existed)."""
        header: dict[str, str] = {}
        lines = []
        for line in path.read_text().splitlines():
            if line.startswith("# ") and ":" in line:
                key, value = line[2:].split(":", 1)
                header[key.strip()] = value.strip()
            elif line.strip():
                lines.append(line)
        cells = [
            Cell(
                row["model"],
                row["path"],
                int(row["rows"]),
                int(row["requests"] or 0),
                _float(row.get("rows_per_s")),
                _float(row.get("p50_ms")),
                _float(row.get("p99_ms")),
                row.get("note") or "",
                _float(row.get("rss_mb")),
            )
            for row in csv.DictReader(lines)
        ]
        return cls(cells, header.get("date", "unknown date"), header.get("machine", "unknown machine"))

    def memory(self, model: str, path: str) -> Cell | None:
        for cell in self.cells:
            if (cell.model, cell.path) == (model, path) and cell.rss_mb is not None:
                return cell
        return None

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
                    cell.note if cell.rss_mb is None else f"RSS {cell.rss_mb:,.0f} MB; {cell.note}",
                ]
            )
        return out

    def markdown(self, models: dict[str, str], checks: list[Check], compared: list[str] | None = None) -> str:
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
            *(
                ["Against the baseline:", "", *(f"- {line.strip()}" for line in compared), ""]
                if compared
                else []
            ),
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
            writer.writerow(CSV_COLUMNS)
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
                        _raw(cell.rss_mb),
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


def target_checks(table: Table, sizes: list[int], baseline: Table | None = None) -> list[Check]:
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
    return checks + serving_checks(table) + baseline_checks(table, sizes, baseline)


def serving_checks(table: Table) -> list[Check]:
    """Issue 7: many concurrent 1-row clients out of process, and adaptive batching."""
    front = table.find("A", serving.CONCURRENT_FRONT_DOOR, 1)
    remote = table.find("A", serving.CONCURRENT_OUT_OF_PROCESS, 1)
    clients = f"{serving.CONCURRENT_CLIENTS} clients, 1 row"
    checks = [
        _compare(
            table,
            f"model A out of process >= 0.7x the aggregate rows/s of the front door ({clients})",
            [(remote, front)],
            0.7,
            lambda cell: f"{cell.rows_per_s or 0:,.0f} vs {front.rows_per_s if front else 0:,.0f} rows/s:",
        ),
        _latency(f"model A out of process p99 <= 3x the front door's ({clients})", remote, front, 3.0),
    ]
    unbatched = table.find(serving.STEP_MODEL, serving.STEP_UNBATCHED, 1)
    batched = table.find(serving.STEP_MODEL, serving.STEP_BATCHED, 1)
    call = table.find(serving.STEP_MODEL, serving.STEP_BATCH_CALL, serving.BATCHING.max_batch_rows)
    missing = next(
        (c.note for c in table.cells if c.path == serving.STEP_BATCHED and c.rows_per_s is None), ""
    )
    name = f"batching >= 2x unbatched rows/s ({serving.BATCHING_CLIENTS} clients, 1 row, Python step)"
    if batched is None:
        checks.append(Check(name, None, missing or "not measured"))
    else:
        checks.append(
            _compare(
                table,
                name,
                [(batched, unbatched)],
                2.0,
                lambda cell: (
                    f"{cell.rows_per_s or 0:,.0f} vs {unbatched.rows_per_s if unbatched else 0:,.0f} rows/s:"
                ),
            )
        )
    bound_name = "batched p99 <= max_delay + 2 batch times"
    if batched is None or call is None or batched.p99_ms is None or call.p50_ms is None:
        checks.append(Check(bound_name, None, missing or "not measured"))
    else:
        bound = serving.BATCHING.max_delay_ms + 2 * call.p50_ms
        checks.append(
            Check(
                bound_name,
                batched.p99_ms <= bound,
                f"p99 {batched.p99_ms:.2f} ms, bound {serving.BATCHING.max_delay_ms} + 2 x "
                f"{call.p50_ms:.2f} = {bound:.2f} ms",
            )
        )
    return checks


def baseline_checks(table: Table, sizes: list[int], baseline: Table | None) -> list[Check]:
    """Issue 7: memory against an earlier run, and no large-batch regression against it."""
    checks = [memory_check(table, baseline)]
    name = "large-batch figures within 0.9x of the baseline (models A and B, Flightline paths, every size)"
    if baseline is None:
        return [*checks, Check(name, None, "no baseline (--compare OLD.csv)")]
    pairs = [
        (table.find(model, path, rows), baseline.find(model, path, rows))
        for model in ("A", "B")
        for path in (FRONT_DOOR, FRONT_DOOR_ENVELOPE, DIRECT)
        for rows in sizes
    ]
    return [
        *checks,
        _compare(table, name, pairs, 0.9, lambda cell: f"{cell.model} {cell.path} {cell.rows:,} rows"),
    ]


def memory_check(table: Table, baseline: Table | None) -> Check:
    """The memory of the same number of sklearn-pickle deployments, now against the baseline."""
    now = _memory_total(table)
    models = now[2] if now is not None else 20
    name = f"{models} sklearn-pickle models use < 0.5x the resident memory of the baseline"
    if now is None:
        return Check(name, None, "not measured")
    figure = f"now {now[0]:,.0f} MB ({_processes(now[1], 'runtime ')} + the server)"
    then = _memory_total(baseline) if baseline is not None else None
    if then is None:
        missing = "no baseline (--baseline OLD.csv)" if baseline is None else "no memory cells in it"
        return Check(name, None, f"{figure}; {missing}")
    if then[2] != now[2]:
        return Check(name, None, f"{figure}; the baseline deployed {then[2]} models, not {now[2]}")
    return Check(
        name,
        now[0] < 0.5 * then[0],
        f"{figure}, baseline {then[0]:,.0f} MB ({_processes(then[1], 'runtime ')} + the server): "
        f"{now[0] / then[0]:.2f}x",
    )


def comparison(table: Table, baseline: Table) -> list[str]:
    """Each measured cell's rows/s and p99 as a ratio of the same cell in `baseline`."""
    lines = []
    for cell in table.cells:
        if cell.rss_mb is not None:
            old = baseline.memory(cell.model, cell.path)
            if old is not None and old.rss_mb:
                lines.append(
                    f"  {cell.model} {cell.path:<28} RSS {cell.rss_mb:,.0f} MB ({_processes(cell.requests)}) "
                    f"vs {old.rss_mb:,.0f} MB ({_processes(old.requests)}): {cell.rss_mb / old.rss_mb:.2f}x"
                )
            continue
        old = baseline.find(cell.model, cell.path, cell.rows)
        if cell.rows_per_s is None or old is None or not old.rows_per_s:
            continue
        p99 = f", p99 {cell.p99_ms / old.p99_ms:.2f}x" if cell.p99_ms is not None and old.p99_ms else ""
        ratio = cell.rows_per_s / old.rows_per_s
        lines.append(f"  {cell.model} {cell.path:<28} {cell.rows:>7,} rows: rows/s {ratio:.2f}x{p99}")
    return lines or ["  no cell of this run is in the baseline"]


def _memory_total(table: Table | None) -> tuple[float, int, int] | None:
    """(runtime processes' RSS + the server's in MB, runtime process count, deployments) of a run."""
    if table is None:
        return None
    runtimes = table.memory(serving.MEMORY_MODEL, serving.MEMORY_RUNTIMES)
    server = table.memory(serving.MEMORY_MODEL, serving.MEMORY_FRONT_DOOR)
    if runtimes is None or server is None or runtimes.rss_mb is None or server.rss_mb is None:
        return None
    return runtimes.rss_mb + server.rss_mb, runtimes.requests, runtimes.rows


def _latency(name: str, cell: Cell | None, reference: Cell | None, maximum: float) -> Check:
    """PASS when the cell's p99 is at most `maximum` times the reference's."""
    if cell is None or reference is None or cell.p99_ms is None or not reference.p99_ms:
        return Check(name, None, "not measured")
    ratio = cell.p99_ms / reference.p99_ms
    return Check(name, ratio <= maximum, f"p99 {cell.p99_ms:.2f} vs {reference.p99_ms:.2f} ms: {ratio:.2f}x")


def _processes(count: int, kind: str = "") -> str:
    return f"{count} {kind}process" if count == 1 else f"{count} {kind}processes"


def _float(raw: str | None) -> float | None:
    return float(raw) if raw else None


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
