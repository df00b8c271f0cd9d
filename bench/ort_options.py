"""onnxruntime session settings for the bench's own sessions (in-process, bare reference, JSON server).

The references are measured with each thread setting and keep their best: one intra-op thread leaves a
core to the transport and wins on small models, all cores win on large matrix products."""

from __future__ import annotations

import onnxruntime as ort

# Label -> intra_op_num_threads (0: onnxruntime's default, one per core).
THREAD_VARIANTS = {"1 thread": 1, "all cores": 0}


def session(model_path: str, intra_op_threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
