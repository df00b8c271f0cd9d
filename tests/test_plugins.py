"""The runtime plug-in registry: consistent with the catalog, honest about what this installation can
serve (also over ListFrameworks), and the only place framework names are branched on."""

from __future__ import annotations

import ast
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
from flightline.server.hosting.environments import FAMILIES, Environments
from flightline.v1 import model_pb2

CATALOG = {spec.name for spec in FRAMEWORKS}
PACKAGE = Path(flightline.__file__).parent
# Where framework and runtime names may appear: the registry, the catalog's seed data, the runtime
# modules that implement a plug-in, and the generated bindings.
ALLOWED = {"runtimes/plugins.py", "runtimes/catalog.py", "runtimes/onnx.py", "runtimes/sklearn.py"}


def test_plugin_names_and_frameworks_do_not_collide() -> None:
    names = [p.name for p in PLUGINS]
    assert len(names) == len(set(names)) == 4
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
    # Whether or not tensorflow is installed, no plug-in serves it yet: availability follows the plug-ins.
    spec = get_framework("tensorflow")
    assert serving("tensorflow") is None
    assert not spec.available and spec.install_hint.startswith(NO_PLUGIN_HINT)
    with pytest.raises(
        ModelLoadError, match="'tensorflow' is in the catalog, but its runtime plug-in is not built"
    ):
        for_framework("tensorflow")


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
    for target in (registered.describe, registered.converter):
        if target is not None:
            assert callable(load_attribute(target)), target


def test_concurrency_and_trust_are_declared_per_plugin() -> None:
    table = {p.name: (p.concurrent, p.trusted_artifacts, p.in_front_door, p.unpacks) for p in PLUGINS}
    assert table == {
        "onnx": (True, True, True, False),  # data, thread-safe sessions: also served in the front door
        "python": (False, False, False, False),  # code, one call at a time
        "sklearn": (False, False, False, False),  # pickles are code; any class may be inside
        "hf": (False, False, False, True),  # zipped folders (pickled weights possible), one call at a time
    }


def test_unknown_runtime_and_unserved_framework_are_model_load_errors() -> None:
    with pytest.raises(
        ModelLoadError,
        match=r"unknown runtime 'pytorch'; known runtimes: \['hf', 'onnx', 'python', 'sklearn'\]",
    ):
        plugin("pytorch")
    with pytest.raises(ModelLoadError, match="'mlflow' is in the catalog"):
        for_framework("mlflow")
    assert serving("not-in-the-catalog") is None


def test_list_frameworks_reports_availability_and_install_hints(client: Client) -> None:
    listed = {f.name: f for f in client.models.ListFrameworks(model_pb2.ListFrameworksRequest()).frameworks}
    assert set(listed) == CATALOG
    for name in ("onnx", "python", "sklearn", "xgboost"):
        assert listed[name].available and listed[name].install_hint == "", name
    for name in ("tensorflow", "pytorch", "mlflow", "custom"):
        assert not listed[name].available and listed[name].install_hint.startswith(NO_PLUGIN_HINT), name
        assert listed[name].runtime == ""  # no runtime name that does not exist
    # A family plug-in: available exactly when its environment is built in the server's cache.
    summarization = listed["hugging-face-summarization"]
    assert summarization.runtime == "hf"
    built = Environments().lookup(FAMILIES["hf"]) is not None
    assert summarization.available == built
    if built:
        assert summarization.install_hint == ""
    else:
        assert summarization.install_hint.endswith("which is not built: flightline runtimes install hf")
    assert "torch.onnx.export" in listed["pytorch"].install_hint


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
