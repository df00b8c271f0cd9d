"""Model inputs and outputs as tensors with a batch dimension, and their Arrow columns: the one way a
graph runtime (ONNX, TensorFlow, TorchScript) pairs its ports with declared schemas and derives the
columns it serves. A port's per-row dimensions become nested fixed-size lists."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from flightline.runtimes.base import ModelLoadError
from flightline.runtimes.rules import tensor_shape, tensor_type


@dataclass(frozen=True)
class Port:
    """One graph input or output: its name, element type and per-row dimensions (None = dynamic)."""

    name: str
    leaf: pa.DataType
    dims: tuple[int | None, ...]

    @property
    def fixed(self) -> bool:
        return all(d is not None for d in self.dims)

    @property
    def shape(self) -> tuple[int, ...]:
        """The per-row shape of a `fixed` port."""
        return tuple(d for d in self.dims if d is not None)


def match_ports(kind: str, ports: list[Port], declared: pa.Schema) -> list[tuple[Port, pa.Field]]:
    """Pairs graph ports with user-declared fields: by name when the names agree, else in order."""
    if set(declared.names) == {p.name for p in ports}:
        by_name = {p.name: p for p in ports}
        return [(by_name[f.name], f) for f in declared]
    if len(declared) != len(ports):
        raise ModelLoadError(
            f"the declared {kind} schema has {len(declared)} columns {declared.names} but "
            f"the model has {len(ports)} {kind}s {[p.name for p in ports]}"
        )
    return list(zip(ports, declared, strict=True))


def resolve_port(kind: str, port: Port, field: pa.Field) -> Port:
    """The port with dynamic dimensions fixed by a compatible declared field; ModelLoadError otherwise."""
    leaf, shape = tensor_shape(field.type)
    wanted = f"{kind} '{port.name}' (declared as '{field.name}: {field.type}')"
    if not leaf.equals(port.leaf):
        raise ModelLoadError(f"{wanted}: the model's element type is {port.leaf}, not {leaf}")
    if len(shape) != len(port.dims) or any(
        d is not None and d != s for d, s in zip(port.dims, shape, strict=False)
    ):
        graph_dims = ["?" if d is None else d for d in port.dims]
        raise ModelLoadError(f"{wanted}: the model's per-row shape is {graph_dims}, not {list(shape)}")
    return Port(port.name, leaf, shape)


def port_field(kind: str, name: str, port: Port) -> pa.Field:
    if not port.fixed:
        graph_dims = ["?" if d is None else d for d in port.dims]
        raise ModelLoadError(
            f"{kind} '{port.name}' has dynamic per-row shape {graph_dims}; declare a fixed "
            f"shape in the {kind} schema (e.g. fixed_size_list<{port.leaf}>[n])"
        )
    return pa.field(name, tensor_type(port.leaf, port.shape))


def served_ports(kind: str, ports: list[Port], declared: pa.Schema | None) -> list[tuple[str, Port]]:
    """(column name, port) for each port: resolved against the declared schema when there is one (not
    open), else the ports under their own names."""
    if declared is None or len(declared) == 0:
        return [(p.name, p) for p in ports]
    return [(f.name, resolve_port(kind, p, f)) for p, f in match_ports(kind, ports, declared)]
