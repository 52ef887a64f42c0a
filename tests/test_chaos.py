"""Chaos in CI: ten faults (train tasks and whole runs SIGKILLed at random moments) lose nothing.

The longer run is `python -m tests.chaos --faults 50` (docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import check_search, run_chaos
from tests.conftest import write_objective

pytestmark = pytest.mark.slow
FAULTS = 10


def test_ten_random_kills_lose_nothing(tmp_path: Path) -> None:
    objective = write_objective(tmp_path, "chaos-ci", budget={"max_epochs": 2})
    faults = run_chaos(objective, FAULTS, seed=7)
    assert faults.injected >= FAULTS, faults.log
    report = check_search("chaos-ci")
    assert report["cycles"] >= 2 and report["trials"] >= 6
