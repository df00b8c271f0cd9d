"""Model uploads (from a registry or streamed directly), versions and the framework catalog."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from flightline.runtimes.base import ModelLoadError
from flightline.runtimes.catalog import FRAMEWORKS, FrameworkSpec, UnknownFramework, get_framework
from flightline.runtimes.plugins import for_framework, load_attribute, plugin, serving
from flightline.runtimes.rules import check_schema
from flightline.server.errors import InvalidArgument
from flightline.server.hosting.environments import (
    FAMILIES,
    EnvironmentBuildError,
    EnvironmentMissing,
    Environments,
    normalize,
    wanted,
)
from flightline.server.observability import DEFAULT, Observer
from flightline.server.services.archives import zip_dir
from flightline.server.services.changes import Changes
from flightline.server.services.names import check_dns_name, parse_schema
from flightline.server.services.prepare import Converters, check_artifact, prepare
from flightline.server.services.registries import RegistryService
from flightline.server.store.artifacts import ArtifactStore, StoredArtifact
from flightline.server.store.metadata import VISIBILITIES, MetadataStore
from flightline.server.store.records import Conversion, Model, ModelStatus, ModelVersion

log = logging.getLogger(__name__)

TERMINAL = frozenset({ModelStatus.READY, ModelStatus.ERROR})


class ModelService:
    """Uploads store the bytes inside the RPC, then return with the version PENDING_CONVERSION while
    preparation runs on a bounded pool (`workers` at a time; queued versions stay PENDING_CONVERSION,
    running ones are CONVERTING). Preparation works in a folder of its own under work_dir/prepare/:
    the input is a private copy of the stored artifact (nothing links into the store) and the
    converter writes to a separate output folder."""

    observer: Observer = DEFAULT  # the App sets its own

    def __init__(
        self,
        store: MetadataStore,
        artifacts: ArtifactStore,
        registries: RegistryService,
        work_dir: Path,
        *,
        workers: int = 2,
        changes: Changes | None = None,
        environments: Environments | None = None,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.registries = registries
        self.environments = environments or Environments()
        self.work_dir = work_dir
        self.changes = changes or Changes()
        work_dir.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare")
        self._converters = Converters()
        self._closing = False

    @property
    def prepare_dir(self) -> Path:
        """Where preparations and upload checks work; nothing in it outlives a server run."""
        return self.work_dir / "prepare"

    def clean_work(self) -> None:
        """At start-up: work folders of preparations a crash interrupted."""
        shutil.rmtree(self.prepare_dir, ignore_errors=True)
        self.prepare_dir.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        """Drops queued preparations and ends running conversions: those versions stay as they are
        and end ERROR ("interrupted by a server restart") at the next start."""
        self._closing = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._converters.kill_all()
        self._pool.shutdown(wait=True)

    def frameworks(self) -> tuple[FrameworkSpec, ...]:
        return FRAMEWORKS

    def upload_from_registry(
        self,
        *,
        registry_id: str,
        path: str,
        workspace_id: int,
        name: str,
        visibility: str,
        conversion: Conversion,
        progress: Callable[[int], None] | None = None,
    ) -> ModelVersion:
        framework = self._check_request(workspace_id, name, visibility, conversion)
        if not path:
            raise InvalidArgument(
                "path is empty: pass a path from ListModelVersionArtifacts or models:/<name>/<version>"
            )
        with self._folder() as tmp:
            report = progress or _log_progress(f"{name} from registry {registry_id}")
            local = self.registries.download(registry_id, workspace_id, path, tmp / "download", report)
            if local.is_dir():
                local = zip_dir(local, tmp / f"{local.name}.zip")
            check_artifact(framework, local)
            stored = self.artifacts.put_file(local)
        source = f"registry:{registry_id}:{path}"
        return self._record(workspace_id, name, visibility, framework, conversion, source, stored, local.name)

    def upload(
        self,
        *,
        workspace_id: int,
        name: str,
        visibility: str,
        conversion: Conversion,
        filename: str,
        chunks: Iterable[bytes],
        size_bytes: int | None,
        sha256: str | None,
    ) -> ModelVersion:
        framework = self._check_request(workspace_id, name, visibility, conversion)
        if size_bytes is None or size_bytes < 1:
            raise InvalidArgument(
                "metadata.size_bytes is required: the size of the whole file in bytes, at least 1"
            )
        stored = self.artifacts.put(chunks, expected_size=size_bytes, expected_sha256=sha256)
        try:
            with self._folder() as tmp:
                check_artifact(framework, self._copy_in(stored.sha256, tmp / "in", filename))
        except InvalidArgument:
            if stored.created:  # never delete bytes an earlier upload stored
                self.artifacts.delete(stored.sha256)
            raise
        source = f"upload:{filename}"
        return self._record(workspace_id, name, visibility, framework, conversion, source, stored, filename)

    def get_model(self, model_id: int) -> Model:
        return self.store.get_model(model_id)

    def list_models(self, workspace_id: int, limit: int, after_id: int) -> list[Model]:
        return self.store.list_models(workspace_id, limit, after_id)

    def latest_versions(self, model_ids: list[int]) -> dict[int, ModelVersion]:
        return self.store.latest_versions(model_ids)

    def get_version(self, model_id: int, version: int = 0) -> ModelVersion:
        return self.store.get_model_version(model_id, version)

    def watch_version(
        self, model_id: int, version: int, active: Callable[[], bool]
    ) -> Iterator[ModelVersion]:
        """The version's current state, then each change, until READY or ERROR."""
        number = version or self.store.get_model_version(model_id, 0).version  # latest: pin it now
        return self.changes.watch(
            lambda: self.store.get_model_version(model_id, number),
            lambda v: (v.status, v.status_reason, v.updated_at),
            lambda v: v.status in TERMINAL,
            active=active,
        )

    def list_versions(self, model_id: int, limit: int, after_version: int) -> list[ModelVersion]:
        return self.store.list_model_versions(model_id, limit, after_version)

    def fail_interrupted(self) -> None:
        """At start-up: uploads a crash interrupted never finish; say so rather than leave them pending."""
        # Only this instance's: another server on the same database may be preparing its own right now.
        statuses = (ModelStatus.PENDING_CONVERSION, ModelStatus.CONVERTING)
        for v in self.store.versions_in_status(*statuses, owner=self.store.owner):
            self.store.update_model_version(
                v.model_id,
                v.version,
                status=ModelStatus.ERROR,
                status_reason="interrupted by a server restart; upload it again",
            )
        self.changes.notify()

    def _check_request(
        self, workspace_id: int, name: str, visibility: str, conversion: Conversion
    ) -> FrameworkSpec:
        check_dns_name("model", name)
        if visibility not in VISIBILITIES:
            raise InvalidArgument(f"visibility must be one of {VISIBILITIES}, not {visibility!r}")
        try:
            framework = get_framework(conversion.framework)
        except UnknownFramework as exc:
            raise InvalidArgument(str(exc)) from exc
        accepting = serving(framework.name)
        ragged = accepting is not None and accepting.variable_lists
        for field in ("input_schema", "output_schema"):
            schema = parse_schema(f"conversion.{field}", getattr(conversion, field))
            if schema is not None:
                check_schema(f"conversion.{field}", schema, variable_lists=ragged)
        self.store.get_workspace(workspace_id)
        return framework

    @contextlib.contextmanager
    def _folder(self) -> Iterator[Path]:
        self.prepare_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.prepare_dir) as tmp:
            yield Path(tmp)

    def _copy_in(self, sha256: str, folder: Path, filename: str) -> Path:
        """A private copy named like the upload, since runtimes and converters look at suffixes. A copy,
        never a link: whatever writes into the work folder (a converter running the user's pickle)
        must not reach a stored artifact."""
        cached = self.artifacts.local_path(sha256, self.work_dir / "cache")
        folder.mkdir(parents=True, exist_ok=True)
        named = folder / (Path(filename).name or "artifact")
        shutil.copyfile(cached, named)
        return named

    def _record(
        self,
        workspace_id: int,
        name: str,
        visibility: str,
        framework: FrameworkSpec,
        conversion: Conversion,
        source: str,
        stored: StoredArtifact,
        filename: str,
    ) -> ModelVersion:
        version = self.store.add_model_version(
            workspace_id=workspace_id,
            name=name,
            visibility=visibility,
            framework=framework.name,
            runtime=framework.runtime,
            native=framework.native,
            status=ModelStatus.PENDING_CONVERSION,
            conversion=conversion,
            source=source,
            sha256=stored.sha256,
            size_bytes=stored.size,
            original_sha256=stored.sha256,
        )
        self.changes.notify()
        self._pool.submit(self._prepare, version, framework, filename)
        return version

    def _prepare(self, version: ModelVersion, framework: FrameworkSpec, filename: str) -> None:
        try:
            # `version` is the record as uploaded: its size is the upload's, not the converted artifact's.
            self.observer.upload_finished(self._prepared(version, framework, filename), version.size_bytes)
        except Exception:  # the store itself failed; the version ends ERROR at the next start
            log.exception("recording model %s v%d failed", version.model_name, version.version)
        finally:
            self.changes.notify()

    def _prepared(self, version: ModelVersion, framework: FrameworkSpec, filename: str) -> ModelVersion:
        key = (version.model_id, version.version)
        self.store.update_model_version(*key, status=ModelStatus.CONVERTING)
        self.changes.notify()
        try:
            accepting = for_framework(framework.name)
            with self._folder() as tmp:
                local = self._copy_in(version.sha256, tmp / "in", filename)
                if accepting.own_requirements is not None:
                    version = self._own_requirements(version, accepting.own_requirements, local)
                conversion = version.conversion
                # A model with its own requirements gets its environment now, on this pool (the version
                # is CONVERTING meanwhile), and is inspected by that environment's interpreter.
                python = self._environment(version, accepting.name) or sys.executable
                output = tmp / "out"
                output.mkdir()
                prepared = prepare(
                    framework,
                    local,
                    output,
                    input_schema=parse_schema("input_schema", conversion.input_schema),
                    output_schema=parse_schema("output_schema", conversion.output_schema),
                    options=dict(conversion.options),
                    converters=self._converters,
                    python=python,
                )
                what = f"{version.model_name} v{version.version}"
                log.info("model %s prepared by the interpreter of %s", what, prepared.prefix or "?")
                # Converted, it is served by another plug-in, whose environment the deploy looks up.
                self._environment(version, prepared.runtime)
                stored = self.artifacts.put_file(prepared.artifact.resolve())
        except Exception as exc:  # whatever happened, the version must not stay CONVERTING
            if self._closing:  # killed by close(): the next start says "interrupted"
                return version
            if not isinstance(exc, (ModelLoadError, EnvironmentBuildError)):
                log.exception("preparing model %s v%d failed", version.model_name, version.version)
            known = isinstance(exc, (ModelLoadError, EnvironmentBuildError))
            reason = str(exc) if known else f"internal error: {type(exc).__name__}"
            return self.store.update_model_version(*key, status=ModelStatus.ERROR, status_reason=reason)
        return self.store.update_model_version(
            *key,
            status=ModelStatus.READY,
            runtime=prepared.runtime,
            native=prepared.native,
            sha256=stored.sha256,
            size_bytes=stored.size,
            conversion_note=prepared.note,
            input_schema=_ipc(prepared.input_schema),
            output_schema=_ipc(prepared.output_schema),
        )

    def _own_requirements(self, version: ModelVersion, reader: str, archive: Path) -> ModelVersion:
        """Records what the model's archive says it needs (its plug-in's reader: text entries only, no
        model code runs here) together with the upload's own: a requirement the upload names replaces
        the archive's of the same package, and the upload's python_version wins. A deploy derives the
        environment from what is recorded, as for any model."""
        read: Callable[[Path], tuple[tuple[str, ...], str]] = load_attribute(reader)
        from_archive, python = read(archive)
        conversion = version.conversion
        given = {canonicalize_name(Requirement(r).name) for r in normalize(conversion.requirements)}
        try:
            listed = normalize(from_archive)
        except EnvironmentBuildError as error:
            raise ModelLoadError(f"requirements.txt in the archive: {error}") from None
        kept = [r for r in listed if canonicalize_name(Requirement(r).name) not in given]
        return self.store.update_model_version(
            version.model_id,
            version.version,
            requirements=(*conversion.requirements, *kept),
            python_version=conversion.python_version or python,
        )

    def family_built(self, family: str) -> bool:
        """Whether a runtime family's environment is built (`flightline runtimes install FAMILY`)."""
        return family in FAMILIES and self.environments.lookup(FAMILIES[family]) is not None

    def _building(self, what: str, line: str) -> None:
        """A line of uv's progress; a stopping server cancels the build (nothing half-built stays)."""
        if self._closing:
            raise ModelLoadError("interrupted by a server stop")
        log.info("environment of %s: %s", what, line)

    def _environment(self, version: ModelVersion, runtime: str) -> str | None:
        """Builds (or finds) the environment of `version` served by `runtime` when it needs one of its
        own; returns its interpreter, or None for the server's. A family environment is never built here
        (`flightline runtimes install` does that): without it the version ends ERROR saying so. Raises
        EnvironmentBuildError naming the requirement that cannot be installed."""
        need = wanted(plugin(runtime), version.conversion.requirements, version.conversion.python_version)
        if need is None:
            return None
        if need.family is not None:
            try:
                return str(self.environments.require(need).python)
            except EnvironmentMissing as missing:
                raise ModelLoadError(str(missing)) from None
        what = f"model {version.model_name} v{version.version}"
        started = time.monotonic()
        metrics = self.observer.metrics
        try:
            env = self.environments.ensure(
                need.requirements,
                python=need.python,
                progress=lambda line: self._building(what, line),
            )
        except EnvironmentBuildError as error:
            metrics.environment_builds.labels(framework=version.framework, status="error").inc()
            log.warning("environment of %s cannot be built: %s", what, error)
            raise
        if env.created:
            seconds = time.monotonic() - started
            metrics.environment_builds.labels(framework=version.framework, status="ok").inc()
            metrics.environment_build_seconds.labels(framework=version.framework).observe(seconds)
            log.info("environment of %s built in %.1f s: %s", what, seconds, env.key)
        return str(env.python)


def _ipc(schema: pa.Schema | None) -> bytes:
    return schema.serialize().to_pybytes() if schema is not None else b""


def _log_progress(what: str, every: int = 64 << 20) -> Callable[[int], None]:
    """Logs a long download every `every` bytes, so operators see it move."""
    logged = 0

    def report(done: int) -> None:
        nonlocal logged
        if done - logged >= every:
            logged = done
            log.info("downloading %s: %d MiB", what, done >> 20)

    return report
