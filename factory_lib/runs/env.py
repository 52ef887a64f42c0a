"""The process environment a run needs before Metaflow is imported: a user name, local workers;
before a run starts, a datastore it can write to; and what the kernel says about processes it
killed for memory."""

from __future__ import annotations

import os
import pwd
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_USER = "factory"


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
    if not any(("batch" in a or "kubernetes" in a) for a in argv):
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
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


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
