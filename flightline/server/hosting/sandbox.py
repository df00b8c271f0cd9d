"""How every process that runs user code is started: runtime servers, converters, upload-time checks.

A `Sandbox` turns an argv into what `subprocess.Popen` needs (`Launch`):

- an environment built from an allow-list (`sandbox_environment`), never from the server's own
  environment minus what looks secret: PATH (a fixed system PATH after the interpreter's own bin
  folder), HOME and TMPDIR in the process's private working folder, LANG/LANGUAGE/LC_*/TZ copied from
  the server, PYTHONUNBUFFERED/PYTHONNOUSERSITE/PYTHONDONTWRITEBYTECODE, and the extras the caller names;
- when the server runs as root, the unprivileged system user `flightline-runtime` (created on demand
  with `useradd --system` when missing; `.ci/setup` creates it ahead of time) with no supplementary
  groups, so the process cannot read the server's `/proc/<pid>/environ` nor the owner-only data folder
  and database (`private_dir` / `private_file`);
- per trust group, a user of its own from a small pool (`user_for`): `flightline-rt-<n>`, all with the
  primary group `flightline-sandbox` (the group `.ci/setup` grants traverse on the interpreter's folders),
  so the code of one workspace cannot read another's working folder, connect to its socket or read its
  `/proc/<pid>`;
- resource limits (`Limits`), set by a tiny launcher (the target interpreter itself, run with `-I -S`)
  that calls setrlimit and then execs the target; no `preexec_fn`, which is unsafe in a threaded server;
- its own session (so a stop reaches the whole process group) and a private working folder as cwd;
- read-only inputs: `share()` hands a file or folder over as a server-owned, world-readable copy (a hard
  link where possible) in a folder the sandbox user can traverse but not list.

Layout under the sandbox root (server-owned, 0711): `work/<name>/` private working folders (owned by the
sandbox user, 0700) and `shared/<name>-<random>/` read-only hand-overs (server-owned, 0755 / 0644).

Without root (a developer's laptop) there is no user to switch to: the allow-listed environment, the
limits, the session and the private working folder still apply, but the process runs as the server's
user and could read whatever that user can. `Sandbox.isolates_user` says which case applies.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

DEFAULT_USER: Final = "flightline-runtime"
POOL_PREFIX: Final = "flightline-rt-"
POOL_GROUP: Final = "flightline-sandbox"  # the primary group of every pool user
POOL_SIZE: Final = 256  # trust groups with a user of their own per server process; more is refused
SYSTEM_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Copied from the server's environment when set: how text and time are shown, nothing more.
_PASSED_THROUGH: Final = re.compile(r"^(LANG|LANGUAGE|TZ|LC_[A-Z_]+)$")
_FIXED: Final = {"PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
GIB: Final = 1 << 30

# Runs between fork and the target, as the server's user: sets the limits, drops to the sandbox user
# (supplementary groups first, then gid, then uid, so none survives), then becomes the target. Doing this
# here rather than with Popen(user=...) keeps Popen on vfork: a plain fork() of the threaded server
# (gRPC, onnxruntime) crashes in the child.
_LAUNCHER: Final = (
    "import os, resource, sys\n"
    "limits, ids, target = sys.argv[1], sys.argv[2], sys.argv[3:]\n"
    "for item in filter(None, limits.split(',')):\n"
    "    name, soft, hard = item.split(':')\n"
    "    resource.setrlimit(getattr(resource, 'RLIMIT_' + name), (int(soft), int(hard)))\n"
    "if ids:\n"
    "    uid, gid = map(int, ids.split(':'))\n"
    "    os.setgroups([])\n"
    "    os.setgid(gid)\n"
    "    os.setuid(uid)\n"
    "    os.umask(0o077)\n"
    "os.execv(target[0], target)\n"
)


class SandboxError(Exception):
    """A sandboxed process cannot be started as asked (no user, unreachable interpreter, bad name)."""


@dataclass(frozen=True)
class Limits:
    """Per-process resource limits; None means unlimited.

    Defaults fit a runtime server on a 24 GiB machine: `memory_bytes` caps the address space
    (RLIMIT_AS; Linux ignores RLIMIT_RSS), and a Flight runtime with onnxruntime or pandas reserves
    1-2 GiB of address space before it loads a model, so 8 GiB leaves room for real models while a
    runaway allocation fails with MemoryError instead of taking the machine. `cpu_seconds` is off by
    default because a long-lived server legitimately accumulates CPU time; one-shot steps (conversion,
    checks) pass their own. `open_files` stops descriptor leaks; core dumps are always off (a core file
    would hold the model and its inputs)."""

    memory_bytes: int | None = 8 * GIB
    cpu_seconds: int | None = None
    open_files: int | None = 4096

    def launcher_arg(self) -> str:
        """The limits as the launcher reads them: `NAME:soft:hard` items, comma separated."""
        items = ["CORE:0:0"]
        if self.memory_bytes is not None:
            items.append(f"AS:{self.memory_bytes}:{self.memory_bytes}")
        if self.cpu_seconds is not None:
            # The soft limit sends SIGXCPU; the hard one, 2 s later, SIGKILLs a process that ignores it.
            items.append(f"CPU:{self.cpu_seconds}:{self.cpu_seconds + 2}")
        if self.open_files is not None:
            items.append(f"NOFILE:{self.open_files}:{self.open_files}")
        return ",".join(items)


@dataclass(frozen=True)
class Launch:
    """What `subprocess.Popen(launch.args, **launch.kwargs, stdout=..., ...)` needs."""

    args: list[str]
    kwargs: dict[str, Any] = field(repr=False)
    workdir: Path


def sandbox_environment(
    environ: Mapping[str, str], *, home: Path, bin_dir: Path | None = None, extra: Mapping[str, str] = {}
) -> dict[str, str]:
    """The whole environment of a sandboxed process: the allow-list above, plus `extra`."""
    env = {name: value for name, value in environ.items() if _PASSED_THROUGH.match(name)}
    env["PATH"] = f"{bin_dir}:{SYSTEM_PATH}" if bin_dir is not None else SYSTEM_PATH
    env["HOME"] = str(home)
    env["TMPDIR"] = str(home / "tmp")
    env.update(_FIXED)
    for name, value in extra.items():
        if not _ENV_NAME.fullmatch(name):
            raise SandboxError(f"not an environment variable name: {name!r}")
        env[name] = value
    return env


def private_dir(path: Path) -> Path:
    """Creates `path` (and parents) and makes it owner-only (0700): the data folder of the server."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def private_file(path: Path) -> None:
    """Makes an existing file owner-only (0600), e.g. the SQLite database."""
    if path.exists():
        path.chmod(0o600)


def ensure_user(name: str = DEFAULT_USER, *, group: str | None = None) -> pwd.struct_passwd:
    """The system user `name`, created (`useradd --system`, no home, no login shell) when missing: with a
    group of its own, or with the primary group `group` (created too when missing)."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    if os.geteuid() != 0:
        raise SandboxError(f"user {name!r} does not exist and only root can create it")
    args = [shutil.which("useradd") or "/usr/sbin/useradd", "--system", "--no-create-home"]
    if group is None:
        args.append("--user-group")
    else:  # -f: success when it exists already (e.g. a concurrent creation won the race)
        groupadd = shutil.which("groupadd") or "/usr/sbin/groupadd"
        subprocess.run([groupadd, "--system", "-f", group], capture_output=True, check=False)
        args += ["--gid", group]
    result = subprocess.run(
        [*args, "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return pwd.getpwnam(name)  # also when a concurrent useradd won the race and this one failed
    except KeyError:
        raise SandboxError(f"cannot create user {name!r}: {result.stderr.strip()}") from None


class _Auto:
    """The default user choice: `DEFAULT_USER` when the server runs as root, else none."""


AUTO: Final = _Auto()


class Sandbox:
    """Starts user-code processes under `root` (see the module docstring). One per server instance."""

    def __init__(self, root: Path, *, user: str | _Auto | None = AUTO, limits: Limits | None = None) -> None:
        if isinstance(user, _Auto):
            user = DEFAULT_USER if os.geteuid() == 0 else None
        if user is not None and os.geteuid() != 0:
            raise SandboxError(
                f"switching to user {user!r} needs root; the server runs as uid {os.geteuid()}"
            )
        self.root = root
        self.user = user
        self.limits = limits or Limits()
        self._account = ensure_user(user) if user is not None else None
        self._lock = threading.Lock()
        self._runnable: set[tuple[str, int]] = set()
        # Trust group -> pool user. Allocated in order of first use and kept for this object's life, so a
        # group's restarted server gets the same uid and no two groups ever share one. Numbered names
        # (not a hash of the group) keep the pool small and bounded, and the users reusable across
        # restarts of the server; the mapping itself need not survive them (working folders do not).
        self._pool: dict[str, str] = {}
        for folder in (root, root / "work", root / "shared"):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o711)  # traversable by the sandbox user, not listable

    @classmethod
    def temporary(cls, *, user: str | _Auto | None = AUTO, limits: Limits | None = None) -> Sandbox:
        """A sandbox in a fresh folder of the system temp dir, which every user can traverse (a data
        folder is owner-only, so the sandbox cannot live inside it). `close()` removes it."""
        return cls(Path(tempfile.mkdtemp(prefix="flightline-sandbox-")), user=user, limits=limits)

    @property
    def isolates_user(self) -> bool:
        """True when processes run as another, unprivileged user (the server runs as root)."""
        return self._account is not None

    @property
    def uid(self) -> int:
        return self._account.pw_uid if self._account is not None else os.geteuid()

    def user_for(self, trust_group: str) -> str | None:
        """The pool user of `trust_group` (created when missing), or None when users are not isolated
        (no root: every process runs as the server's user). Raises SandboxError once the pool is used up:
        sharing a uid between two groups would silently undo their isolation."""
        if self._account is None:
            return None
        with self._lock:
            user = self._pool.get(trust_group)
            if user is None:
                if len(self._pool) >= POOL_SIZE:
                    raise SandboxError(f"all {POOL_SIZE} sandbox users are in use")
                user = self._pool[trust_group] = f"{POOL_PREFIX}{len(self._pool)}"
        account = ensure_user(user, group=POOL_GROUP)
        # A same-named account made by someone else (root, or another primary group) is not ours to use.
        if account.pw_uid == 0 or account.pw_gid != grp.getgrnam(POOL_GROUP).gr_gid:
            raise SandboxError(f"user {user!r} exists but is not a sandbox user (group {POOL_GROUP!r})")
        return user

    def uid_of(self, user: str | None) -> int:
        """The uid processes launched with `user` run as (None: the sandbox's default)."""
        return self._user_account(user).pw_uid if self._account is not None else os.geteuid()

    def _user_account(self, user: str | None) -> pwd.struct_passwd:
        assert self._account is not None
        if user is None or user == self._account.pw_name:
            return self._account
        if not user.startswith(POOL_PREFIX) or user not in self._pool.values():
            raise SandboxError(f"not a user of this sandbox: {user!r}")
        return ensure_user(user, group=POOL_GROUP)

    def workdir(self, name: str, *, user: str | None = None) -> Path:
        """The private working folder of `name` (created, owned by `user` or the sandbox's default user,
        0700)."""
        folder = self.root / "work" / _checked(name)
        if folder.is_dir():  # a restart: the folder is the process's own now; touch nothing inside it
            return folder
        # Built as the server and handed over last, so the process never had a chance to plant a
        # symlink where the server chowns (root's chown follows symlinks; lchown is used anyway).
        folder.mkdir(mode=0o700)
        (folder / "tmp").mkdir(mode=0o700)
        if self._account is not None:
            account = self._user_account(user)
            for path in (folder / "tmp", folder):
                os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
        folder.chmod(0o700)
        return folder

    def share(self, source: Path, name: str, *, into: Path | None = None) -> Path:
        """A read-only hand-over of `source` (file or folder): the path of a server-owned,
        world-readable copy in a folder the sandbox user can reach (`shared/<name>-<random>/`, or the
        new folder `into`, which must lie where the user can traverse). Files are hard-linked when they
        are world-readable and on the same file system (no copy of a large model), else copied."""
        target_dir = into or self.root / "shared" / f"{_checked(name)}-{secrets.token_hex(8)}"
        if into is not None:
            shutil.rmtree(into, ignore_errors=True)  # left over from a process that died mid-way
        target_dir.mkdir(mode=0o755)
        target_dir.chmod(0o755)
        target = target_dir / source.name
        if source.is_dir():
            # Symlinks stay symlinks: the process follows them with its own rights, never the server's.
            shutil.copytree(source, target, copy_function=_link_or_copy, symlinks=True)
            for folder, dirs, _files in os.walk(target):
                for d in dirs:
                    Path(folder, d).chmod(0o755)
            target.chmod(0o755)
        else:
            _link_or_copy(str(source), str(target))
        return target

    @staticmethod
    def readable(folder: Path) -> None:
        """Makes a folder the server wrote (e.g. a runtime's spec) and the files directly in it readable
        by the sandbox user, whatever the server's umask: 0755 / 0644. Not recursive, so that sub-folders
        made by `share()` keep their modes (a shared file may be a hard link to the stored original)."""
        folder.chmod(0o755)
        for path in folder.iterdir():
            if path.is_file() and not path.is_symlink():
                path.chmod(0o644)

    def unshare(self, shared: Path) -> None:
        """Removes a hand-over made by `share()`."""
        folder = shared.parent
        if folder.parent == self.root / "shared":
            shutil.rmtree(folder, ignore_errors=True)

    def launch(
        self,
        argv: Sequence[str],
        *,
        name: str,
        extra_env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        user: str | None = None,
    ) -> Launch:
        """Popen arguments that run `argv` sandboxed, as `user` (from `user_for`; None: the sandbox's
        default user). `argv[0]` must be a Python interpreter: it also runs the launcher that sets the
        limits."""
        python = _absolute(argv[0])
        workdir = self.workdir(name, user=user)
        account = self._user_account(user) if self._account is not None else None
        if account is not None:
            self._check_runnable(python, account)
        env = sandbox_environment(
            os.environ, home=workdir, bin_dir=Path(python).parent, extra=extra_env or {}
        )
        return Launch(
            args=self._launcher(python, limits or self.limits, [python, *argv[1:]], account),
            kwargs={"env": env, "cwd": str(workdir), "start_new_session": True, "close_fds": True},
            workdir=workdir,
        )

    def release(self, name: str) -> None:
        """Removes the working folder of `name`."""
        shutil.rmtree(self.root / "work" / _checked(name), ignore_errors=True)

    def close(self) -> None:
        """Removes the sandbox root with everything in it."""
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _launcher(
        python: str, limits: Limits, target: list[str], account: pwd.struct_passwd | None
    ) -> list[str]:
        ids = f"{account.pw_uid}:{account.pw_gid}" if account is not None else ""
        return [python, "-I", "-S", "-c", _LAUNCHER, limits.launcher_arg(), ids, *target]

    def _check_runnable(self, python: str, account: pwd.struct_passwd) -> None:
        """Fails clearly when the sandbox user cannot execute `python`, e.g. a pyenv interpreter
        under /root (0700); checked once per interpreter and user by running it as that user."""
        key = (python, account.pw_uid)
        with self._lock:
            if key in self._runnable:
                return
        try:
            probe = subprocess.run(
                self._launcher(python, self.limits, [python, "-I", "-S", "-c", "pass"], account),
                capture_output=True,
                text=True,
                check=False,
                cwd="/",
                env={"PATH": SYSTEM_PATH},
            )
            lines = probe.stderr.strip().splitlines()
            detail = (lines[-1] if lines else f"exit code {probe.returncode}") if probe.returncode else ""
        except OSError as error:  # exec itself refused (the launcher runs as the server: a missing file)
            detail = error.strerror or str(error)
        if detail:
            blocked = _untraversable_ancestor(Path(python)) or _untraversable_ancestor(
                Path(os.path.realpath(python))
            )
            grantee = f"u:{account.pw_name}" if account is self._account else f"g:{POOL_GROUP}"
            hint = (
                f"; grant it traverse on {blocked} (e.g. `setfacl -m {grantee}:x {blocked}`, "
                "as .ci/setup does)"
                if blocked
                else ""
            )
            raise SandboxError(f"the sandbox user {account.pw_name!r} cannot run {python}: {detail}{hint}")
        with self._lock:
            self._runnable.add(key)


def safe_name(text: str) -> str:
    """`text` if it is a valid sandbox name, else a stable name derived from it."""
    if _NAME.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '-', text)[:100].lstrip('.-_') or 'x'}-{digest}"


def take_back(written: Path, target: Path) -> list[Path]:
    """Copies the regular files a sandboxed process wrote in its folder `written` into the server's
    `target`, keeping relative paths. Symlinks are skipped, never followed: the process could point one
    at a file only the server may read."""
    copied = []
    for folder, _dirs, files in os.walk(written):  # os.walk does not descend into symlinked folders
        for name in files:
            source = Path(folder, name)
            if source.is_symlink() or not source.is_file():
                continue
            destination = target / source.relative_to(written)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination, follow_symlinks=False)
            copied.append(destination)
    return copied


def _checked(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise SandboxError(f"not a valid sandbox name: {name!r}")
    return name


def _absolute(program: str) -> str:
    found = program if os.path.isabs(program) else shutil.which(program)
    if found is None:
        raise SandboxError(f"cannot find {program!r}")
    return found


def _link_or_copy(source: str, target: str) -> str:
    """Hard link when the file is already world-readable (modes are per inode: a link must not
    change the original's), else a copy made world-readable. A symlink is followed: a linked symlink
    would still point into the owner-only folder."""
    source = os.path.realpath(source)
    if os.stat(source).st_mode & stat.S_IROTH:
        with contextlib.suppress(OSError):  # another file system, or links not allowed
            os.link(source, target)
            return target
    shutil.copyfile(source, target)
    os.chmod(target, 0o644)
    return target


def _untraversable_ancestor(path: Path) -> Path | None:
    """The first folder above `path` that other users cannot traverse, if any."""
    for folder in reversed(path.parents):
        with contextlib.suppress(OSError):
            if not folder.stat().st_mode & stat.S_IXOTH:
                return folder
    return None
