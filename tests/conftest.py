"""Shared set-up: torch before Metaflow, one throw-away datastore, helpers to run real cycles."""

from __future__ import annotations

# Import torch before anything runs metaflow.Runner (Metaflow's vendored typing_extensions,
# upstream issue #2462, can otherwise break a later first `import torch`).
import torch  # noqa: F401  isort: skip

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FLOW = str(ROOT / "flows" / "cycle.py")
_DATASTORE = tempfile.mkdtemp(prefix="factory-tests-")

# Metaflow reads its configuration when first imported: point this process and every flow it
# starts at one throw-away local datastore, and give Metaflow a user name.
os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = _DATASTORE
os.environ.setdefault("USERNAME", "factory-tests")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)


def write_objective(tmp_path: Path, name: str, base: str = "smoke", **overrides: Any) -> Path:
    """A copy of objectives/<base>.yaml under a unique name, with top-level sections merged."""
    spec = yaml.safe_load((ROOT / "objectives" / f"{base}.yaml").read_text())
    spec["name"] = name
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_cycle(objective: Path, env: dict[str, str] | None = None, **params: Any) -> Any:
    """Run one real cycle through metaflow.Runner; returns the finished metaflow.Run."""
    from metaflow import Runner

    # cwd: Metaflow 2.19 writes cards under the working directory's `.metaflow/mf.cards` but
    # the Client API reads them from the datastore root's; the same place only from here.
    with Runner(
        FLOW,
        show_output=False,
        cwd=_DATASTORE,
        env=env or {},
        config=[("objective", str(objective))],
    ).run(max_workers=2, **params) as running:
        assert running.status == "successful", running.stderr[-3000:]
        return running.run


@pytest.fixture(scope="session")
def datastore() -> Iterator[str]:
    yield _DATASTORE


# The moto server standing in for AWS (tests/aws.py), for the scale-out tests.
from tests.aws import aws, network  # noqa: E402, F401
