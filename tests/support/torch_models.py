"""Builds the TorchScript test models, run by the torch family's interpreter (the test venv has no
torch): `python torch_models.py OUT_DIR`. Writes each model and, as in tf_models.py, the rows it was run
on and what torch itself answered in-process (`<name>.in.arrow`, `<name>.out.arrow`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

ROWS = 16
FEATURES = 4


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(FEATURES, 8)
        self.out = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


class Unexportable(torch.nn.Module):
    """torch.onnx.export has no symbolic for erfcx: served by the TorchScript runtime."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.erfcx(x) * 2.0


def _save_rows(out: Path, name: str, x: np.ndarray, y: np.ndarray) -> None:
    for suffix, column, values in (("in", "inputs", x), ("out", "output", y)):
        array = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
        table = pa.table({column: array})
        path = str(out / f"{name}.{suffix}.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)


def main(out: Path) -> None:
    torch.manual_seed(0)
    x = np.random.default_rng(3).normal(size=(ROWS, FEATURES)).astype(np.float32)
    mlp = Mlp().eval()
    models = {
        "scripted": torch.jit.script(mlp),
        "traced": torch.jit.trace(mlp, torch.zeros(1, FEATURES)),
        "unexportable": torch.jit.script(Unexportable()),
    }
    for name, module in models.items():
        torch.jit.save(module, str(out / f"{name}.pt"))
        with torch.inference_mode():
            _save_rows(out, name, x, module(torch.from_numpy(x)).numpy())
    # Float64 inputs: not converted (the seed's rule), served by the TorchScript runtime.
    double = torch.jit.script(Mlp().double().eval())
    torch.jit.save(double, str(out / "double.pt"))
    with torch.inference_mode():
        x64 = x.astype(np.float64)
        _save_rows(out, "double", x64, double(torch.from_numpy(x64)).numpy())
    torch.save(mlp.state_dict(), out / "state_dict.pt")  # not TorchScript: refused


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    main(target)
