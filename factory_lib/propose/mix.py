"""The hybrid mix: how many of a cycle's trials go to the LLM and how many to Optuna.

The rule (a simple bandit, replayed from history so no state is kept anywhere else):

    share₀ = proposers.llm.share
    after each cycle in which both proposers had trials:
        credit(p) = ½ · feasible_rate(p) + ½ · win(p)
            feasible_rate(p): the fraction of p's trials that completed within the constraints
            win(p): 1 if p's trial holds the cycle's best validation reward and that beats the
                    best before the cycle (½ each on a tie), else 0
        share ← clip(share + learning_rate · ½ · (credit(llm) − credit(optuna)),
                     min_share, 1 − min_share)

So a cycle moves the share by at most learning_rate / 2, toward the proposer that is working,
and neither proposer ever drops below its floor.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from factory_lib.objective import LLMSpec
from factory_lib.records import TrialRecord


class CycleCredit(BaseModel):
    model_config = ConfigDict(frozen=True)

    cycle: int
    llm: float
    optuna: float
    share_after: float


class Mix(BaseModel):
    """The LLM's share for the coming cycle and the credits that led to it."""

    model_config = ConfigDict(frozen=True)

    share: float
    credits: tuple[CycleCredit, ...] = ()

    def split(self, n: int) -> tuple[int, int]:
        """(LLM trials, Optuna trials) of `n`."""
        n_llm = min(n, int(self.share * n + 0.5))
        return n_llm, n - n_llm


def _best(records: Sequence[TrialRecord]) -> float | None:
    return max(
        (r.val_reward for r in records if r.eligible and r.val_reward is not None), default=None
    )


def _credits(
    llm: Sequence[TrialRecord], optuna: Sequence[TrialRecord], best_before: float | None
) -> tuple[float, float]:
    best = {"llm": _best(llm), "optuna": _best(optuna)}
    top = max((v for v in best.values() if v is not None), default=None)
    improved = top is not None and (best_before is None or top > best_before)
    winners = [k for k, v in best.items() if improved and v == top]
    credit = {}
    for name, records in (("llm", llm), ("optuna", optuna)):
        feasible = sum(r.eligible for r in records) / len(records)
        win = 1 / len(winners) if name in winners else 0.0
        credit[name] = 0.5 * feasible + 0.5 * win
    return credit["llm"], credit["optuna"]


def llm_mix(spec: LLMSpec, history: Sequence[TrialRecord]) -> Mix:
    """Replay the rule over every finished cycle of history."""
    share = spec.share
    credits: list[CycleCredit] = []
    best: float | None = None
    for cycle in sorted({r.proposal.cycle for r in history}):
        records = [r for r in history if r.proposal.cycle == cycle]
        llm = [r for r in records if r.proposal.source.startswith("llm:")]
        optuna = [r for r in records if r.proposal.source.startswith("optuna:")]
        if llm and optuna:
            c_llm, c_opt = _credits(llm, optuna, best)
            share = min(
                1 - spec.min_share,
                max(spec.min_share, share + spec.learning_rate * 0.5 * (c_llm - c_opt)),
            )
            credits.append(CycleCredit(cycle=cycle, llm=c_llm, optuna=c_opt, share_after=share))
        top = _best(records)
        if top is not None:
            best = top if best is None else max(best, top)
    return Mix(share=share, credits=tuple(credits))
