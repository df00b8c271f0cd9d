"""A `flightline serve` restarted under load: clients that stream without pause see the restart only as
UNAVAILABLE (retry), never NOT_FOUND; the server exits within a bounded drain and serves again in
seconds. The figures are printed (`pytest -s`) and bounded here."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
from support.auth import call_options

SERVING_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    data: Path, grpc_port: int, flight_port: int, *extra: str
) -> tuple[subprocess.Popen[str], list[str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "flightline.server.cli", "serve", *extra]
    options = ["--data-dir", str(data), "--grpc-port", str(grpc_port), "--flight-port", str(flight_port)]
    server = subprocess.Popen(
        [*command, *options, "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    logged: list[str] = []
    threading.Thread(target=lambda: logged.extend(server.stderr or ()), daemon=True).start()
    return server, logged


def wait_serving(server: subprocess.Popen[str]) -> None:
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line.startswith("FLIGHTLINE_SERVING"), line
    threading.Thread(target=lambda: list(server.stdout or ()), daemon=True).start()


@dataclass
class Load:
    """Clients streaming 1-row batches on long-lived streams, reconnecting after any error."""

    location: str
    clients: int = 4
    answers: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    successes: list[float] = field(default_factory=list)  # monotonic time of each answer
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        values = np.zeros((1, 29), dtype=np.float32)
        batch = pa.record_batch(
            [pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 29)], names=["inputs"]
        )
        while not self.stop.is_set():
            try:
                with flight.connect(self.location) as conn:
                    writer, reader = conn.do_exchange(
                        flight.FlightDescriptor.for_path("ccfraud", "outputs"), call_options()
                    )
                    with writer:
                        writer.begin(batch.schema)
                        while not self.stop.is_set():
                            writer.write_batch(batch)
                            assert reader.read_chunk().data.num_rows == 1
                            with self.lock:
                                self.answers += 1
                                self.successes.append(time.monotonic())
            except pa.ArrowKeyError:  # NOT_FOUND
                with self.lock:
                    self.codes["NOT_FOUND"] += 1
            except flight.FlightUnavailableError:
                with self.lock:
                    self.codes["UNAVAILABLE"] += 1
            except Exception as error:
                with self.lock:
                    self.codes[type(error).__name__] += 1
            self.stop.wait(0.02)


def test_serve_restarted_under_load_answers_unavailable_then_serves_again(tmp_path: Path) -> None:
    grpc_port, flight_port = free_port(), free_port()
    data = tmp_path / "data"
    first, _ = start(data, grpc_port, flight_port, "--sample")
    second: subprocess.Popen[str] | None = None
    load = Load(f"grpc+tcp://127.0.0.1:{flight_port}")
    threads = [threading.Thread(target=load.run, daemon=True) for _ in range(load.clients)]
    try:
        wait_serving(first)  # --sample has deployed ccfraud and answered once before it prints the table
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + SERVING_TIMEOUT
        while load.answers < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert load.answers >= 200, load.codes
        with load.lock:  # what the clients saw while --sample was still deploying is not the restart's
            load.codes.clear()

        signalled = time.monotonic()
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
        exited = time.monotonic()
        second, logged = start(data, grpc_port, flight_port)
        wait_serving(second)
        listening = time.monotonic()
        deadline = time.monotonic() + SERVING_TIMEOUT
        while not [t for t in list(load.successes) if t > exited] and time.monotonic() < deadline:
            time.sleep(0.01)
        back = min(t for t in load.successes if t > exited)
        time.sleep(1)  # steady again
        load.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        print(
            f"\nrestart under load ({load.clients} streaming clients): exit {exited - signalled:.2f} s after "
            f"SIGTERM; restarted process serving gRPC {listening - exited:.2f} s after the exit, "
            f"first answer {back - exited:.2f} s after the exit ({back - signalled:.2f} s after SIGTERM); "
            f"client errors {dict(load.codes)}; {load.answers} answers"
        )
        assert load.codes["NOT_FOUND"] == 0, load.codes
        assert set(load.codes) <= {"UNAVAILABLE"}, load.codes
        assert exited - signalled < 7.5  # the Flight grace (5 s) bounds the drain
        assert back - exited < 30, logged[-20:]  # measured 3.6-8.7 s on 2 shared cores
    finally:
        load.stop.set()
        for server in (first, second):
            if server is not None and server.poll() is None:
                server.kill()
                server.wait()
        with contextlib.suppress(Exception):
            for thread in threads:
                thread.join(timeout=5)
