"""Python environments for runtime families and for models with their own requirements.

An environment is a virtualenv built by `uv` from requirements, with the slim `flightline.runtimes`
package copied into its site-packages (that package imports nothing of `flightline.server`; a test checks
it). Environments live under one cache folder, one sub-folder per key: the hash of the interpreter's
version, the normalized requirements, the base requirements and the content of `flightline.runtimes`, so
every model needing the same set shares one environment and a changed runtime package builds a new one.

Building is atomic: uv builds in a temporary folder next to the final one, the folder is renamed into
place only when complete, and anything failing removes it. Builders of the same key take a file lock, so
one builds and the others wait and reuse its result. An environment's folder exists iff it is complete.

uv runs with `UV_PYTHON_DOWNLOADS=never` (only interpreters on this machine) and `--no-build`: wheels
only, since building a source distribution runs its code as the server. Packages come from uv's cache or
the configured index; nothing else is downloaded.

`FAMILIES` is the one table of family environments; the plug-in registry will own it later.

Which environment a model runs in (`wanted`): a model with its own requirements (or another Python than
the server's), or of a plug-in with `own_environment` (pyfunc), runs in one built from its plug-in's
family requirements plus its own, built at upload time; else a plug-in whose `environment` is a family
runs in that family's environment (built by `flightline runtimes install`); else the server's own
interpreter. Everything it depends on is recorded on the version (runtime, Conversion.requirements and
python_version), so a deploy derives the same key and only looks it up (`Environments.lookup`):
deploys never build."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

import flightline
import flightline.runtimes
from flightline.runtimes.plugins import SERVER_ENVIRONMENT, Plugin
from flightline.server.errors import FailedPrecondition

# family -> pinned requirements on top of BASE_PACKAGES. Pins match what the server's own tests use.
FAMILIES: Final[dict[str, tuple[str, ...]]] = {
    "onnx": ("onnxruntime==1.32.0",),
    "python": ("pandas==3.1.1",),
    "sklearn": (
        "scikit-learn==1.9.1",
        "scipy==1.17.1",
        "joblib==1.6.0",
        "xgboost-cpu==3.2.0",  # the `xgboost` module without CUDA (xgboost pulls 470 MB of NCCL)
        "pandas==3.1.1",
    ),
    # Booster files; the runtime is the sklearn runtime's code (flightline/runtimes/xgboost_booster.py).
    "xgboost": (
        "xgboost-cpu==3.2.0",
        "scikit-learn==1.9.1",
        "scipy==1.17.1",
        "joblib==1.6.0",
        "pandas==3.1.1",
    ),
    # MLflow pyfunc models: the slim client is enough to load and predict (a model's own `mlflow` pin is
    # turned into mlflow-skinny of that version by runtimes/pyfunc.py); pyfunc predicts on DataFrames.
    "pyfunc": ("mlflow-skinny==3.17.2", "pandas==3.1.1"),
    # TensorFlow with Keras 3 (its default) and Keras 2 (tf_keras, for TF_USE_LEGACY_KERAS=1 models),
    # tf2onnx for the Keras converter, onnx and onnxruntime to verify a conversion against the original.
    # tensorflow 2.21 on Linux x86_64 is the CPU build (~1.9 GB installed).
    "tensorflow": (
        "tensorflow==2.21.0",
        "tf-keras==2.21.0",
        "tf2onnx==1.17.0",
        "onnx==1.23.2",
        "onnxruntime==1.32.0",
    ),
    # The CPU build of torch, by its local version: PyPI's torch==2.13.0 pulls several GB of CUDA
    # libraries, "+cpu" exists only as a local wheel (pip's find-links, which `_uv` passes on), so a
    # machine without it fails to build this family instead of downloading CUDA. A GPU host would pin
    # the plain version (or "+cu12x") instead, see the README.
    "torch": ("torch==2.13.0+cpu", "onnx==1.23.2", "onnxruntime==1.32.0"),
    # Hugging Face pipelines (runtimes/hf.py). transformers stays on 4.x: 5.x removed the
    # question-answering, summarization, translation and image-to-text pipelines. torch: the torch
    # family's CPU pin (a local wheel from pip's find-links, which `_uv` passes on).
    "hf": (
        "torch==2.13.0+cpu",
        "transformers==4.57.6",
        "tokenizers==0.22.2",
        "huggingface-hub==0.36.2",
        "safetensors==0.8.0",
        "pillow==13.0.0",
        "diffusers==0.39.0",
        "sentencepiece==0.2.3",
    ),
}
# What `flightline.runtimes` itself imports; pinned to the server's own versions so Arrow data and the
# runtime code behave in every environment as they do in the server.
BASE_PACKAGES: Final = ("pyarrow", "numpy")
MANIFEST: Final = "flightline-environment.json"
BUILD_TIMEOUT_S: Final = 1800.0

Progress = Callable[[str], None]


class EnvironmentBuildError(Exception):
    """An environment cannot be built; `requirement` names the requirement at fault, when known."""

    def __init__(self, message: str, requirement: str | None = None) -> None:
        super().__init__(message)
        self.requirement = requirement


class EnvironmentMissing(FailedPrecondition):
    """A model's environment is not built (a deploy never builds one); the message says how to build it."""


@dataclass(frozen=True)
class Wanted:
    """The environment a model needs, other than the server's own interpreter."""

    requirements: tuple[str, ...]  # without the base packages (ensure/lookup add them)
    python: str | None  # a version such as "3.12"; None: the server's interpreter
    family: str | None  # the family name, for a family environment; None for a model's own
    hint: str  # how to build it when it is missing


@dataclass(frozen=True)
class Environment:
    key: str
    path: Path
    python_version: str
    requirements: tuple[str, ...]  # normalized, including the base packages
    created: bool = False  # True for the call that built it

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def default_root() -> Path:
    """Where environments are cached: /var/cache/flightline/envs for root (readable by the sandbox user,
    unlike /root/.cache), else $XDG_CACHE_HOME/flightline/envs (~/.cache by default)."""
    if os.geteuid() == 0:
        return Path("/var/cache/flightline/envs")
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "flightline" / "envs"


def own_python(python_version: str) -> str | None:
    """The Python a model asked for, or None when that is the server's (e.g. "3.11" on a 3.11.9 server)."""
    wanted = python_version.strip()
    if wanted and not re.fullmatch(r"3(\.\d{1,3}){1,2}", wanted):
        raise EnvironmentBuildError(f"python_version {python_version!r} is not a version such as 3.12")
    server = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    if not wanted or server == wanted or server.startswith(wanted + "."):
        return None
    return wanted


def plugin_requirements(plugin: Plugin) -> tuple[str, ...]:
    """What a plug-in's runtime needs installed: its family's requirements. A plug-in on the server's
    interpreter has no family of its own; the family named like it (FAMILIES' keys are plug-in names)
    lists the packages the server provides it, which a model's own environment must install itself."""
    family = plugin.name if plugin.environment == SERVER_ENVIRONMENT else plugin.environment
    return FAMILIES.get(family, ())


def wanted(plugin: Plugin, requirements: Sequence[str] = (), python_version: str = "") -> Wanted | None:
    """The environment a model of `plugin` with these recorded requirements runs in; None: the server's
    own interpreter. A model's requirement replaces the family's pin of the same package (the model
    knows what it was trained with). EnvironmentBuildError naming an invalid requirement."""
    own = normalize(requirements)
    python = own_python(python_version)
    if own or python is not None or plugin.own_environment:
        names = {canonicalize_name(Requirement(r).name) for r in own}
        family = tuple(
            r for r in plugin_requirements(plugin) if canonicalize_name(Requirement(r).name) not in names
        )
        hint = "re-upload the model version to rebuild its environment"
        return Wanted((*family, *own), python, None, hint)
    if plugin.environment != SERVER_ENVIRONMENT:
        name = plugin.environment
        return Wanted(FAMILIES.get(name, ()), None, name, f"run `flightline runtimes install {name}`")
    return None


def base_requirements() -> tuple[str, ...]:
    return tuple(f"{name}=={importlib.metadata.version(name)}" for name in BASE_PACKAGES)


def normalize(requirements: Sequence[str]) -> tuple[str, ...]:
    """Requirements in one canonical spelling, sorted and without duplicates, blank lines and comments;
    EnvironmentBuildError naming the first one that is not a valid requirement."""
    seen: set[str] = set()
    for raw in requirements:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            raise EnvironmentBuildError(f"invalid requirement {line!r}: {error}", requirement=line) from None
        if requirement.url:  # `name @ url` could make uv (the server's user) read any local path or host
            raise EnvironmentBuildError(
                f"requirement {line!r} is a direct reference; requirements come from the package index",
                requirement=line,
            )
        requirement.name = canonicalize_name(requirement.name)
        seen.add(str(requirement))
    return tuple(sorted(seen))


def runtimes_hash() -> str:
    """The content hash of what is copied into every environment (`flightline/__init__.py` and the
    `flightline.runtimes` package)."""
    digest = hashlib.sha256()
    for path in _runtime_files():
        digest.update(str(path.relative_to(_package_root())).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class Environments:
    """The environment cache under `root`."""

    def __init__(self, root: Path | None = None, *, timeout: float = BUILD_TIMEOUT_S) -> None:
        self.root = root or default_root()
        self.timeout = timeout
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the sandbox user runs the interpreters inside
        (self.root / ".locks").mkdir(exist_ok=True)

    def family(
        self, name: str, *, python: str | None = None, progress: Progress | None = None
    ) -> Environment:
        """The environment of a runtime family from `FAMILIES`, built if missing."""
        try:
            requirements = FAMILIES[name]
        except KeyError:
            raise EnvironmentBuildError(
                f"unknown runtime family {name!r}; known: {sorted(FAMILIES)}"
            ) from None
        return self.ensure(requirements, python=python, progress=progress)

    def ensure(
        self, requirements: Sequence[str], *, python: str | None = None, progress: Progress | None = None
    ) -> Environment:
        """The environment for `requirements` on `python` (a version such as "3.12" or an interpreter
        path; default: the server's own interpreter), built if missing. Raises EnvironmentBuildError."""
        say = progress or (lambda _message: None)
        wanted = normalize([*requirements, *base_requirements()])
        interpreter, version = self._interpreter(python)
        key = self.key(wanted, version)
        found = self._existing(key)
        if found is not None:  # the common case: no lock, no uv
            return found
        with self._locked(key):
            found = self._existing(key)  # built by whoever held the lock before us
            if found is not None:
                return found
            self._build(key, interpreter, version, wanted, say)
        return Environment(key, self.root / key, version, wanted, created=True)

    def lookup(self, requirements: Sequence[str], *, python: str | None = None) -> Environment | None:
        """The environment for `requirements` if it is already built; never builds."""
        _, version = self._interpreter(python)
        return self._existing(self.key(normalize([*requirements, *base_requirements()]), version))

    def get(self, key: str) -> Environment | None:
        """The built environment of `key` (a ServerGroup's environment), or None."""
        return self._existing(key) if re.fullmatch(r"[0-9a-f]{32}", key) else None

    def require(self, need: Wanted) -> Environment:
        """The built environment a model needs; EnvironmentMissing saying how to build it (never builds)."""
        try:
            found = self.lookup(need.requirements, python=need.python)
        except EnvironmentBuildError as error:  # e.g. the Python it was built for is gone
            raise EnvironmentMissing(f"its environment is not available: {error}; {need.hint}") from None
        if found is None:
            what = f"the {need.family} environment" if need.family else "its environment"
            raise EnvironmentMissing(f"{what} is not built; {need.hint}")
        return found

    def key(self, requirements: tuple[str, ...], python_version: str) -> str:
        text = json.dumps(
            {"python": python_version, "requirements": requirements, "runtimes": runtimes_hash()},
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def built(self) -> list[Environment]:
        """Every complete environment in the cache."""
        return sorted(
            (env for child in self.root.iterdir() if (env := self._existing(child.name)) is not None),
            key=lambda env: env.key,
        )

    def stale(self) -> list[Environment]:
        """Built environments no server of this code can use: made for another `flightline.runtimes`
        (their key, recomputed from their manifest with today's runtimes hash, is no longer their name)."""
        return [env for env in self.built() if self.key(env.requirements, env.python_version) != env.key]

    def remove(self, env: Environment) -> bool:
        """Deletes a built environment unless a process runs from it; False when one does. Under the
        environment's lock, so a build of the same key waits."""
        with self._locked(env.key):
            if _processes_of(env.path):
                return False
            # Renamed first: a half-deleted folder with its manifest gone is never taken for a built one.
            doomed = Path(tempfile.mkdtemp(dir=self.root, prefix=f".remove-{env.key}-"))
            env.path.rename(doomed / env.key)
            shutil.rmtree(doomed, ignore_errors=True)
        # The lock file stays: unlinked, a builder already waiting on it would hold a lock nobody else sees.
        return True

    # -- building ---------------------------------------------------------------------------------

    def _existing(self, key: str) -> Environment | None:
        manifest = self.root / key / MANIFEST
        if key.startswith(".") or not manifest.is_file():
            return None
        meta = json.loads(manifest.read_text())
        return Environment(key, self.root / key, meta["python"], tuple(meta["requirements"]))

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        with open(self.root / ".locks" / f"{key}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
            yield

    def _build(
        self, key: str, interpreter: str, version: str, requirements: tuple[str, ...], say: Progress
    ) -> None:
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".build-{key}-"))
        try:
            say(f"creating a Python {version} environment")
            self._uv(
                ["venv", "--quiet", "--relocatable", "--python", interpreter, str(staging)], say, requirements
            )
            say(f"installing {len(requirements)} requirements: {' '.join(requirements)}")
            self._uv(
                ["pip", "install", "--no-build", "--python", str(staging / "bin" / "python"), *requirements],
                say,
                requirements,
            )
            _install_runtimes(staging)
            (staging / MANIFEST).write_text(json.dumps({"python": version, "requirements": requirements}))
            staging.chmod(0o755)
            staging.rename(self.root / key)
            say(f"environment ready: {self.root / key}")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _uv(self, args: list[str], say: Progress, requirements: tuple[str, ...]) -> None:
        env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
        env.pop("VIRTUAL_ENV", None)
        # Local wheel folders pip is configured with (e.g. this machine's CPU build of torch) are
        # searched by uv too; uv reads no pip configuration of its own.
        if "UV_FIND_LINKS" not in env:
            links = env.get("PIP_FIND_LINKS") or _pip_config("global.find-links")
            if links:
                env["UV_FIND_LINKS"] = ",".join(links.split())
        output: list[str] = []
        with subprocess.Popen(
            [_uv_bin(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        ) as proc:
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    output.append(line.rstrip())
                    if line.strip():
                        say(line.strip())  # may raise to cancel the build (a stopping server)
            except BaseException:
                proc.kill()
                raise
            try:
                code = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise EnvironmentBuildError(f"uv took over {self.timeout:g} s") from None
        if code != 0:
            raise _failure("\n".join(output), requirements)

    def _interpreter(self, python: str | None) -> tuple[str, str]:
        """(interpreter path, its full version) for a request; only interpreters already on this machine."""
        if python is None:
            info = sys.version_info
            return sys._base_executable, f"{info.major}.{info.minor}.{info.micro}"  # type: ignore[attr-defined]
        env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
        found = subprocess.run(
            [_uv_bin(), "python", "find", python], capture_output=True, text=True, env=env, check=False
        )
        path = found.stdout.strip()
        if found.returncode != 0 or not path:
            first = next((line for line in found.stderr.splitlines() if line.strip()), "not found")
            raise EnvironmentBuildError(
                f"Python {python} is not installed on this machine (downloads are off): {first.strip()}"
            )
        version = subprocess.run(
            [path, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return path, version


def _processes_of(path: Path) -> list[int]:
    """Ids of running processes whose command line names something under `path` (a runtime server runs
    `<env>/bin/python -m flightline.runtimes.server ...`)."""
    prefix = str(path.resolve()).encode() + b"/"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            arguments = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if any(argument.startswith(prefix) for argument in arguments):
            found.append(int(proc.name))
    return found


def _pip_config(name: str) -> str:
    """A value of pip's configuration files ("" when unset or pip is not there)."""
    try:
        found = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", name],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return found.stdout.strip() if found.returncode == 0 else ""


def _uv_bin() -> str:
    import uv

    return str(uv.find_uv_bin())


def _package_root() -> Path:
    return Path(flightline.__file__).parent


def _runtime_files() -> list[Path]:
    runtimes = Path(flightline.runtimes.__file__).parent
    files = [_package_root() / "__init__.py"]
    files += sorted(p for p in runtimes.rglob("*") if p.is_file() and p.suffix in (".py", ".typed"))
    return files


def _install_runtimes(env: Path) -> None:
    """Copies `flightline/__init__.py` and `flightline/runtimes/` into the environment's site-packages."""
    (site,) = env.glob("lib/python*/site-packages")
    for path in _runtime_files():
        target = site / "flightline" / path.relative_to(_package_root())
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def _failure(output: str, requirements: tuple[str, ...]) -> EnvironmentBuildError:
    """uv's failure as an error naming the requirement at fault, when its output names one."""
    reasons = [
        " ".join(line.split()).removeprefix("cause: ").removeprefix("╰─▶ ")
        for line in output.splitlines()
        if line.strip()
    ]
    reason = next((r for r in reasons if r.startswith("Because")), reasons[-1] if reasons else "uv failed")
    text = re.sub(r"[-_.]+", "-", output.lower())
    for requirement in requirements:
        name = canonicalize_name(Requirement(requirement).name)
        if re.search(rf"(?<![a-z0-9-]){re.escape(name)}(?![a-z0-9])", text):
            return EnvironmentBuildError(
                f"cannot install requirement {requirement!r}: {reason[:500]}", requirement
            )
    return EnvironmentBuildError(f"cannot build the environment: {reason[:500]}")
