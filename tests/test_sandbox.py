"""The sandbox against real child processes: each test starts a sandboxed Python that tries what user code
would try (read the server's secrets, environ, database and data folder, write its artifact, use more
memory or CPU than allowed) and reports what it saw.

As root (CI), processes run as the unprivileged `flightline-runtime` user (or a trust group's pool user)
and every assertion applies.
Without root there is no user to switch to; the uid-dependent assertions are skipped, saying so."""

from __future__ import annotations

import grp
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flightline.server.hosting.sandbox import (
    DEFAULT_USER,
    GIB,
    POOL_GROUP,
    POOL_PREFIX,
    Limits,
    Sandbox,
    SandboxError,
    private_dir,
    private_file,
)

AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not AS_ROOT,
    reason="not root: sandboxed processes run as the server's own user, so uid isolation "
    "(/proc/<pid>/environ, owner-only files, read-only artifact) cannot be asserted",
)
SECRET = "s3cr3t-value-the-child-must-not-see"

PROBE = textwrap.dedent("""
    import json, os, resource, sys

    parent, database, data_dir, public, artifact = sys.argv[1:6]
    report = {}

    def attempt(key, action):
        try:
            report[key] = action()
        except OSError as error:
            report[key] = "denied:" + type(error).__name__

    attempt("parent_environ", lambda: open(f"/proc/{parent}/environ", "rb").read().decode("latin-1"))
    attempt("database", lambda: open(database, "rb").read().decode("latin-1"))
    attempt("data_dir", lambda: os.listdir(data_dir))
    attempt("public", lambda: open(public).read())
    attempt("artifact_read", lambda: open(artifact).read())
    attempt("artifact_write", lambda: open(artifact, "a").write("tampered"))
    report["environ"] = dict(os.environ)
    report["uid"] = os.getuid()
    report["groups"] = os.getgroups()
    report["cwd"] = os.getcwd()
    report["own_session"] = os.getsid(0) == os.getpid() == os.getpgid(0)
    report["limits"] = {
        name: resource.getrlimit(getattr(resource, "RLIMIT_" + name))
        for name in ("AS", "CPU", "NOFILE", "CORE")
    }
    print(json.dumps(report))
""")


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox.temporary()
    yield box
    box.close()


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder every user can traverse, like /var/lib: pytest's own tmp_path is owner-only, which would
    hide the files from the child whatever their modes, and prove nothing about them."""
    base = Path(tempfile.mkdtemp(prefix="flightline-sandbox-test-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def run(sandbox: Sandbox, argv: list[str], name: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    launch = sandbox.launch(argv, name=name, **kwargs)
    return subprocess.run(
        launch.args, **launch.kwargs, capture_output=True, text=True, timeout=60, check=False
    )


def probe(sandbox: Sandbox, world: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], Path]:
    monkeypatch.setenv("FLIGHTLINE_PROBE_SECRET", SECRET)
    monkeypatch.setenv("DATABRICKS_TOKEN", SECRET)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # harmless, but not on the allow-list either
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    data = private_dir(world / "data")
    database = data / "flightline.db"
    database.write_text(f"registry token {SECRET}")
    private_file(database)
    (data / "artifacts").mkdir()
    stored = data / "artifacts" / "model.txt"
    stored.write_text("weights")
    public = world / "public.txt"
    public.write_text("anyone may read this")
    artifact = sandbox.share(stored, "probe")
    args = [str(os.getpid()), str(database), str(data), str(public), str(artifact)]
    result = run(sandbox, [sys.executable, "-c", PROBE, *args], "probe", extra_env={"MODEL_OPTION": "x"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert SECRET not in json.dumps(report["environ"])
    if AS_ROOT:  # without root the child may read the server's files and /proc: that is the laptop case
        assert SECRET not in result.stdout
    return report, stored


def test_environment_is_the_allow_list_plus_extras(
    sandbox: Sandbox, world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report, _ = probe(sandbox, world, monkeypatch)
    environ = report["environ"]
    workdir = str(sandbox.root / "work" / "probe")
    assert environ["HOME"] == workdir == report["cwd"]
    assert environ["TMPDIR"] == f"{workdir}/tmp"
    assert environ["LC_ALL"] == "C.UTF-8"
    assert environ["MODEL_OPTION"] == "x"
    assert environ["PATH"].startswith(f"{Path(sys.executable).parent}:")
    allowed = {"PATH", "HOME", "TMPDIR", "PYTHONUNBUFFERED", "PYTHONNOUSERSITE", "PYTHONDONTWRITEBYTECODE"}
    extra = {
        name for name in environ if not name.startswith("LC_") and name not in {"LANG", "LANGUAGE", "TZ"}
    }
    # The interpreter itself may add LC_CTYPE coercion; nothing else of the server's environment arrives.
    assert extra - allowed == {"MODEL_OPTION"}


def test_limits_session_and_core_dumps_apply(
    sandbox: Sandbox, world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report, _ = probe(sandbox, world, monkeypatch)
    assert report["own_session"] is True
    limits = report["limits"]
    default = Limits()
    assert limits["AS"] == [default.memory_bytes, default.memory_bytes]
    assert limits["NOFILE"] == [default.open_files, default.open_files]
    assert limits["CORE"] == [0, 0]
    assert limits["CPU"] == [-1, -1]  # off by default for long-lived servers


def test_child_reads_its_artifact_and_a_public_file(
    sandbox: Sandbox, world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report, _ = probe(sandbox, world, monkeypatch)
    assert report["artifact_read"].startswith("weights")
    assert report["public"] == "anyone may read this"  # the denials below are the modes' doing


@needs_root
def test_child_cannot_read_the_servers_secrets_nor_write_its_artifact(
    sandbox: Sandbox, world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report, stored = probe(sandbox, world, monkeypatch)
    assert report["uid"] != 0 and report["uid"] == sandbox.uid
    assert report["groups"] == []  # no supplementary groups: root's are dropped
    assert report["parent_environ"] == "denied:PermissionError"
    assert report["database"] == "denied:PermissionError"
    assert report["data_dir"] == "denied:PermissionError"
    assert report["artifact_write"] == "denied:PermissionError"
    assert stored.read_text() == "weights"  # a hard link shares the inode: the original is untouched too


@needs_root
def test_private_workdir_belongs_to_the_sandbox_user(sandbox: Sandbox) -> None:
    workdir = sandbox.workdir("owner")
    info = workdir.stat()
    assert sandbox.isolates_user and sandbox.user == DEFAULT_USER
    assert info.st_uid == sandbox.uid and stat.S_IMODE(info.st_mode) == 0o700
    assert stat.S_IMODE((sandbox.root / "shared").stat().st_mode) == 0o711  # traversable, not listable


def test_memory_beyond_the_limit_fails_with_memory_error(sandbox: Sandbox) -> None:
    hog = textwrap.dedent("""
        try:
            b = bytearray(2 << 30)
        except MemoryError:
            print("MemoryError")
        else:
            print("allocated")
    """)
    result = run(sandbox, [sys.executable, "-c", hog], "hog", limits=Limits(memory_bytes=GIB))
    assert result.stdout.strip() == "MemoryError", result.stderr
    # The same allocation is fine under the default limit: it is the limit that stopped it.
    result = run(sandbox, [sys.executable, "-c", hog], "hog")
    assert result.stdout.strip() == "allocated", result.stderr


def test_cpu_bound_child_is_stopped_at_its_cpu_limit(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = run(sandbox, [sys.executable, "-c", "while True: pass"], "spin", limits=Limits(cpu_seconds=1))
    assert result.returncode == -signal.SIGXCPU
    assert time.monotonic() - started < 20


def test_open_files_are_limited(sandbox: Sandbox) -> None:
    opener = textwrap.dedent("""
        import os
        try:
            fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(100)]
        except OSError as error:
            print(error.errno)
    """)
    result = run(sandbox, [sys.executable, "-c", opener], "files", limits=Limits(open_files=32))
    assert result.stdout.strip() == "24", result.stderr  # EMFILE


def test_share_of_a_folder_is_a_readable_copy(sandbox: Sandbox, tmp_path: Path) -> None:
    source = tmp_path / "model"
    (source / "variables").mkdir(parents=True)
    (source / "variables" / "data").write_text("w")
    private_dir(source / "variables")
    shared = sandbox.share(source, "folder")
    assert (shared / "variables" / "data").read_text() == "w"
    assert stat.S_IMODE((shared / "variables").stat().st_mode) == 0o755
    sandbox.unshare(shared)
    assert not shared.exists()


def test_bad_names_are_refused(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match="not a valid sandbox name"):
        sandbox.workdir("../escape")
    with pytest.raises(SandboxError, match="not an environment variable name"):
        sandbox.launch([sys.executable, "-c", "pass"], name="x", extra_env={"A=B": "1"})


@needs_root
def test_an_interpreter_the_user_cannot_reach_is_a_clear_error(sandbox: Sandbox, world: Path) -> None:
    hidden = private_dir(world / "hidden")
    python = hidden / "python3"
    shutil.copy(sys._base_executable, python)  # type: ignore[attr-defined]
    with pytest.raises(SandboxError, match=f"cannot run {python}.*traverse on {hidden}"):
        sandbox.launch([str(python), "-c", "pass"], name="hidden")


def test_without_root_no_user_is_chosen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    box = Sandbox(tmp_path / "box")
    assert box.user is None and not box.isolates_user
    with pytest.raises(SandboxError, match="needs root"):
        Sandbox(tmp_path / "other", user=DEFAULT_USER)


@needs_root
def test_a_reused_workdir_is_left_alone(sandbox: Sandbox, world: Path) -> None:
    # The process owns its folder and may plant a symlink there; the server's chown on a restart would
    # follow it and hand the target (any file of the server) to the sandbox user.
    victim = world / "victim"
    victim.write_text("server file")
    folder = sandbox.workdir("again")
    shutil.rmtree(folder / "tmp")
    (folder / "tmp").symlink_to(victim)
    assert sandbox.workdir("again") == folder
    assert victim.stat().st_uid == 0


def test_without_user_isolation_there_is_no_pool_user() -> None:
    with Sandbox.temporary(user=None) as box:
        assert box.user_for("ws-1") is None
        assert box.uid_of(None) == os.geteuid()
        assert box.workdir("plain").stat().st_uid == os.geteuid()


@needs_root
def test_each_trust_group_gets_its_own_pool_user(sandbox: Sandbox) -> None:
    first, second = sandbox.user_for("ws-1"), sandbox.user_for("ws-2")
    assert first is not None and second is not None and first.startswith(POOL_PREFIX)
    assert sandbox.user_for("ws-1") == first != second  # stable for the sandbox's life
    uids = {sandbox.uid_of(first), sandbox.uid_of(second), sandbox.uid}
    assert len(uids) == 3 and 0 not in uids
    assert sandbox.workdir("one", user=first).stat().st_uid == sandbox.uid_of(first)
    with pytest.raises(SandboxError, match="not a user of this sandbox"):
        sandbox.workdir("root-owned", user="root")


@needs_root
def test_a_pool_users_process_cannot_reach_another_groups_process(sandbox: Sandbox) -> None:
    other = sandbox.user_for("ws-other")
    launch = sandbox.launch([sys.executable, "-c", "import sys; sys.stdin.read()"], name="target", user=other)
    target = subprocess.Popen(launch.args, **launch.kwargs, stdin=subprocess.PIPE)
    try:
        peek = textwrap.dedent("""
            import json, os, sys
            def attempt(action):
                try:
                    return action()
                except OSError as error:
                    return "denied:" + type(error).__name__
            print(json.dumps({
                "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                "workdir": attempt(lambda: os.listdir(sys.argv[1])),
                "environ": attempt(lambda: open(f"/proc/{sys.argv[2]}/environ", "rb").read().hex()),
            }))
        """)
        argv = [sys.executable, "-c", peek, str(launch.workdir), str(target.pid)]
        result = run(sandbox, argv, "peek", user=sandbox.user_for("ws-peek"))
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["uid"] == sandbox.uid_of(sandbox.user_for("ws-peek")) != sandbox.uid_of(other)
        assert report["gid"] == grp.getgrnam(POOL_GROUP).gr_gid and report["groups"] == []
        assert report["workdir"] == "denied:PermissionError"
        assert report["environ"] == "denied:PermissionError"
        # The same peek as the target's own user sees its folder: the refusal above is the uid's doing.
        result = run(sandbox, argv, "peek-self", user=other)
        assert json.loads(result.stdout)["workdir"] == ["tmp"]
    finally:
        target.kill()
        target.wait()
