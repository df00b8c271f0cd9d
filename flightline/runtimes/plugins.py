"""The runtime plug-ins, declared once, as data. Everything that depends on a framework (the catalog,
upload checks, preparation and conversion, deployment) reads this table; nothing else branches on
framework or runtime names.

This module imports nothing heavy: a plug-in's code is named by "module:attribute" strings and imported
only by the process that loads a model (or prepares one), so the control plane never imports a
framework and a runtime process hosting ONNX never imports xgboost.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from flightline.runtimes.base import ModelLoadError

# The environment "server" is the server's own interpreter and packages; other families are built by
# flightline.server.hosting.environments (`flightline runtimes install FAMILY`), and a plug-in in one
# runs its runtime servers (and preparations) with that environment's interpreter.
#
# Today's plug-ins (onnx, python, sklearn) stay on "server" on purpose: their packages are the server's
# own dependencies, so the README's first command serves them with nothing to build or download, ONNX
# keeps its one-hop path inside the front door (only a "server" plug-in can run there), and a test
# suite on a fresh machine builds no 300 MB environments. Families are for what the server must not
# depend on (TensorFlow, torch, transformers 4.x): their plug-ins name a family here. A model with its
# own requirements gets an environment of its own whatever its plug-in's (hosting/environments.py).
SERVER_ENVIRONMENT = "server"
# What converters produce: their output is served by the plug-in that serves this framework.
CONVERTED_FRAMEWORK = "onnx"
NO_PLUGIN_HINT = "no runtime plug-in serves this framework yet"


@dataclass(frozen=True)
class ArtifactForm:
    suffix: str  # ".onnx", ".pkl", ".py", ".zip", ...; "" = any file
    description: str  # "ONNX model (.onnx)"
    archive: bool = False  # a zip that is checked at upload and unpacked for the runtime
    # The plug-in's frameworks this form is for; () = all of them (e.g. .h5 is Keras, not TensorFlow).
    frameworks: tuple[str, ...] = ()

    def accepted_for(self, framework: str) -> bool:
        return not self.frameworks or framework in self.frameworks


@dataclass(frozen=True)
class Plugin:
    name: str  # runtime name recorded on versions: "onnx", "python", "sklearn"
    entry: str  # "module:Class" implementing runtimes.base.Runtime
    frameworks: tuple[str, ...]  # catalog frameworks it serves
    forms: tuple[ArtifactForm, ...]  # artifact forms it accepts
    environment: str  # SERVER_ENVIRONMENT, else a family of hosting/environments.py
    concurrent: bool  # Runtime.infer may be called from several threads at once
    trusted_artifacts: bool  # True for data (ONNX, SavedModel...), False for code (pickle, .py)
    native: bool  # reported as RUNTIME_KIND_NATIVE (the guide's onnx/tensorflow/python), else CONTAINERIZED
    converter: str | None = None  # "module:function" converting an artifact to ONNX, tried first
    # "module:function" (path, input_schema, output_schema) -> (input_schema, output_schema): the
    # schemas the runtime will serve, or ModelLoadError. None: the declared schemas are recorded as is.
    # Runs only in the preparation subprocess (flightline.runtimes.prepare), never in the control plane.
    describe: str | None = None
    requires: tuple[str, ...] = ()  # importable modules that must exist to serve (availability check)
    # Modules needed for one framework only, e.g. xgboost pickles need xgboost besides sklearn.
    framework_requires: tuple[tuple[str, tuple[str, ...]], ...] = ()
    install_hint: str = ""  # what to install when not available
    # "module:function" (archive: Path) -> (requirements, python_version): what the model itself says it
    # needs (an MLflow model's requirements.txt, a BYOP zip's), recorded on the version at upload so its
    # environment is built from it. Runs in the control plane: it reads text entries of the checked
    # archive and never imports or runs the model's code; its module imports nothing heavy at the top.
    own_requirements: str | None = None
    # Its models always run in an environment built for them (their requirements on top of its family
    # row in hosting/environments.py FAMILIES), never on the server's own packages.
    own_environment: bool = False
    # Declared schemas may hold variable-size list columns (ragged rows), which other runtimes refuse:
    # the guide's answer for such shapes is BYOP.
    variable_lists: bool = False
    # Frameworks served as uploaded, never given to the converter (TensorFlow SavedModels are native).
    unconverted: tuple[str, ...] = ()

    def converts(self, framework: str) -> bool:
        """Uploads of `framework` go through the converter first."""
        return self.converter is not None and framework not in self.unconverted

    @property
    def unpacks(self) -> bool:
        """The runtime loads an unpacked folder, not the uploaded archive."""
        return any(form.archive for form in self.forms)

    @property
    def in_front_door(self) -> bool:
        """Loaded inside the front door too, saving a hop: data artifacts on the server's own packages.
        Code (a pickle, a script) never runs in a server process."""
        return self.trusted_artifacts and self.environment == SERVER_ENVIRONMENT

    def missing(self, framework: str | None = None) -> tuple[str, ...]:
        """The required modules that cannot be imported here (for `framework`, if given). A family
        plug-in's modules live in its environment, not here: whether that is built is the server's
        question (`unavailable_reason`'s `family_built`)."""
        if self.environment != SERVER_ENVIRONMENT:
            return ()
        extra = dict(self.framework_requires).get(framework or "", ())
        return tuple(module for module in (*self.requires, *extra) if not _importable(module))

    def available(self, framework: str | None = None) -> bool:
        return not self.missing(framework)

    def unavailable(
        self, framework: str | None = None, family_built: Callable[[str], bool] | None = None
    ) -> str:
        """'' when it can serve `framework` here, else what to install. A family plug-in can serve once
        its environment is built (`family_built`, the server's environment cache; None: not known)."""
        family = self.environment
        if family != SERVER_ENVIRONMENT and (family_built is None or not family_built(family)):
            return (
                f"the {self.name} runtime runs in the {family} environment, which is not built: "
                f"flightline runtimes install {family}"
            )
        missing = self.missing(framework)
        if missing:
            return f"the {self.name} runtime needs {', '.join(missing)}: {self.install_hint}"
        return ""


_ZIP_OF = "zip archive (.zip)"

PLUGINS: tuple[Plugin, ...] = (
    Plugin(
        name="onnx",
        entry="flightline.runtimes.onnx:OnnxRuntime",
        frameworks=("onnx",),
        forms=(ArtifactForm(".onnx", "ONNX model (.onnx)"),),
        environment=SERVER_ENVIRONMENT,
        # onnxruntime documents InferenceSession.run as thread-safe; concurrent calls share the weights.
        concurrent=True,
        trusted_artifacts=True,  # a graph of standard operators: data (no custom-op library is ever loaded)
        native=True,
        describe="flightline.runtimes.onnx:describe",
        requires=("onnxruntime", "onnx"),
        install_hint="pip install onnxruntime onnx",
    ),
    Plugin(
        name="python",
        entry="flightline.runtimes.python_step:PythonStepRuntime",
        frameworks=("python",),
        forms=(ArtifactForm(".py", "Python script (.py)"),),
        environment=SERVER_ENVIRONMENT,
        # The user's script may keep module-level state (counters, caches, open files) and nothing
        # says it is reentrant; one call at a time per model is the only safe assumption.
        concurrent=False,
        trusted_artifacts=False,  # it is code
        native=True,
        describe="flightline.runtimes.python_step:describe",
        requires=("pandas",),
        install_hint="pip install pandas",
    ),
    Plugin(
        name="sklearn",
        entry="flightline.runtimes.sklearn:SklearnRuntime",
        frameworks=("sklearn", "xgboost"),  # the xgboost catalog framework is XGBoost's sklearn pickles
        forms=(
            ArtifactForm(".pkl", "pickle (.pkl)"),
            ArtifactForm(".joblib", "joblib pickle (.joblib)"),
            ArtifactForm("", "pickle under any name"),
        ),
        environment=SERVER_ENVIRONMENT,
        # Serialized: a pickle can hold any class (custom transformers, third-party estimators,
        # FunctionTransformer around user functions) whose predict may mutate state, and estimators
        # with n_jobs or XGBoost's nthread already use every core per call. Throughput comes from
        # batching concurrent requests into one call instead.
        concurrent=False,
        trusted_artifacts=False,  # unpickling runs arbitrary code
        native=False,
        converter="flightline.runtimes.convert:convert",
        requires=("sklearn", "joblib"),
        framework_requires=(("xgboost", ("xgboost",)),),
        install_hint="pip install scikit-learn joblib xgboost",
    ),
    Plugin(
        name="pyfunc",
        entry="flightline.runtimes.pyfunc:PyfuncRuntime",
        frameworks=("mlflow",),
        forms=(ArtifactForm(".zip", f"MLflow model directory as a {_ZIP_OF}", archive=True),),
        # Not a family built ahead: each model runs in an environment built at upload from its own
        # requirements (`own_environment`), which the server's packages never stand in for.
        environment=SERVER_ENVIRONMENT,
        # A PythonModel's predict is user code that may keep state; nothing says it is reentrant.
        concurrent=False,
        trusted_artifacts=False,  # cloudpickled models and models-from-code run the author's code
        native=False,
        describe="flightline.runtimes.pyfunc:describe",
        own_requirements="flightline.runtimes.pyfunc:own_requirements",
        own_environment=True,
    ),
    Plugin(
        name="byop",
        entry="flightline.runtimes.byop:ByopRuntime",
        frameworks=("custom",),
        forms=(ArtifactForm(".zip", f"Arbitrary Python (BYOP) {_ZIP_OF}: scripts, artifacts", archive=True),),
        environment=SERVER_ENVIRONMENT,  # or its own, from the zip's requirements.txt
        concurrent=False,  # user code
        trusted_artifacts=False,
        native=False,
        describe="flightline.runtimes.byop:describe",
        own_requirements="flightline.runtimes.byop:own_requirements",
        variable_lists=True,
    ),
    Plugin(
        name="tensorflow",
        entry="flightline.runtimes.tensorflow:TensorflowRuntime",
        # One framework, several forms, told apart by content (flightline.runtimes.keras_convert): a Keras
        # upload is converted to ONNX where tf2onnx can, else served here as a SavedModel.
        frameworks=("tensorflow", "keras"),
        forms=(
            ArtifactForm(".zip", "SavedModel folder as .zip", archive=True),
            ArtifactForm(".h5", "Keras HDF5 (.h5), Keras 3 or Keras 2", frameworks=("keras",)),
            ArtifactForm(".keras", "Keras native format (.keras)", frameworks=("keras",)),
        ),
        environment="tensorflow",
        # A SavedModel signature is a graph function; TensorFlow runs concurrent calls of one function
        # safely, each on the shared inter/intra-op pools (sized from the cores at load).
        concurrent=True,
        # Not data: TensorFlow graphs can read and write files (ReadFile/WriteFile ops) and Keras files
        # can hold Lambda layers, so they run on the workspace's own sandboxed runtime server.
        trusted_artifacts=False,
        native=True,  # the guide's native tensorflow runtime
        converter="flightline.runtimes.keras_convert:convert",
        describe="flightline.runtimes.tensorflow:describe",
        requires=("tensorflow", "tf2onnx"),
        install_hint="flightline runtimes install tensorflow",
        unconverted=("tensorflow",),
    ),
    Plugin(
        name="torchscript",
        entry="flightline.runtimes.torchscript:TorchScriptRuntime",
        frameworks=("pytorch",),
        forms=(
            ArtifactForm(".pt", "TorchScript (.pt)"),
            ArtifactForm(".pth", "TorchScript (.pth)"),
            ArtifactForm("", "TorchScript under any name"),
        ),
        environment="torch",
        # Serialized: scripted code may assign module attributes in forward(), and torch's intra-op
        # pool already spreads one call over the cores it was given.
        concurrent=False,
        trusted_artifacts=False,  # TorchScript is a program (it can call torch.ops of any loaded library)
        native=False,  # the guide's onnx/flight: native only once converted
        converter="flightline.runtimes.torch_convert:convert",
        describe="flightline.runtimes.torchscript:describe",
        requires=("torch",),
        install_hint="flightline runtimes install torch",
    ),
)

_BY_NAME = {p.name: p for p in PLUGINS}
_BY_FRAMEWORK = {framework: p for p in PLUGINS for framework in p.frameworks}


def plugin(name: str) -> Plugin:
    """The plug-in recorded as a version's runtime; ModelLoadError naming the known ones."""
    found = _BY_NAME.get(name)
    if found is None:
        raise ModelLoadError(f"unknown runtime {name!r}; known runtimes: {sorted(_BY_NAME)}")
    return found


def serving(framework: str) -> Plugin | None:
    """The plug-in that accepts uploads of `framework` (it may convert them), or None."""
    return _BY_FRAMEWORK.get(framework)


def for_framework(framework: str) -> Plugin:
    """The plug-in that accepts uploads of `framework`; ModelLoadError when none does yet."""
    found = serving(framework)
    if found is None:
        raise ModelLoadError(
            f"framework {framework!r} is in the catalog, but its runtime plug-in is not built yet"
        )
    return found


def unavailable_reason(framework: str, family_built: Callable[[str], bool] | None = None) -> str:
    """'' when `framework` can be served on this installation, else what to install. `family_built`
    tells whether a family's environment is built (the server's environment cache); without it a
    plug-in in a family counts as unavailable."""
    served_by = serving(framework)
    if served_by is None:
        return NO_PLUGIN_HINT
    return served_by.unavailable(framework, family_built)


def load_attribute(target: str) -> Any:
    """The object a "module:attribute" string names; ModelLoadError when its module cannot be imported."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelLoadError(f"{module_name} is not available: {error}") from error
    return getattr(module, attribute)


@cache
def _importable(module: str) -> bool:
    # find_spec locates a module without importing it, so the check stays cheap in the control plane.
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _check_registry() -> None:
    """The table's invariants, checked at import so a bad entry fails every process at once."""
    if len(_BY_NAME) != len(PLUGINS):
        raise RuntimeError("two runtime plug-ins share a name")
    if len(_BY_FRAMEWORK) != sum(len(p.frameworks) for p in PLUGINS):
        raise RuntimeError("two runtime plug-ins serve the same framework")


_check_registry()
