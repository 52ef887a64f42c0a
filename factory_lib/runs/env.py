"""The process environment a run needs before Metaflow is imported: a user name, local workers,
the project's one local datastore wherever the command is run from; before a run starts, a
datastore it can write to; what the kernel says about processes it killed for memory; and an
exit that skips the last garbage collection."""

from __future__ import annotations

import atexit
import gc
import getpass
import os
import pwd
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DEFAULT_USER = "factory"
# The flow's @project: a search is an objective on one of its branches (`user.<name>` by
# default, `test.<name>` with --branch, `prod` with --production).
PROJECT = "dark_factory"
# Metaflow's own setting for the folder that holds the local datastore (`.metaflow`).
DATASTORE_VARIABLE = "METAFLOW_DATASTORE_SYSROOT_LOCAL"
DATASTORE_DIR = ".metaflow"
# How `use_local_datastore` found the folder it set DATASTORE_VARIABLE to: "<folder>\n<how>".
FOUND_VARIABLE = "FACTORY_DATASTORE_FOUND"
# The checkout factory_lib runs from, when it is one (an editable install, or run in place).
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LocalDatastore:
    """Where the local datastore is (`folder/.metaflow`) and how it was found."""

    folder: Path
    how: str

    @property
    def path(self) -> Path:
        return self.folder / DATASTORE_DIR

    def describe(self) -> str:
        return f"the local datastore {self.path} ({self.how})"


def find_local_datastore(cwd: Path | None = None) -> LocalDatastore | None:
    """The project's local datastore, the same from any folder: the one named by
    METAFLOW_DATASTORE_SYSROOT_LOCAL; else the nearest `.metaflow` at or above the working
    directory (where Metaflow looks); else the repository root's, when factory_lib runs from a
    checkout; None when none of these applies (Metaflow then makes one in the working directory).
    """
    named = os.environ.get(DATASTORE_VARIABLE)
    if named:
        found, _, how = os.environ.get(FOUND_VARIABLE, "").partition("\n")
        return LocalDatastore(Path(named), how if found == named else DATASTORE_VARIABLE)
    cwd = cwd or Path.cwd()
    for folder in (cwd, *cwd.parents):
        if (folder / DATASTORE_DIR).is_dir():
            return LocalDatastore(folder, f"the nearest {DATASTORE_DIR} at or above {cwd}")
    if (REPO_ROOT / "flows" / "cycle.py").is_file():
        return LocalDatastore(REPO_ROOT, f"the repository root: no {DATASTORE_DIR} above {cwd}")
    return None


def use_local_datastore() -> LocalDatastore | None:
    """Point this process (and the runs it starts) at `find_local_datastore()`'s datastore.

    Call it before Metaflow is imported, in a process that starts or reads runs, never in a
    task (a task uses the datastore its run was started with). Where Metaflow is already
    imported and has not yet settled on a local root, it is told too.
    """
    found = find_local_datastore()
    if found is None:
        return None
    os.environ[DATASTORE_VARIABLE] = str(found.folder)
    os.environ[FOUND_VARIABLE] = f"{found.folder}\n{found.how}"
    storage = sys.modules.get("metaflow.plugins.datastores.local_storage")
    if storage is not None and storage.LocalStorage.datastore_root is None:
        storage.LocalStorage.SYSROOT_VAR = str(found.folder)
    return found


def prepare_reader() -> LocalDatastore | None:
    """What a process that reads or starts runs needs before Metaflow is imported: a user name
    and the project's local datastore (returned, for messages)."""
    ensure_metaflow_user()
    return use_local_datastore()


def user_name() -> str:
    """Who runs this process, as Metaflow names its user (leases, decisions, adoption)."""
    for variable in ("METAFLOW_USER", "USERNAME", "USER"):
        if os.environ.get(variable):
            return os.environ[variable]
    return getpass.getuser()


@cache
def exit_without_collecting() -> None:
    """Let this process exit without the garbage collector's last passes over everything it
    imported: 1.5 s for a process that imported Lightning, 0.2–0.6 s for a light step, paid by
    each of a cycle's processes (and each `factory` command) after its work is stored
    (docs/benchmarks.md). Registered once, as early as the process can: exit handlers run last
    registered first, so the others (Metaflow's, multiprocessing's) run as before, and objects
    that are not in reference cycles are still freed one by one."""
    atexit.register(gc.freeze)


def ensure_metaflow_user() -> None:
    """Give Metaflow a user name where the environment has none it accepts (it refuses root).

    A container or CI job often runs as root with no USER set; its runs are then owned by
    the account name, or by `factory` for root.
    """
    names = (os.environ.get(v) for v in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER"))
    if not any(n and n != "root" for n in names):
        account = pwd.getpwuid(os.getuid()).pw_name
        os.environ["METAFLOW_USER"] = account if account != "root" else DEFAULT_USER


def local_worker_default(argv: Sequence[str]) -> None:
    """Local runs default to one parallel task per CPU core instead of Metaflow's 16.

    On a small machine 16 concurrent train tasks mostly fight over cores (measured in
    docs/benchmarks.md). `--max-workers` or METAFLOW_RUN_MAX_WORKERS still decide; runs that
    send tasks elsewhere (`--with batch`, `kubernetes`) keep Metaflow's default.
    """
    if not sends_tasks_elsewhere(argv):
        workers = str(os.cpu_count() or 1)
        os.environ.setdefault("METAFLOW_RUN_MAX_WORKERS", workers)
        os.environ.setdefault("METAFLOW_RESUME_MAX_WORKERS", workers)


def datastore_problem(argv: Sequence[str]) -> str | None:
    """Why `run` or `resume` could not write to the local datastore, in one line naming the
    path; None when it can (or when the command, or the datastore, is another).

    Metaflow's own error for a read-only or full datastore is an internal-error traceback from
    deep in its runtime. Call it after `ensure_metaflow_user` (it reads Metaflow's
    configuration); tasks skip it (their runtime checked).
    """
    if not {"run", "resume"} & set(argv):
        return None
    kind, root = _option(argv, "--datastore"), _option(argv, "--datastore-root")
    from metaflow.metaflow_config import DEFAULT_DATASTORE
    from metaflow.plugins.datastores.local_storage import LocalStorage

    if (kind or DEFAULT_DATASTORE) != "local":
        return None
    root = root or LocalStorage.get_datastore_root_from_config(  # type: ignore[no-untyped-call]
        lambda *_: None, create_on_absent=False
    )
    path = Path(root) if root else Path.cwd() / LocalStorage.DATASTORE_DIR
    probe = next(p for p in (path, *path.parents) if p.exists())  # what Metaflow writes into
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".factory-probe-")
        try:
            os.write(fd, b"probe")
            os.fsync(fd)  # a full disk may only say so here
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        return (
            f"factory: cannot write to the datastore at {path}: {exc.strerror or exc} "
            f"({exc.filename or probe}). Is it mounted read-only, full, or not yours to write? "
            "Nothing was started."
        )
    return None


def _option(argv: Sequence[str], name: str) -> str | None:
    """The value of a top-level option given as `--name value` or `--name=value`."""
    return next(iter(option_values(argv, name)), None)


def option_values(argv: Sequence[str], name: str) -> list[str]:
    """Every value of an option given as `name value` or `name=value` (`--with` may repeat; a
    task's `step <name>`), in order."""
    values = []
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(f"{name}="):
            values.append(arg.split("=", 1)[1])
    return values


# `--with` decorators that run a run's tasks on other machines.
REMOTE_DECORATORS = frozenset({"batch", "kubernetes"})


def sends_tasks_elsewhere(argv: Sequence[str]) -> bool:
    """Whether the command runs its tasks on other machines: `--with batch[:...]` or
    `--with kubernetes[:...]`."""
    return any(d.split(":")[0] in REMOTE_DECORATORS for d in option_values(argv, "--with"))


def process_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def machine_scratch() -> Path:
    """This user's folder in the machine's temp directory, which a local run's processes
    share (not created here)."""
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"factory-{user}"


# Linux's count of processes its out-of-memory killer has killed since boot.
VMSTAT = Path("/proc/vmstat")


@dataclass(frozen=True)
class OomMark:
    """The kernel's out-of-memory kill count on one machine at one moment."""

    host: str
    kills: int


def oom_mark(vmstat: Path = VMSTAT) -> OomMark | None:
    """This machine's OOM kill count now; None where the kernel does not say (not Linux)."""
    try:
        text = vmstat.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill" and value.strip().isdigit():
            return OomMark(socket.gethostname(), int(value))
    return None


def oom_note(since: OomMark | None, now: OomMark | None) -> str | None:
    """What the kernel says about out-of-memory kills between two marks on the same machine."""
    if since is None or now is None or now.host != since.host or now.kills <= since.kills:
        return None
    n = now.kills - since.kills
    return (
        f"out of memory: the kernel's out-of-memory killer killed {n} process"
        f"{'es' if n > 1 else ''} on {now.host} during this cycle"
    )
