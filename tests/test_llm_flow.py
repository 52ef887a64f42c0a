"""Claude proposes inside real cycles: the flow talks to a fake Messages endpoint on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path

import pytest

from tests.conftest import run_cycle, write_objective
from tests.fake_anthropic import FakeMessagesServer

pytestmark = pytest.mark.slow
CANARY = "sk-ant-canary-7f3e9b1c-do-not-store"
LLM = {"model": "claude-sonnet-4-6", "share": 0.67, "min_share": 0.1}


def _contents(path: Path) -> bytes:
    data = path.read_bytes()
    for unpack in (gzip.decompress, zlib.decompress):
        try:
            return data + unpack(data)
        except (OSError, zlib.error, EOFError):
            continue
    return data


def test_two_cycles_with_llm_proposals(tmp_path: Path, datastore: str, monkeypatch) -> None:
    objective = write_objective(tmp_path, "llm-flow", proposers={"llm": LLM})
    with FakeMessagesServer(seed=1) as fake:
        env = {"ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": CANARY}
        first = run_cycle(objective, env=env, fresh=True)["end"].task.data
        second_run = run_cycle(objective, env=env)
    second = second_run["end"].task.data

    llm = [r for r in first.history if r.proposal.source == "llm:claude-sonnet-4-6"]
    assert len(llm) == 2 and len(first.history) == 3
    assert all(r.proposal.rationale.startswith("fake idea") for r in llm)
    assert all(r.status == "ok" and r.val_reward is not None for r in llm)
    assert first.llm_report.accepted == 2 and first.llm_usd_total > 0
    assert second.llm_usd_total == pytest.approx(first.llm_usd_total + second.llm_report.usd)
    assert len(second.mix.credits) == 1  # cycle 1 credited both proposers

    # The second cycle's request shows the first cycle's results, validation numbers only.
    assert len(fake.requests) == 2
    shown = fake.requests[1]["messages"][0]["content"]
    for r in first.history:
        assert r.trial_id in shown
    assert "fake idea" in shown  # earlier LLM proposals come back with their rationale

    def rounded(split: str) -> set[float]:
        return {
            round(v, 5)
            for r in second.history
            if r.result.evaluation
            for v in getattr(r.result.evaluation, split).values()
        }

    test_only = rounded("test") - rounded("val")
    for body in fake.requests:
        text = json.dumps(body)
        assert '"test' not in text
        assert [
            v for v in test_only if re.search(rf"(?<![\d.]){re.escape(str(v))}(?!\d)", text)
        ] == []

    # The key reached the endpoint, and nothing else: not the datastore, not the logs.
    assert all(
        CANARY in (h.get("x-api-key"), h.get("authorization", "").removeprefix("Bearer "))
        for h in fake.headers
    )
    leaks = [
        p for p in Path(datastore).rglob("*") if p.is_file() and CANARY.encode() in _contents(p)
    ]
    assert leaks == []
    assert CANARY not in second_run["start"].task.stdout + second_run["start"].task.stderr
