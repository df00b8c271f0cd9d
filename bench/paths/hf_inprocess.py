"""In the hf environment: a text-classification pipeline's rows/s in-process, for 1-row calls and for
32-row calls (batch_size 32), and each sentence's scores computed alone (what every client must get).

    <hf env>/bin/python bench/paths/hf_inprocess.py FOLDER '["sentence", ...]' SECONDS

Prints one JSON object: {"1": {...}, "32": {...}, "scores": [[s0, s1], ...]}."""

from __future__ import annotations

import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the hf runtime sets it (runtimes/hf.py)

import numpy as np
import transformers


def timed(call: object, rows: int, seconds: float) -> dict[str, float]:
    for _ in range(5):
        call()  # type: ignore[operator]
    latencies = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(latencies) < 3:
        begin = time.perf_counter()
        call()  # type: ignore[operator]
        latencies.append(time.perf_counter() - begin)
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "rows_per_s": rows * len(latencies) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50) * 1000),
        "p99_ms": float(np.percentile(latencies, 99) * 1000),
    }


def main() -> None:
    folder, texts, seconds = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
    transformers.logging.set_verbosity_error()
    pipe = transformers.pipeline("text-classification", model=folder, device="cpu")
    # The service's order of labels: the pipeline's, top_k = the output's list size (2).
    scores = [[d["score"] for d in pipe([text], top_k=2)[0]] for text in texts]
    result = {
        "1": timed(lambda: pipe(texts[:1], top_k=2, batch_size=1), 1, seconds),
        "32": timed(lambda: pipe(texts[:32], top_k=2, batch_size=32), 32, seconds),
        "scores": scores,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
