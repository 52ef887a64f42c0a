"""Lab notes: what the search has learned so far, for the people watching and the proposers.

`lab_notes` distils the history as proposers see it (`SeenTrial`: validation numbers only, so
the notes can be shown to a model as they are) into `LabNotes`: which parameters matter
(Optuna's importance evaluators over the study the Optuna proposer rebuilds), the best-so-far
trend per cycle and whether it has plateaued, what changed in the latest cycle, and the
ledger of graded hypotheses (`propose.hypotheses`). The join computes them from the records;
the card, `factory notes` and the next cycle's LLM request read them.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from factory_lib.objective import CategoricalParam, Objective
from factory_lib.propose.base import SeenTrial
from factory_lib.records import VERDICTS, Verdict

# fANOVA and a random forest's impurity decrease need a few completed trials to say anything.
MIN_TRIALS_FOR_IMPORTANCE = 4
IMPORTANCE_SEED = 0
# Plateaued: over the last `budget.patience` cycles the best validation reward rose by no
# more than this share of the spread of the search's validation rewards.
PLATEAU_SHARE = 0.01
# The ledger entries shown to the model (the newest); counts cover all of them.
LEDGER_SHOWN = 20


class _Note(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Importances(_Note):
    """One evaluator's share of the validation reward's variance per parameter (sums to 1)."""

    evaluator: str
    shares: tuple[tuple[str, float], ...]  # (parameter, share), largest first

    @property
    def top(self) -> str:
        return self.shares[0][0]


class TrendPoint(_Note):
    """The best validation reward of one cycle's eligible trials, and of the search so far."""

    cycle: int
    trials: int
    best_this_cycle: float | None
    best_so_far: float | None
    best_trial: str | None  # the search's best trial after this cycle


class LedgerEntry(_Note):
    """A hypothesis, its prediction and the verdict the numbers gave."""

    trial_id: str
    cycle: int
    hypothesis: str
    prediction: str
    verdict: Verdict
    observed: str


class LabNotes(_Note):
    """What the search learned, after cycle `cycle`."""

    cycle: int
    trials: int
    importances: tuple[Importances, ...]
    importance_note: str  # why there are none, or which trials they rest on
    trend: tuple[TrendPoint, ...]
    plateau: bool
    plateau_reason: str
    changes: tuple[str, ...]  # what changed in this cycle
    ledger: tuple[LedgerEntry, ...]

    def verdicts(self) -> dict[str, int]:
        return {v: sum(e.verdict == v for e in self.ledger) for v in VERDICTS}

    def lines(self) -> list[str]:
        """The notes as text, the way `factory notes` prints them."""
        out = [f"lab notes after cycle {self.cycle} ({self.trials} trials)"]
        out.append("parameter importance (share of the validation reward's variance):")
        for imp in self.importances:
            shares = ", ".join(f"{p} {v:.2f}" for p, v in imp.shares)
            out.append(f"  {imp.evaluator}: {shares}")
        out.append(f"  ({self.importance_note})")
        out.append("best val reward so far, by cycle:")
        out += [
            f"  cycle {p.cycle}: {_num(p.best_so_far)} (this cycle {_num(p.best_this_cycle)}, "
            f"{p.trials} trials; best {p.best_trial or '-'})"
            for p in self.trend
        ]
        out.append(f"plateau: {'yes' if self.plateau else 'no'}: {self.plateau_reason}")
        out.append(f"what changed in cycle {self.cycle}:")
        out += [f"  - {c}" for c in self.changes]
        counts = ", ".join(f"{n} {v}" for v, n in self.verdicts().items())
        out.append(f"hypotheses ledger ({len(self.ledger)}: {counts}):")
        out += [
            f"  {e.trial_id} [{e.verdict}] {e.prediction} ({e.observed}): {e.hypothesis}"
            for e in self.ledger
        ]
        return out

    def for_model(self) -> dict[str, Any]:
        """What the LLM proposer is shown of the notes (validation numbers only)."""
        return {
            "after_cycle": self.cycle,
            "parameter_importance": {
                imp.evaluator: {p: round(v, 3) for p, v in imp.shares} for imp in self.importances
            },
            "importance_note": self.importance_note,
            "best_val_reward_by_cycle": [
                {"cycle": p.cycle, "best_so_far": _round(p.best_so_far), "best": p.best_trial}
                for p in self.trend
            ],
            "plateau": {"plateaued": self.plateau, "why": self.plateau_reason},
            "changes_last_cycle": list(self.changes),
            "hypotheses_ledger": {
                "counts": self.verdicts(),
                "newest": [e.model_dump() for e in self.ledger[-LEDGER_SHOWN:]],
            },
        }


def lab_notes(objective: Objective, seen: Sequence[SeenTrial]) -> LabNotes:
    """The notes of a search whose history (as proposers see it) is `seen`."""
    cycle = max((t.cycle for t in seen), default=0)
    earlier = [t for t in seen if t.cycle < cycle]
    importances, note = param_importances(objective, seen)
    before, _ = param_importances(objective, earlier)
    trend = best_trend(seen)
    plateau, why = plateaued(trend, _rewards(seen), objective.budget.patience)
    return LabNotes(
        cycle=cycle,
        trials=len(seen),
        importances=importances,
        importance_note=note,
        trend=trend,
        plateau=plateau,
        plateau_reason=why,
        changes=changes(objective, seen, cycle, importances, before),
        ledger=ledger(seen),
    )


def _eligible(t: SeenTrial) -> bool:
    return t.status == "ok" and t.feasible and t.val_reward is not None


def _rewards(seen: Sequence[SeenTrial]) -> list[float]:
    return [t.val_reward for t in seen if _eligible(t) and t.val_reward is not None]


def _best(seen: Sequence[SeenTrial]) -> SeenTrial | None:
    eligible = [t for t in seen if _eligible(t)]
    return max(eligible, key=lambda t: t.val_reward or 0.0, default=None)


def param_importances(
    objective: Objective, seen: Sequence[SeenTrial]
) -> tuple[tuple[Importances, ...], str]:
    """fANOVA's and the mean decrease in impurity's importances over the completed trials,
    and a note on what they rest on (or why there are none)."""
    rewards = _rewards(seen)
    if len(rewards) < MIN_TRIALS_FOR_IMPORTANCE:
        return (), (
            f"importances need {MIN_TRIALS_FOR_IMPORTANCE} completed feasible trials; "
            f"the search has {len(rewards)}"
        )
    if len(set(rewards)) == 1:
        return (), f"all {len(rewards)} completed trials share one val reward: nothing to explain"
    # Optuna (and scikit-learn under it) only where importances are computed: the gate and
    # decide steps import this module's types too and stay light.
    import optuna

    from factory_lib.propose.optuna_proposer import build_study

    # The study the Optuna proposer rebuilds, on the validation reward alone and with a
    # sampler that needs nothing (GP would import torch): importances explain the reward.
    proposers = objective.proposers.model_copy(update={"multi_objective": False, "sampler": "tpe"})
    single = objective.model_copy(update={"proposers": proposers})
    study = build_study(single, seen, seed=IMPORTANCE_SEED)
    evaluators = {
        "fanova": optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED),
        "mean_decrease_impurity": optuna.importance.MeanDecreaseImpurityImportanceEvaluator(
            seed=IMPORTANCE_SEED
        ),
    }
    found = []
    for name, evaluator in evaluators.items():
        shares = optuna.importance.get_param_importances(study, evaluator=evaluator)
        if shares:
            found.append(
                Importances(evaluator=name, shares=tuple((p, float(v)) for p, v in shares.items()))
            )
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    note = f"over {complete} completed trials; parameters every one of them has"
    return tuple(found), note if found else "no parameter is shared by every completed trial"


def best_trend(seen: Sequence[SeenTrial]) -> tuple[TrendPoint, ...]:
    """Per cycle: its trials, its best validation reward, and the search's best so far."""
    points = []
    best: SeenTrial | None = None
    for cycle in sorted({t.cycle for t in seen}):
        mine = [t for t in seen if t.cycle == cycle]
        top = _best(mine)
        if top is not None and (best is None or (top.val_reward or 0.0) > (best.val_reward or 0.0)):
            best = top
        points.append(
            TrendPoint(
                cycle=cycle,
                trials=len(mine),
                best_this_cycle=top.val_reward if top else None,
                best_so_far=best.val_reward if best else None,
                best_trial=best.trial_id if best else None,
            )
        )
    return tuple(points)


def plateaued(
    trend: Sequence[TrendPoint], rewards: Sequence[float], window: int
) -> tuple[bool, str]:
    """Whether the best so far rose by at most PLATEAU_SHARE of the rewards' spread over the
    last `window` cycles (the objective's `budget.patience`), and why."""
    if len(trend) <= window:
        return False, f"too few cycles to tell: {len(trend)} of the {window + 1} it takes"
    now, then = trend[-1].best_so_far, trend[-1 - window].best_so_far
    if now is None:
        return False, "no completed feasible trial yet"
    gain = now - then if then is not None else float("inf")
    spread = max(rewards) - min(rewards) if rewards else 0.0
    allowed = PLATEAU_SHARE * spread
    span = f"cycles {trend[-1 - window].cycle + 1}-{trend[-1].cycle}"
    if gain <= allowed:
        return True, (
            f"the best val reward rose by {gain:.4g} over {span}, at most {PLATEAU_SHARE:.0%} "
            f"of the rewards' spread ({spread:.4g})"
        )
    return False, f"the best val reward rose by {gain:.4g} over {span}"


def changes(
    objective: Objective,
    seen: Sequence[SeenTrial],
    cycle: int,
    now: Sequence[Importances],
    before: Sequence[Importances],
) -> tuple[str, ...]:
    """What cycle `cycle` changed: a new best (and where it differs from the old one), choices
    that stopped paying, which parameter matters most, how many trials did not complete."""
    mine = [t for t in seen if t.cycle == cycle]
    earlier = [t for t in seen if t.cycle < cycle]
    out: list[str] = []
    top, old = _best(mine), _best(earlier)
    if top is None:
        out.append("no trial of this cycle completed feasibly")
    elif old is None:
        out.append(f"first best: {top.trial_id} at val reward {_num(top.val_reward)}")
    elif (top.val_reward or 0.0) > (old.val_reward or 0.0):
        moved = [
            f"{k} {_cell(old.params.get(k))}→{_cell(v)}"
            for k, v in sorted(top.params.items())
            if old.params.get(k) != v
        ]
        out.append(
            f"new best {top.trial_id}: val reward {_num(top.val_reward)}, "
            f"{(top.val_reward or 0.0) - (old.val_reward or 0.0):+.4g} over {old.trial_id}"
            + (f"; moved {', '.join(moved)}" if moved else "")
        )
    else:
        out.append(
            f"no new best: this cycle's best {top.trial_id} at {_num(top.val_reward)}, "
            f"{(top.val_reward or 0.0) - (old.val_reward or 0.0):+.4g} from {old.trial_id}"
        )
    out += _stopped_paying(objective, mine, earlier)
    if now and before and now[0].top != before[0].top:
        out.append(
            f"most important parameter ({now[0].evaluator}) now {now[0].top}, was {before[0].top}"
        )
    elif now:
        out.append(f"most important parameter ({now[0].evaluator}): {now[0].top}")
    lost = [t for t in mine if t.status != "ok"]
    if lost:
        kinds = ", ".join(
            f"{sum(t.status == s for t in lost)} {s}" for s in sorted({t.status for t in lost})
        )
        out.append(f"{len(lost)} of {len(mine)} trials did not complete ({kinds})")
    return tuple(out)


def _stopped_paying(
    objective: Objective, mine: Sequence[SeenTrial], earlier: Sequence[SeenTrial]
) -> list[str]:
    """Categorical choices (a model family, say) that earlier reached the median validation
    reward but whose trials of this cycle all fell below it."""
    rewards = _rewards(earlier)
    if not rewards:
        return []
    median = statistics.median(rewards)
    out = []
    for name, p in objective.search_space.items():
        if not isinstance(p, CategoricalParam):
            continue
        for choice in p.choices:
            now = [t for t in mine if t.params.get(name) == choice]
            before = [t for t in earlier if t.params.get(name) == choice and _eligible(t)]
            paid = [t for t in before if (t.val_reward or 0.0) >= median]
            best_now = max(((t.val_reward or 0.0) for t in now if _eligible(t)), default=None)
            if now and paid and (best_now is None or best_now < median):
                out.append(
                    f"{name}={_cell(choice)} stopped paying: {len(now)} trial(s) this cycle, "
                    f"best {_num(best_now)}, below the earlier median {median:.4g} "
                    f"(it reached {max(t.val_reward or 0.0 for t in paid):.4g} before)"
                )
    return out


def ledger(seen: Sequence[SeenTrial]) -> tuple[LedgerEntry, ...]:
    """Every graded prediction of the search, in trial order."""
    return tuple(
        LedgerEntry(
            trial_id=t.trial_id,
            cycle=t.cycle,
            hypothesis=t.hypothesis,
            prediction=t.prediction.text(),
            verdict=t.grade.verdict,
            observed=t.grade.observed,
        )
        for t in seen
        if t.prediction is not None and t.grade is not None
    )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 5)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
