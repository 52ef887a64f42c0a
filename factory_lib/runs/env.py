"""The process environment a run needs before Metaflow is imported: a user name, local workers."""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence

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
