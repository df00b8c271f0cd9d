"""The request path shared by every runtime: check the data rules, run the model, check that it returned one
row per input row, and shape the response. Transports (the Flight runtime server, tests) call only this.

A runtime with an *open* input schema (no fields, e.g. a Python step uploaded without a schema) skips the
column name/type matching, but its list columns must still be regular, single-typed and null-free
(see `rules.py`). A runtime with an open output schema reports its output columns per batch."""

from __future__ import annotations

from typing import Final, Literal, get_args

import pyarrow as pa

from flightline.runtimes.base import Runtime
from flightline.runtimes.envelope import envelope, envelope_schema
from flightline.runtimes.params import resolve
from flightline.runtimes.rules import BatchRules, is_open

Mode = Literal["envelope", "outputs", "raw"]
MODES: Final[tuple[str, ...]] = get_args(Mode)
DEFAULT_MODE: Final[Mode] = "envelope"
_MODES_BY_NAME: Final[dict[str, Mode]] = {"envelope": "envelope", "outputs": "outputs", "raw": "raw"}


class ModelOutputError(Exception):
    """The model broke its side of the contract (e.g. rows out != rows in): a server fault."""


def parse_mode(value: str | bytes | None) -> Mode:
    """The response mode named by a request; raises ValueError listing the valid ones."""
    text = value.decode() if isinstance(value, bytes) else value
    if not text:
        return DEFAULT_MODE
    mode = _MODES_BY_NAME.get(text)
    if mode is not None:
        return mode
    raise ValueError(f"unknown response mode {text!r}; expected one of {list(MODES)}")


class Host:
    """Serves one loaded runtime. Schemas and rules are computed once, so the per-batch work is the model
    call plus a few constant-time checks."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._rules = BatchRules(runtime.input_schema, runtime.optional_inputs)
        self._open: bool = is_open(runtime.input_schema) or is_open(runtime.output_schema)
        self._declared_outputs = None if is_open(runtime.output_schema) else runtime.output_schema
        self._envelopes = {
            "envelope": envelope_schema(runtime.input_schema, runtime.output_schema, echo=True),
            "outputs": envelope_schema(runtime.input_schema, runtime.output_schema, echo=False),
        }

    @property
    def input_schema(self) -> pa.Schema:
        return self.runtime.input_schema

    @property
    def output_schema(self) -> pa.Schema:
        return self.runtime.output_schema

    @property
    def has_open_schema(self) -> bool:
        """True when result columns are only known per batch (open input or output schema)."""
        return self._open

    def result_schema(self, mode: Mode = DEFAULT_MODE) -> pa.Schema:
        """The schema of `respond(batch, mode)`; for open schemas, only the columns known in advance."""
        if mode == "raw":
            return self.runtime.output_schema
        return self._envelopes[mode]

    def validate(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch checked against the data rules (raises InvalidInput), list columns made fixed-size."""
        return self._rules.check(batch)

    def run(self, batch: pa.RecordBatch, params: pa.RecordBatch | None = None) -> pa.RecordBatch:
        """The model's raw outputs for a batch; `params` the request's parameters batch (`params.py`)."""
        return self._infer(self.validate(batch), params)

    def respond(
        self, batch: pa.RecordBatch, mode: Mode = DEFAULT_MODE, params: pa.RecordBatch | None = None
    ) -> pa.RecordBatch:
        """The response to one request batch in the given mode: "envelope" (time, in., out.,
        check_failures), "outputs" (out. columns only) or "raw" (model outputs, to chain pipeline steps)."""
        checked = self.validate(batch)
        outputs = self._infer(checked, params)
        if mode == "raw":
            return outputs
        schema = None if self._open else self._envelopes[mode]
        return envelope(checked, outputs, echo=mode == "envelope", schema=schema)

    def _infer(self, batch: pa.RecordBatch, params: pa.RecordBatch | None = None) -> pa.RecordBatch:
        declared = self._declared_outputs
        if batch.num_rows == 0 and declared is not None:
            # Zero rows in, zero rows out, whatever the model: many libraries (sklearn) refuse empty input.
            # An open output schema still asks the model, the only one that knows its columns.
            return _empty(declared)
        taken = resolve(params, self.runtime.params_schema)  # InvalidInput naming a parameter
        outputs = self.runtime.infer_with_params(batch, taken) if taken else self.runtime.infer(batch)
        if outputs.num_rows != batch.num_rows:
            raise ModelOutputError(
                f"model returned {outputs.num_rows} rows for {batch.num_rows} input rows; "
                "a model must return exactly one output row per input row"
            )
        if declared is not None and not outputs.schema.equals(declared):
            raise ModelOutputError(
                f"model returned columns {outputs.schema} instead of its declared output schema {declared}"
            )
        return outputs


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)
