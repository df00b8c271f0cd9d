"""Flightline benchmark: rows/s and latency of one model served many ways, measured in one run.

Run from the repository root: `python -m bench` (see bench/README.md). Kept import-light on purpose:
`bench.measure` also runs inside the MLServer virtual environment, which has no pyarrow."""
