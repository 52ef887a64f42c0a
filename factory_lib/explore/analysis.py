"""Analysis: everything a person asks of the factory, from the records the cycles keep.

Two layers. `load_cycles` reads the cycles of an objective through the Metaflow Client API
into `CycleView`s; every other function is pure and works on `TrialRecord`s and `CycleView`s,
so the cycle card (built inside the flow from the end step's artifacts), the notebook and the
`factory` CLI all compute the same tables the same way; `CycleView.summary` (from
`explore.summary`) is the one source of a cycle's counts and headline numbers. Nothing here
depends on which proposer made a trial: proposers are told apart by `proposal.source` only.

Rewards are always "larger is better" (see `factory_lib.reward`); metrics carry directions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from factory_lib.explore.summary import STATUS_ORDER, CycleSummary, StatusCounts, summarize
from factory_lib.history import CycleState
from factory_lib.objective import METRIC_DIRECTIONS, Objective
from factory_lib.propose.llm.report import LLMReport
from factory_lib.propose.notes import LabNotes
from factory_lib.records import TrialRecord
from factory_lib.registry.gate import Champion, PromotionDecision
from factory_lib.reward import pareto_indices
from factory_lib.runs.client import FLOW_NAME, Retirement, cycle_runs, read_cycle, retirement_of

if TYPE_CHECKING:
    import optuna

COST_COLUMNS = ("n_params", "latency_ms", "train_seconds")
Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class CycleView:
    """One finished cycle as the analysis sees it: the end step's artifacts, read-only."""

    objective: Objective
    cycle: int
    records: tuple[TrialRecord, ...]
    history: tuple[TrialRecord, ...]
    decision: PromotionDecision
    champion: Champion | None
    stale_cycles: int
    run_pathspec: str | None = None
    created_at: str | None = None
    retired: Retirement | None = None  # `factory retire`: the search passes over this cycle
    retired_cycles: tuple[int, ...] = ()  # the search's retired cycles before this one
    space_changes: tuple[str, ...] = ()  # search_space and fixed since the cycle it continued
    notes: LabNotes | None = None  # the lab notes after this cycle (None: an older cycle)
    llm_report: LLMReport | None = None  # the LLM proposer's calls and cost this cycle

    @property
    def run_id(self) -> str | None:
        return self.run_pathspec.split("/")[-1] if self.run_pathspec else None

    @property
    def summary(self) -> CycleSummary:
        """This cycle's counts per status and labelled numbers, as every screen shows them."""
        return summarize(
            self.objective.name,
            self.cycle,
            self.records,
            self.history,
            self.decision,
            self.champion,
            self.stale_cycles,
            self.run_pathspec,
            self.retired.describe() if self.retired else None,
        )

    @property
    def cycles_counted(self) -> int:
        """The cycles of the search up to this one that count against `budget.max_cycles`."""
        return self.cycle - len(self.retired_cycles)

    @classmethod
    def of(cls, state: CycleState) -> CycleView:
        """The view of a finished cycle's state (`factory_lib.runs.read_cycle`)."""
        assert state.objective is not None and state.decision is not None
        return cls(
            objective=state.objective,
            cycle=state.cycle,
            records=state.records,
            history=state.history,
            decision=state.decision,
            champion=state.champion,
            stale_cycles=state.stale_cycles,
            run_pathspec=state.run_pathspec,
            created_at=state.created_at or None,
            retired_cycles=state.retired_cycles,
            space_changes=state.space_changes,
            notes=state.notes,
            llm_report=state.llm_report,
        )


@dataclass(frozen=True)
class ParetoAxis:
    """One named objective of a Pareto front: a metric of the validation split and a direction."""

    metric: str
    direction: Direction

    @property
    def column(self) -> str:
        return column_of(self.metric)


@dataclass(frozen=True)
class BudgetStatus:
    """What the objective's budget allows, what the search has spent, and what is left."""

    cycles_used: int
    max_cycles: int
    trials_this_cycle: int
    trials_per_cycle: int
    trials_total: int
    train_seconds_cycle: float
    train_seconds_total: float
    stale_cycles: int
    patience: int

    @property
    def cycles_left(self) -> int:
        return max(0, self.max_cycles - self.cycles_used)

    @property
    def cycles_before_patience_stop(self) -> int:
        return max(0, self.patience - self.stale_cycles)


# ---------------------------------------------------------------------------------------------
# Reading cycles through the Client API


def load_cycles(
    objective_name: str,
    flow_name: str = FLOW_NAME,
    all_searches: bool = False,
    branch: str | None = None,
) -> list[CycleView]:
    """The successful cycles of an objective on a branch (yours by default), oldest first,
    retired ones (`retired` set) included.

    By default only the latest search (from its newest cycle 1 that is not retired on):
    `--fresh` starts a new search under the same tag, and its cycle numbers start again at 1.
    """
    views: list[CycleView] = []
    for run in cycle_runs(flow_name, objective_name, branch=branch):  # newest first
        views.append(replace(CycleView.of(read_cycle(run)), retired=retirement_of(run)))
        if views[-1].cycle == 1 and views[-1].retired is None and not all_searches:
            break
    return views[::-1]


def latest(cycles: Sequence[CycleView]) -> CycleView:
    """The newest cycle that is not retired (the one the search goes on from); a clear error
    when the objective has none yet."""
    live = [view for view in cycles if view.retired is None]
    if not live:
        raise LookupError(
            "no successful cycle yet (that is not retired): run `python flows/cycle.py run` first"
        )
    return live[-1]


# ---------------------------------------------------------------------------------------------
# Trials


def column_of(metric: str) -> str:
    """The leaderboard column of a validation metric (`params` is the count, `n_params`)."""
    if metric == "params":
        return "n_params"
    if metric in ("latency_ms", "train_seconds"):
        return metric
    return f"val_{metric}"


def leaderboard(records: Sequence[TrialRecord]) -> pd.DataFrame:
    """Every trial, best first: parameters, source, status, metrics, reward and cost.

    Columns: `rank` (1 is the best eligible trial by validation reward; none for the others),
    `trial_id`, `cycle`, `number`, `source`, `status`, `feasible`, `val_reward`,
    `test_reward`, `val_<metric>` and `test_<metric>` for each quality metric, the cost
    (`n_params`, `latency_ms`, `train_seconds`), `epochs`, `start_epoch` and `continues`
    (successive halving: epochs inherited, and from which trial), `cause`, `violations`,
    `rationale`, and one `param_<name>` per hyperparameter. Missing values are NaN.
    """
    rows = [_trial_row(r) for r in records]
    frame = pd.DataFrame(rows, columns=_columns(rows))
    if frame.empty:
        return frame
    eligible = frame["eligible"]
    frame["_order"] = frame["val_reward"].where(eligible)
    frame = frame.sort_values(["_order", "number"], ascending=[False, True], na_position="last")
    ranks = range(1, int(eligible.sum()) + 1)
    frame["rank"] = pd.array([*ranks, *([pd.NA] * int((~eligible).sum()))], dtype="Int64")
    return frame.drop(columns=["_order"]).reset_index(drop=True)


_LEADING = ["rank", "trial_id", "cycle", "number", "source", "status", "feasible", "eligible"]


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = dict.fromkeys(_LEADING)
    for row in rows:
        seen.update(dict.fromkeys(k for k in row if not k.startswith("param_")))
    for row in rows:
        seen.update(dict.fromkeys(k for k in row if k.startswith("param_")))
    return list(seen)


def _trial_row(r: TrialRecord) -> dict[str, Any]:
    ev = r.result.evaluation
    row: dict[str, Any] = {
        "rank": pd.NA,
        "trial_id": r.trial_id,
        "cycle": r.proposal.cycle,
        "number": r.proposal.number,
        "source": r.proposal.source,
        "status": r.status,
        "feasible": r.feasible,
        "eligible": r.eligible,
        "val_reward": _num(r.val_reward),
        "test_reward": _num(r.test_reward),
    }
    if ev is not None:
        row.update({f"val_{k}": v for k, v in ev.val.items()})
        row.update({f"test_{k}": v for k, v in ev.test.items()})
    row.update(
        {
            "n_params": float(ev.params) if ev else math.nan,
            "latency_ms": ev.latency_ms if ev else math.nan,
            "train_seconds": ev.train_seconds if ev else math.nan,
            "epochs": r.result.epochs,
            "start_epoch": r.result.start_epoch,
            "continues": r.proposal.continues,
            "cause": r.result.cause,
            "violations": "; ".join(v for v in r.violations if not v.startswith("status ")),
            "rationale": r.proposal.rationale,
        }
    )
    row.update({f"param_{k}": v for k, v in sorted(r.proposal.params.items())})
    return row


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def failed_trials(records: Sequence[TrialRecord]) -> pd.DataFrame:
    """The trials that did not complete (pruned, failed, diverged, timeout), with their status
    and cause, in trial order."""
    rows = [
        {
            "trial_id": r.trial_id,
            "cycle": r.proposal.cycle,
            "source": r.proposal.source,
            "status": r.status,
            "cause": r.result.cause,
        }
        for r in records
        if r.status != "ok"
    ]
    return pd.DataFrame(rows, columns=["trial_id", "cycle", "source", "status", "cause"])


def find_trial(records: Sequence[TrialRecord], trial_id: str, where: str = "") -> TrialRecord:
    """The record of one trial by its id (e.g. `c002-t05`); `where` names the search in the
    error (trial ids repeat across objectives and searches)."""
    for r in records:
        if r.trial_id == trial_id:
            return r
    known = ", ".join(r.trial_id for r in records[-5:])
    raise LookupError(
        f"no trial {trial_id!r} in {where or 'this search'} (latest: {known or 'none'})"
    )


def search_of(cycles: Sequence[CycleView]) -> str:
    """Which search `cycles` (oldest first) are, in words: the objective, and the runs of its
    first and latest cycle (a `--fresh` search of the same objective starts at cycle 1 again)."""
    first, last = latest(cycles[:1]), latest(cycles)
    span = (
        f"cycle {first.cycle} (run {first.run_id})"
        if first is last
        else f"cycles {first.cycle} to {last.cycle} (runs {first.run_id} to {last.run_id})"
    )
    return f"objective {last.objective.name!r}, the search of {span}"


# ---------------------------------------------------------------------------------------------
# Progress


def best_so_far(records: Sequence[TrialRecord]) -> pd.DataFrame:
    """By trial, in the order they were proposed: each trial's validation reward (NaN unless
    eligible) and the best eligible validation reward up to and including it."""
    ordered = sorted(records, key=lambda r: r.proposal.number)
    frame = pd.DataFrame(
        {
            "number": [r.proposal.number for r in ordered],
            "trial_id": [r.trial_id for r in ordered],
            "cycle": [r.proposal.cycle for r in ordered],
            "source": [r.proposal.source for r in ordered],
            "val_reward": [_num(r.val_reward) if r.eligible else math.nan for r in ordered],
        }
    )
    # cummax leaves NaN where a trial has no reward; the best so far carries over those
    frame["best_val_reward"] = frame["val_reward"].cummax().ffill()
    return frame


BY_CYCLE_COLUMNS = ["cycle", "trials", "best_val_reward_this_cycle", "best_val_reward_so_far"]


def best_by_cycle(records: Sequence[TrialRecord]) -> pd.DataFrame:
    """By cycle: trials run, the cycle's best eligible validation reward, and the best so far."""
    by_trial = best_so_far(records)
    if by_trial.empty:
        return pd.DataFrame(columns=BY_CYCLE_COLUMNS)
    grouped = by_trial.groupby("cycle", sort=True)
    frame = pd.DataFrame(
        {
            "trials": grouped.size(),
            "best_val_reward_this_cycle": grouped["val_reward"].max(),
            "best_val_reward_so_far": grouped["best_val_reward"].last(),
        }
    )
    return frame.reset_index()


def improvements(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The trials that raised the best eligible validation reward when they ran."""
    best = -math.inf
    raised = []
    for r in sorted(records, key=lambda r: r.proposal.number):
        if r.eligible and r.val_reward is not None and r.val_reward > best:
            best = r.val_reward
            raised.append(r)
    return raised


# ---------------------------------------------------------------------------------------------
# Pareto front


def default_pareto_axes(objective: Objective) -> tuple[ParetoAxis, ParetoAxis]:
    """The reward's validation metric against model size: quality against cost."""
    return (
        ParetoAxis(objective.reward.metric, objective.reward.resolved_direction),
        ParetoAxis("params", "minimize"),
    )


def axis(metric: str) -> ParetoAxis:
    """A Pareto axis for a named metric, in the metric's own direction."""
    if metric not in METRIC_DIRECTIONS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRIC_DIRECTIONS)}")
    return ParetoAxis(metric, METRIC_DIRECTIONS[metric])


def pareto_front(records: Sequence[TrialRecord], axes: Sequence[ParetoAxis]) -> pd.DataFrame:
    """The completed, feasible trials that no other such trial dominates on `axes`.

    A dominates B when A is at least as good on every axis and better on one, each axis in
    its own direction. Returns their leaderboard rows, best validation reward first.
    """
    if len(axes) < 2:
        raise ValueError("a Pareto front needs at least two axes")
    candidates = [r for r in records if r.eligible and r.result.evaluation is not None]
    points = [
        tuple(_signed(r.result.evaluation.metrics("val")[a.metric], a) for a in axes)  # type: ignore[union-attr]
        for r in candidates
    ]
    # pareto_indices minimises: negate the signed (larger-is-better) axes
    front = pareto_indices([tuple(-v for v in p) for p in points])
    return leaderboard([candidates[i] for i in front])


def _signed(value: float, a: ParetoAxis) -> float:
    """Larger is better on every signed axis."""
    return value if a.direction == "maximize" else -value


# ---------------------------------------------------------------------------------------------
# Proposers, cycles, champions, budget


PROPOSER_COLUMNS = [
    "source",
    "trials",
    *STATUS_ORDER,
    "ok_rate",
    "feasible",
    "best_val_reward",
    "mean_val_reward",
    "improvements",
    "train_seconds",
]


def proposer_stats(records: Sequence[TrialRecord]) -> pd.DataFrame:
    """Per proposer (`proposal.source`): how many trials, how many ended in each status, how
    good, at what cost, and how often one of its trials raised the best so far. Best proposer
    first."""
    raised = {r.trial_id for r in improvements(records)}
    rows = []
    for source in sorted({r.proposal.source for r in records}):
        mine = [r for r in records if r.proposal.source == source]
        rewards = [r.val_reward for r in mine if r.eligible and r.val_reward is not None]
        counts = StatusCounts.of(mine)
        rows.append(
            {
                "source": source,
                "trials": len(mine),
                **counts.model_dump(),
                "ok_rate": counts.ok / len(mine),
                "feasible": sum(r.eligible for r in mine),
                "best_val_reward": max(rewards) if rewards else math.nan,
                "mean_val_reward": sum(rewards) / len(rewards) if rewards else math.nan,
                "improvements": sum(r.trial_id in raised for r in mine),
                "train_seconds": sum(
                    r.result.evaluation.train_seconds for r in mine if r.result.evaluation
                ),
            }
        )
    frame = pd.DataFrame(rows, columns=PROPOSER_COLUMNS)
    return frame.sort_values("best_val_reward", ascending=False, na_position="last").reset_index(
        drop=True
    )


CYCLE_COLUMNS = [
    "cycle",
    "run_id",
    "trials",
    *STATUS_ORDER,
    "best_val_reward_this_cycle",
    "best_val_reward_so_far",
    "decision",
    "champion",
    "champion_test_one_run",
    "champion_test_mean",
    "champion_seeds",
    "train_seconds",
    "retired",
]


def cycle_summaries(cycles: Sequence[CycleView]) -> list[CycleSummary]:
    """Each cycle's counts per status and labelled numbers (`CycleSummary`), oldest first."""
    return [view.summary for view in cycles]


def cycle_table(cycles: Sequence[CycleView]) -> pd.DataFrame:
    """One row per cycle, from `cycle_summaries`: trials in each status, the cycle's best and
    the best so far (validation reward), the promotion decision, the champion after it with
    its held-out metric (its own run, and the mean over the seeds it was measured on), the
    training seconds spent and, for a retired cycle, who retired it and why."""
    rows = []
    for s in cycle_summaries(cycles):
        champ = s.champion
        rows.append(
            {
                "cycle": s.cycle,
                "run_id": s.run_id,
                "trials": s.trials,
                **s.counts.model_dump(),
                "best_val_reward_this_cycle": _num(s.best_val_reward_this_cycle),
                "best_val_reward_so_far": _num(s.best_val_reward_so_far),
                "decision": s.decision,
                "champion": champ.trial_id if champ else None,
                "champion_test_one_run": champ.test_one_run if champ else math.nan,
                "champion_test_mean": champ.test_mean if champ else math.nan,
                "champion_seeds": champ.seeds if champ else 0,
                "train_seconds": s.train_seconds,
                "retired": s.retired,
            }
        )
    return pd.DataFrame(rows, columns=CYCLE_COLUMNS)


def _train_seconds(records: Sequence[TrialRecord]) -> float:
    return float(sum(r.result.evaluation.train_seconds for r in records if r.result.evaluation))


LINEAGE_COLUMNS = [
    "promoted_in_cycle",
    "trial_id",
    "source",
    "rationale",
    "params",
    "metric",
    "test_value",
    "parent",
    "delta",
    "reason",
]


def champion_lineage(cycles: Sequence[CycleView]) -> pd.DataFrame:
    """Every promotion of the search, oldest first: which trial, from which proposer and why,
    its held-out metric, the champion it replaced (`parent`) and by how much; retired cycles'
    promotions do not count."""
    rows = []
    for view in cycles:
        champ = view.champion
        if view.decision.status != "promoted" or champ is None or view.retired is not None:
            continue
        rows.append(
            {
                "promoted_in_cycle": view.cycle,
                "trial_id": champ.trial_id,
                "source": champ.record.proposal.source,
                "rationale": champ.record.proposal.rationale,
                "params": dict(champ.record.proposal.params),
                "metric": champ.metric,
                "test_value": champ.test_value,
                "parent": view.decision.champion,
                "delta": _num(view.decision.delta),
                "reason": view.decision.reason,
            }
        )
    return pd.DataFrame(rows, columns=LINEAGE_COLUMNS)


def budget_status(view: CycleView) -> BudgetStatus:
    """The objective's budget against what the search has spent up to this cycle (retired
    cycles not counted)."""
    budget = view.objective.budget
    return BudgetStatus(
        cycles_used=view.cycles_counted,
        max_cycles=budget.max_cycles,
        trials_this_cycle=len(view.records),
        trials_per_cycle=budget.trials_per_cycle,
        trials_total=len(view.history),
        train_seconds_cycle=_train_seconds(view.records),
        train_seconds_total=_train_seconds(view.history),
        stale_cycles=view.stale_cycles,
        patience=budget.patience,
    )


# ---------------------------------------------------------------------------------------------
# The Optuna ecosystem


def export_optuna(
    objective: Objective,
    records: Sequence[TrialRecord],
    storage: str,
    study_name: str | None = None,
    update: bool = False,
) -> tuple[optuna.Study, int]:
    """Write the history as an Optuna study in `storage` (e.g. `sqlite:///digits.db`); returns
    the study and how many trials were added to it.

    The study is the one the Optuna proposer rebuilds every cycle (validation rewards only,
    failures as FAIL, constraint excess as constraints), so optuna-dashboard and Optuna's
    plots show what the proposer saw; each trial's validation curve is its intermediate
    values, and it carries its `trial_id` as a user attribute. An existing study of that name
    is an error (optuna.exceptions.DuplicatedStudyError) unless `update`: then the trials it
    does not hold yet are added (history is append-only, and so is its export), provided the
    study is one this function wrote (ValueError otherwise).
    """
    import optuna

    from factory_lib.propose.base import seen_by_proposers
    from factory_lib.propose.optuna_proposer import build_study

    name = study_name or objective.name
    built = build_study(
        objective, seen_by_proposers(objective, records), objective.proposers.seed, curves=True
    )
    study = optuna.create_study(
        storage=storage, study_name=name, directions=built.directions, load_if_exists=update
    )
    held = {t.user_attrs.get("trial_id") for t in study.trials}
    if None in held:
        raise ValueError(f"study {name!r} in {storage} holds trials this factory did not write")
    new = [t for t in built.trials if t.user_attrs["trial_id"] not in held]
    study.add_trials(new)
    return study, len(new)


def cell(value: Any) -> str:
    """A value as a table cell: numbers to four significant digits, missing as '-'."""
    if missing(value):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def missing(value: Any) -> bool:
    """None, pandas' NA or NaN: a cell with no value."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
