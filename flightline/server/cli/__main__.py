"""`python -m flightline.server.cli`: the same as the `flightline` command."""

from flightline.server.cli import app

app()
