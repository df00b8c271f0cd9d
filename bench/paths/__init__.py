"""One module per way of serving a model; each exposes `run(models, ctx) -> list[Cell]`."""
