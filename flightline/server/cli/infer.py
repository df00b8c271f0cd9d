"""`flightline infer NAME --input FILE [--output FILE]`: a Parquet, CSV or Arrow file through a deployment
over Arrow Flight, batch by batch (memory holds one batch), with a progress bar."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flightline.server.cli._app import app, client, console, stderr, usage

SUFFIXES = (".parquet", ".csv", ".arrow")
SHOWN_ROWS = 50


class _Source:
    """A file's batches and its row count when known up front."""

    def __init__(self, path: Path, batch_rows: int) -> None:
        kind = path.suffix.lower()
        self.rows: int | None = None
        if kind == ".parquet":
            parquet = pq.ParquetFile(path)
            self.rows = parquet.metadata.num_rows
            self.schema: pa.Schema = parquet.schema_arrow
            self.batches: Iterator[pa.RecordBatch] = parquet.iter_batches(batch_size=batch_rows)
        elif kind == ".csv":
            block = max(1 << 20, batch_rows * 64)  # about batch_rows rows of a narrow file per block
            reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=block))
            self.schema = reader.schema
            self.batches = iter(reader)
        else:
            self.schema, self.batches, self.rows = _arrow(path)


def _arrow(path: Path) -> tuple[pa.Schema, Iterator[pa.RecordBatch], int | None]:
    """An Arrow IPC file (random access, rows known) or stream."""
    try:
        file = ipc.open_file(path)
    except pa.ArrowInvalid:
        stream = ipc.open_stream(path)
        return stream.schema, iter(stream), None
    rows = sum(file.get_batch(i).num_rows for i in range(file.num_record_batches))
    return file.schema, (file.get_batch(i) for i in range(file.num_record_batches)), rows


def conform(batch: pa.RecordBatch, schema: pa.Schema | None) -> pa.RecordBatch:
    """A batch in the deployment's input schema: CSV holds a tensor column as JSON lists ("[0.1, 0.2]")
    and numbers as int64/double, so columns the model declares are parsed and cast to its types."""
    if schema is None:
        return batch
    columns = []
    for field in schema:
        if field.name not in batch.schema.names:
            return batch  # let the server name the missing column
        column = batch.column(field.name)
        if pa.types.is_string(column.type) and not pa.types.is_string(field.type):
            column = pa.array([None if v is None else json.loads(v) for v in column.to_pylist()], field.type)
        elif column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return batch
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _for_csv(batch: pa.RecordBatch) -> pa.RecordBatch:
    """CSV cannot hold lists: nested columns are written as JSON text."""
    columns = []
    for column, field in zip(batch.columns, batch.schema, strict=True):
        if pa.types.is_nested(field.type):
            column = pa.array([json.dumps(v) for v in column.to_pylist()], pa.string())
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


class _Sink:
    """Writes result batches to a Parquet, CSV or Arrow file as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: Any = None

    def write(self, batch: pa.RecordBatch) -> None:
        kind = self.path.suffix.lower()
        if kind == ".csv":
            batch = _for_csv(batch)
        if self.writer is None:
            if kind == ".parquet":
                self.writer = pq.ParquetWriter(self.path, batch.schema)
            elif kind == ".csv":
                self.writer = pcsv.CSVWriter(self.path, batch.schema)
            else:
                self.writer = ipc.new_file(self.path, batch.schema)
        self.writer.write_batch(batch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _check(path: Path, option: str) -> None:
    if path.suffix.lower() not in SUFFIXES:
        usage(f"{option} {path}: expected a .parquet, .csv or .arrow file")


@app.command("infer")
def infer(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="A .parquet, .csv or .arrow file.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the results to a .parquet, .csv or .arrow file."),
    ] = None,
    envelope: Annotated[
        bool, typer.Option(help="The full envelope (time, in., out., check_failures).")
    ] = False,
    batch_rows: Annotated[int, typer.Option(min=1, help="Rows per Flight batch.")] = 10_000,
    workspace: Annotated[
        str | None,
        typer.Option("--workspace", "-w", help="Its workspace (needed when the name is in several)."),
    ] = None,
) -> None:
    """Streams a file through a deployment; prints the results as a table or writes them to --output."""
    _check(input, "--input")
    if output is not None:
        _check(output, "--output")
    if not input.is_file():
        usage(f"--input {input}: no such file")
    try:
        source = _Source(input, batch_rows)
    except (pa.ArrowInvalid, OSError) as error:
        usage(f"--input {input}: cannot read it: {error}")
    sink = _Sink(output) if output is not None else None
    shown: list[pa.RecordBatch] = []
    rows_out = 0
    with client() as fl:
        deployment = fl.deployments.get(name, workspace=workspace)
        schema = deployment.input_schema
        batches = (conform(b, schema) for b in source.batches)
        first = next(batches, None)
        if first is None:
            usage(f"--input {input}: the file has no rows")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with (
            Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as progress,
            contextlib.ExitStack() as stack,
        ):
            if sink is not None:
                stack.callback(sink.close)
            task = progress.add_task(f"{name}: rows", total=source.rows)
            sent = _counting(_chain(first, batches), lambda n: progress.advance(task, n))
            for result in deployment.stream(first.schema, sent, envelope=envelope):
                rows_out += result.num_rows
                if sink is not None:
                    sink.write(result)
                elif rows_out - result.num_rows < SHOWN_ROWS:
                    shown.append(result)
    if sink is not None:
        console.print(f"{rows_out} rows written to {output}", highlight=False)
        return
    _print(pa.Table.from_batches(shown).slice(0, SHOWN_ROWS), rows_out)


def _counting(batches: Iterator[pa.RecordBatch], advance: Callable[[int], Any]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        yield batch
        advance(batch.num_rows)


def _chain(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield first
    yield from rest


def _print(table: pa.Table, total: int) -> None:
    view = Table()
    for column in table.column_names:
        view.add_column(column)
    for row in table.to_pylist():
        view.add_row(*(_short(v) for v in row.values()))
    console.print(view)
    if total > table.num_rows:
        console.print(f"... {total - table.num_rows} more rows ({total} in all); use --output to keep them")


def _short(value: Any) -> str:
    """A cell: floats to 6 significant digits, long lists cut in the middle."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        items = [_short(v) for v in value]
        return "[" + ", ".join(items if len(items) <= 6 else [*items[:3], "...", *items[-2:]]) + "]"
    return json.dumps(value) if isinstance(value, dict) else str(value)
