"""Environments built by real uv runs (packages from uv's cache or the index), used by real processes."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import flightline.runtimes
from flightline.server.hosting.environments import (
    FAMILIES,
    Environment,
    EnvironmentBuildError,
    Environments,
    normalize,
)
from flightline.server.hosting.sandbox import Sandbox

PINNED = "six==1.16.0"


@pytest.fixture(scope="module")
def environments() -> Iterator[Environments]:
    # In the system temp dir, not pytest's owner-only tmp_path: the sandbox user must reach the envs.
    root = Path(tempfile.mkdtemp(prefix="flightline-envs-test-"))
    root.chmod(0o755)
    yield Environments(root / "envs")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def six_env(environments: Environments) -> Environment:
    return environments.ensure([PINNED])


def leftovers(environments: Environments) -> list[str]:
    return [p.name for p in environments.root.iterdir() if p.name.startswith(".build-")]


def test_a_pinned_version_other_than_the_servers_is_what_the_env_imports(six_env: Environment) -> None:
    assert importlib.metadata.version("six") != "1.16.0"  # else this test would prove nothing
    out = subprocess.run(
        [str(six_env.python), "-c", "import six; print(six.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "1.16.0"
    assert PINNED in six_env.requirements and any(r.startswith("pyarrow==") for r in six_env.requirements)


def test_a_second_request_reuses_the_cached_env(environments: Environments, six_env: Environment) -> None:
    started = time.monotonic()
    again = environments.ensure(["  SIX == 1.16.0  # the same pin, spelled differently", ""])
    assert time.monotonic() - started < 1.0
    assert again.path == six_env.path and not again.created
    assert [e.key for e in environments.built()].count(six_env.key) == 1


def test_concurrent_builders_of_one_env_make_one(environments: Environments) -> None:
    results: list[Environment | BaseException] = []

    def build() -> None:
        try:
            results.append(environments.ensure(["six==1.15.0"]))
        except BaseException as error:
            results.append(error)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    envs = [r for r in results if isinstance(r, Environment)]
    assert len(envs) == 4, results
    assert len({e.path for e in envs}) == 1
    assert sum(e.created for e in envs) == 1
    assert leftovers(environments) == []


def test_an_unresolvable_requirement_is_named_and_leaves_nothing(environments: Environments) -> None:
    before = sorted(p.name for p in environments.root.iterdir())
    with pytest.raises(
        EnvironmentBuildError, match=re.escape("flightline-no-such-package-xyz==1.0")
    ) as caught:
        environments.ensure(["six==1.16.0", "flightline-no-such-package-xyz==1.0"])
    assert caught.value.requirement == "flightline-no-such-package-xyz==1.0"
    assert "not found" in str(caught.value)
    after = sorted(p.name for p in environments.root.iterdir() if p.name != ".locks")
    assert after == [name for name in before if name != ".locks"]


def test_an_invalid_requirement_is_named(environments: Environments) -> None:
    with pytest.raises(EnvironmentBuildError, match="invalid requirement 'six=>1'") as caught:
        environments.ensure(["six=>1"])
    assert caught.value.requirement == "six=>1"


def test_a_python_that_is_not_installed_is_a_clear_error(environments: Environments) -> None:
    with pytest.raises(EnvironmentBuildError, match=r"Python 3\.4 is not installed on this machine"):
        environments.ensure([PINNED], python="3.4")


def test_a_sandboxed_process_runs_flightline_runtimes_from_the_env(six_env: Environment) -> None:
    # A runtime served through the runtimes package's own request path (Host), inside the env.
    script = textwrap.dedent("""
        import pyarrow as pa, pyarrow.compute as pc, six, flightline.runtimes
        from flightline.runtimes.base import Runtime
        from flightline.runtimes.host import Host

        class Double(Runtime):
            name = "double"
            input_schema = pa.schema([("x", pa.int64())])
            output_schema = pa.schema([("y", pa.int64())])
            @classmethod
            def load(cls, spec):
                return cls()
            def infer(self, batch):
                return pa.record_batch([pc.multiply(batch.column(0), 2)], names=["y"])

        out = Host(Double()).run(pa.record_batch([pa.array([1, 2])], names=["x"]))
        print(six.__version__, flightline.runtimes.__file__, out.column(0).to_pylist())
        try:
            import flightline.server
        except ImportError:
            print("no server")
    """)
    sandbox = Sandbox.temporary()
    try:
        launch = sandbox.launch([str(six_env.python), "-c", script], name="env-probe")
        out = subprocess.run(
            launch.args, **launch.kwargs, capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        sandbox.close()
    assert out.returncode == 0, out.stderr
    version, location, doubled = out.stdout.splitlines()[0].split(" ", 2)
    assert version == "1.16.0" and doubled == "[2, 4]"
    assert Path(location).is_relative_to(six_env.path)
    assert out.stdout.splitlines()[1] == "no server"


def test_the_runtimes_package_does_not_import_the_server() -> None:
    root = Path(flightline.runtimes.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n == "flightline.server" or n.startswith("flightline.server.") for n in names), (
                path
            )


def test_family_table_and_normalization() -> None:
    assert {"onnx", "sklearn", "python"} <= set(FAMILIES)
    assert all("==" in requirement for family in FAMILIES.values() for requirement in family)
    assert normalize(["Six==1.16.0", "six == 1.16.0", "# comment", "numpy>=1 ; python_version>'3'"]) == (
        'numpy>=1; python_version > "3"',
        "six==1.16.0",
    )


def test_cli_installs_and_lists_families(environments: Environments) -> None:
    from typer.testing import CliRunner

    from flightline.server.cli import app

    runner = CliRunner()
    refused = runner.invoke(
        app, ["runtimes", "install", "python", "nope", "--envs-dir", str(environments.root)]
    )
    assert refused.exit_code == 1 and "unknown runtime family 'nope'" in refused.output
    assert environments.lookup(FAMILIES["python"]) is None  # nothing built when one name is wrong
    listed = runner.invoke(app, ["runtimes", "list", "--envs-dir", str(environments.root)])
    assert listed.exit_code == 0
    assert "not built (flightline runtimes install python)" in " ".join(listed.output.split())


def test_prune_removes_environments_of_other_runtimes_but_not_one_in_use(
    environments: Environments, six_env: Environment
) -> None:
    """A copy of a built environment under another key is what an older `flightline.runtimes` left: the
    key no longer matches its manifest. Prune keeps it while a process runs from it, then removes it,
    and leaves the current environments alone."""
    from typer.testing import CliRunner

    from flightline.server.cli import app

    old = environments.root / ("0" * 32)
    shutil.copytree(six_env.path, old, symlinks=True)
    assert [env.key for env in environments.stale()] == [old.name]
    prune = ["runtimes", "prune", "--envs-dir", str(environments.root)]
    runner = CliRunner()
    listed = runner.invoke(app, [*prune, "--dry-run"])
    assert listed.exit_code == 0 and f"would remove {old.name}" in listed.output and old.is_dir()
    user = subprocess.Popen([str(old / "bin" / "python"), "-c", "import time; time.sleep(60)"])
    try:
        kept = runner.invoke(app, prune)
        assert kept.exit_code == 0 and "a running process uses it" in kept.output and old.is_dir()
    finally:
        user.kill()
        user.wait()
    removed = runner.invoke(app, prune)
    assert removed.exit_code == 0 and f"removed {old.name}" in removed.output, removed.output
    assert not old.exists() and environments.stale() == []
    assert environments.lookup([PINNED]) == environments.get(six_env.key)  # the current one is untouched
    assert not [p for p in environments.root.iterdir() if p.name.startswith(".remove-")]
