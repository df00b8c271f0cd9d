"""The runtime plug-in registry: consistent with the catalog, honest about what this installation can
serve (also over ListFrameworks), and the only place framework names are branched on."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

import flightline
from flightline.runtimes import runtime_class
from flightline.runtimes.base import ModelLoadError, Runtime
from flightline.runtimes.catalog import FRAMEWORKS, get_framework
from flightline.runtimes.plugins import (
    NO_PLUGIN_HINT,
    PLUGINS,
    ArtifactForm,
    Plugin,
    for_framework,
    load_attribute,
    plugin,
    serving,
    unavailable_reason,
)
from flightline.server.client import Client
from flightline.v1 import model_pb2

CATALOG = {spec.name for spec in FRAMEWORKS}
PACKAGE = Path(flightline.__file__).parent
# Where framework and runtime names may appear: the registry, the catalog's seed data, the runtime
# modules that implement a plug-in, and the generated bindings.
ALLOWED = {
    "runtimes/plugins.py",
    "runtimes/catalog.py",
    "runtimes/onnx.py",
    "runtimes/sklearn.py",
    "runtimes/pyfunc.py",
    "runtimes/byop.py",
    "runtimes/tensorflow.py",
    "runtimes/keras_convert.py",
    "runtimes/torchscript.py",
    "runtimes/torch_convert.py",
}


def test_plugin_names_and_frameworks_do_not_collide() -> None:
    names = [p.name for p in PLUGINS]
    assert len(names) == len(set(names)) == 7
    served = [framework for p in PLUGINS for framework in p.frameworks]
    assert len(served) == len(set(served))
    assert set(served) <= CATALOG  # a plug-in serves only catalogued frameworks


def test_every_catalog_framework_maps_to_a_plugin_or_says_what_to_install() -> None:
    for spec in FRAMEWORKS:
        if spec.available:
            assert spec.plugin is not None and spec.install_hint == "", spec.name
            assert for_framework(spec.name) is spec.plugin
        else:
            assert spec.install_hint, spec.name
            assert spec.install_hint.startswith(unavailable_reason(spec.name))


@pytest.mark.parametrize("name", ["onnx", "python", "sklearn", "xgboost"])
def test_served_frameworks_are_available_here(name: str) -> None:
    assert get_framework(name).available and unavailable_reason(name) == ""


def test_availability_follows_the_plugins_not_what_happens_to_be_installed() -> None:
    # Whether or not transformers is installed, no plug-in serves it yet: availability follows the plug-ins.
    spec = get_framework("hugging-face-summarization")
    assert serving("hugging-face-summarization") is None
    assert not spec.available and spec.install_hint.startswith(NO_PLUGIN_HINT)
    with pytest.raises(
        ModelLoadError,
        match="'hugging-face-summarization' is in the catalog, but its runtime plug-in is not built",
    ):
        for_framework("hugging-face-summarization")
    # TensorFlow is served by a plug-in whose modules live in its family's environment, not here.
    assert serving("tensorflow") is plugin("tensorflow") and plugin("tensorflow").missing() == ()


def test_a_plugin_missing_a_module_is_unavailable_with_its_install_hint() -> None:
    lacking = Plugin(
        name="lacking",
        entry="no_such_module_flightline:Runtime",
        frameworks=(),
        forms=(ArtifactForm("", "any file"),),
        environment="server",
        concurrent=True,
        trusted_artifacts=True,
        native=True,
        requires=("onnx", "no_such_module_flightline"),
        framework_requires=(("special", ("another_missing_module",)),),
        install_hint="pip install no-such-module",
    )
    assert lacking.missing() == ("no_such_module_flightline",)
    assert lacking.missing("special") == ("no_such_module_flightline", "another_missing_module")
    assert not lacking.available()
    # XGBoost pickles need xgboost on top of the sklearn plug-in's own modules; both are installed here.
    assert plugin("sklearn").missing("xgboost") == ()
    assert dict(plugin("sklearn").framework_requires)["xgboost"] == ("xgboost",)


@pytest.mark.parametrize("registered", PLUGINS, ids=lambda p: p.name)
def test_every_plugin_names_real_code(registered: Plugin) -> None:
    cls = runtime_class(registered.name)
    assert issubclass(cls, Runtime) and cls.name == registered.name
    for target in (registered.describe, registered.converter, registered.own_requirements):
        if target is not None:
            assert callable(load_attribute(target)), target


def test_concurrency_and_trust_are_declared_per_plugin() -> None:
    table = {p.name: (p.concurrent, p.trusted_artifacts, p.in_front_door, p.unpacks) for p in PLUGINS}
    assert table == {
        "onnx": (True, True, True, False),  # data, thread-safe sessions: also served in the front door
        "python": (False, False, False, False),  # code, one call at a time
        "sklearn": (False, False, False, False),  # pickles are code; any class may be inside
        "pyfunc": (False, False, False, True),  # an MLflow model folder: user code, unpacked
        "byop": (False, False, False, True),  # scripts: user code, unpacked
        "tensorflow": (True, False, False, True),  # graphs may read files; SavedModel zips are unpacked
        "torchscript": (False, False, False, False),  # a program; forward() may mutate the module
    }


def test_unknown_runtime_and_unserved_framework_are_model_load_errors() -> None:
    with pytest.raises(
        ModelLoadError,
        match=r"unknown runtime 'pytorch'; known runtimes: \['byop', 'onnx', 'pyfunc', 'python', 'sklearn', "
        r"'tensorflow', 'torchscript'\]",
    ):
        plugin("pytorch")
    with pytest.raises(ModelLoadError, match="'hugging-face-summarization' is in the catalog"):
        for_framework("hugging-face-summarization")
    assert serving("not-in-the-catalog") is None


def test_list_frameworks_reports_availability_and_install_hints(client: Client) -> None:
    listed = {f.name: f for f in client.models.ListFrameworks(model_pb2.ListFrameworksRequest()).frameworks}
    assert set(listed) == CATALOG
    for name in ("onnx", "python", "sklearn", "xgboost", "mlflow", "custom"):
        assert listed[name].available and listed[name].install_hint == "", name
    assert (listed["mlflow"].runtime, listed["custom"].runtime) == ("pyfunc", "byop")
    for name in ("hugging-face-summarization",):
        assert not listed[name].available and listed[name].install_hint.startswith(NO_PLUGIN_HINT), name
        assert listed[name].runtime == ""  # no runtime name that does not exist
    # Served once their family is built (.ci/setup builds both); until then the hint says how.
    for name, family in (("tensorflow", "tensorflow"), ("keras", "tensorflow"), ("pytorch", "torch")):
        assert listed[name].runtime == get_framework(name).runtime, name
        hint = listed[name].install_hint
        assert listed[name].available == (hint == ""), name
        assert hint == "" or f"flightline runtimes install {family}" in hint, name


def _framework_literals_compared(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """String constants from `names` used in comparisons (==, in) or set literals: name branches."""
    found = []
    for node in ast.walk(tree):
        operands: list[ast.expr] = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Set):
            operands = [node]
        for operand in operands:
            for leaf in ast.walk(operand):
                if isinstance(leaf, ast.Constant) and leaf.value in names:
                    found.append((leaf.lineno, str(leaf.value)))
    return found


def test_no_framework_or_runtime_name_is_branched_on_outside_the_registry() -> None:
    names = CATALOG | {p.name for p in PLUGINS}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in ALLOWED or relative.startswith("v1/"):
            continue
        for line, name in _framework_literals_compared(ast.parse(path.read_text()), names):
            offenders.append(f"{relative}:{line} {name!r}")
    assert offenders == []


def test_framework_thread_pools_follow_model_size_and_options(tmp_path: Path) -> None:
    from flightline.runtimes.base import (
        HEAVY_MODEL_BYTES,
        ModelSpec,
        cpu_share,
        default_intra_op_threads,
        thread_option,
    )

    small, heavy = tmp_path / "small.pt", tmp_path / "saved" / "variables.data"
    small.write_bytes(b"x" * 1000)
    heavy.parent.mkdir()
    with heavy.open("wb") as file:
        file.truncate(HEAVY_MODEL_BYTES)
    assert default_intra_op_threads(small) == 1
    assert default_intra_op_threads(heavy.parent) == cpu_share()
    assert 1 <= cpu_share() <= len(os.sched_getaffinity(0))
    spec = ModelSpec(small, "pytorch", options={"intra_op_threads": "3", "inter_op_threads": "zero"})
    assert thread_option(spec, "intra_op_threads", 1) == 3
    with pytest.raises(ModelLoadError, match="option inter_op_threads must be an integer"):
        thread_option(spec, "inter_op_threads", 1)
