"""The in-process reference for the Hugging Face tests: each case's pipeline, loaded by transformers
(diffusers) directly, called on the case's rows, its answers written as the seed's output fields.
Runs in the hf environment, independent of flightline's hf runtime:

    <hf env>/bin/python tests/support/hf_reference.py CASES.json OUT.json

CASES.json: [{"name", "task", "folder", "rows": Arrow IPC file, "calls": [[row indices], {kwargs}]}].
Each call is one pipeline call over its rows with batch_size = their number, as the service promises.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pyarrow as pa
from PIL import Image


def images(column: pa.ChunkedArray) -> list[Any]:
    return [Image.fromarray(np.array(row, dtype=np.uint8), mode="RGB") for row in column.to_pylist()]


def box(d: dict[str, Any]) -> list[int]:
    b = d["box"]
    return [b["xmin"], b["ymin"], b["xmax"], b["ymax"]]


def run(case: dict[str, Any]) -> list[dict[str, Any]]:
    task, folder = case["task"], case["folder"]
    table = pa.ipc.open_file(case["rows"]).read_all()
    if task == "stable-diffusion-text-2-img":
        import diffusers
        import torch

        pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
    else:
        import transformers

        pipe = transformers.pipeline(task, model=folder, device="cpu")
        if task == "text-generation":
            pipe.tokenizer.padding_side = "left"
    answers: list[dict[str, Any]] = [{} for _ in range(table.num_rows)]
    for rows, kwargs in case["calls"]:
        n = len(rows)
        part = table.take(rows)
        if task in ("image-classification", "image-segmentation", "object-detection", "image-to-text"):
            items: Any = images(part.column("inputs"))
        elif task == "zero-shot-image-classification":
            items = images(part.column("inputs"))
        elif task == "zero-shot-object-detection":
            labels = part.column("candidate_labels").to_pylist()
            items = [
                {"image": i, "candidate_labels": c}
                for i, c in zip(images(part.column("images")), labels, strict=True)
            ]
        elif task == "automatic-speech-recognition":
            items = [np.array(w, dtype=np.float32) for w in part.column("inputs").to_pylist()]
        elif task == "question-answering":
            items = None
        elif task == "stable-diffusion-text-2-img":
            items = part.column("prompt").to_pylist()
        else:
            items = part.column("inputs").to_pylist()

        if task == "question-answering":
            out = pipe(
                question=part.column("question").to_pylist(),
                context=part.column("context").to_pylist(),
                batch_size=n,
                **kwargs,
            )
            out = [out] if isinstance(out, dict) else out
            rows_out = [
                {"score": o["score"], "start": o["start"], "end": o["end"], "answer": o["answer"]}
                for o in out
            ]
        elif task == "stable-diffusion-text-2-img":
            generators = [torch.Generator().manual_seed(0) for _ in items]
            result = pipe(prompt=items, generator=generators, output_type="np", **kwargs).images
            rows_out = [
                {"images": np.clip(np.rint(img * 255), 0, 255).astype(int).tolist()} for img in result
            ]
        elif task == "image-to-text":
            named = {k: kwargs.pop(k) for k in ("max_new_tokens",) if k in kwargs}
            out = pipe(items, batch_size=n, **named, **({"generate_kwargs": kwargs} if kwargs else {}))
            rows_out = [{"generated_text": [d["generated_text"] for d in o]} for o in out]
        else:
            out = pipe(items, batch_size=n, **kwargs)
            if n == 1 and isinstance(out, dict):
                out = [out]
            rows_out = [convert(task, o) for o in out]
        for row, answer in zip(rows, rows_out, strict=True):
            answers[row] = answer
    return answers


def convert(task: str, o: Any) -> dict[str, Any]:
    if task == "feature-extraction":
        return {"output": o[0]}
    if task in (
        "image-classification",
        "text-classification",
        "sentiment-analysis",
        "zero-shot-image-classification",
    ):
        return {"score": [d["score"] for d in o], "label": [d["label"] for d in o]}
    if task == "image-segmentation":
        return {
            "score": [d["score"] for d in o],
            "label": [d["label"] for d in o],
            "mask": [np.array(d["mask"]).astype(int).tolist() for d in o],
        }
    if task in ("object-detection", "zero-shot-object-detection"):
        return {
            "score": [d["score"] for d in o],
            "label": [d["label"] for d in o],
            "box": [box(d) for d in o],
        }
    if task == "summarization":
        return {"summary_text": (o[0] if isinstance(o, list) else o)["summary_text"]}
    if task == "translation":
        return {"translation_text": (o[0] if isinstance(o, list) else o)["translation_text"]}
    if task == "zero-shot-classification":
        return {"sequence": o["sequence"], "scores": o["scores"], "labels": o["labels"]}
    if task == "text-generation":
        return {"generated_text": [d["generated_text"] for d in o]}
    if task == "automatic-speech-recognition":
        chunks = o.get("chunks")
        return {
            "text": o["text"],
            "chunks": None
            if chunks is None
            else [{"text": c["text"], "timestamp": list(c["timestamp"])} for c in chunks],
        }
    raise SystemExit(f"no reference for {task}")


def main() -> None:
    with open(sys.argv[1]) as file:
        cases = json.loads(file.read())
    results = {case["name"]: run(case) for case in cases}
    with open(sys.argv[2], "w") as out:
        json.dump(results, out)


if __name__ == "__main__":
    main()
