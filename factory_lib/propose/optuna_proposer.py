"""The Optuna proposer: a study rebuilt every cycle from history, asked for a batch.

The datastore is the single source of truth: no Optuna database persists between cycles.
Every earlier trial is told to a fresh in-memory study (complete with its validation reward,
failed, or pruned with its curve), then the sampler is asked for the cycle's proposals.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from factory_lib.objective import (
    METRIC_DIRECTIONS,
    CategoricalParam,
    FloatParam,
    IntParam,
    Objective,
)
from factory_lib.propose.base import SeenTrial, make_proposal
from factory_lib.records import Proposal, params_key

MAX_ASKS_PER_SLOT = 30
ARCH_CHOICES = 8
_STATES = {"ok": TrialState.COMPLETE, "pruned": TrialState.PRUNED}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def uses_arch(objective: Objective, params: dict[str, Any]) -> bool:
    """Whether a trial with these parameters is of the data-defined `arch` family."""
    families = objective.model.families
    return "arch" in families and (params.get("family") == "arch" or families == ("arch",))


def known_architectures(seen: Sequence[SeenTrial]) -> tuple[str, ...]:
    """Architectures that completed within the constraints, best first: Optuna's choices.

    An architecture the LLM found good thus becomes a value Optuna can tune the numeric
    parameters around in later cycles.
    """
    ranked = sorted(
        (t for t in seen if "architecture" in t.params and t.val_reward is not None and t.feasible),
        key=lambda t: -(t.val_reward or 0.0),
    )
    unique = dict.fromkeys(str(t.params["architecture"]) for t in ranked)
    return tuple(unique)[:ARCH_CHOICES]


def distributions(
    objective: Objective, architectures: Sequence[str] = ()
) -> dict[str, BaseDistribution]:
    dists: dict[str, BaseDistribution] = {}
    if architectures:
        dists["architecture"] = CategoricalDistribution(tuple(architectures))
    for name, p in objective.search_space.items():
        if isinstance(p, FloatParam):
            dists[name] = FloatDistribution(p.low, p.high, log=p.log)
        elif isinstance(p, IntParam):
            dists[name] = IntDistribution(p.low, p.high, log=p.log, step=p.step)
        else:
            dists[name] = CategoricalDistribution(p.choices)
    return dists


def active(objective: Objective, params: dict[str, Any]) -> list[str]:
    """The search-space parameters that apply, given the values of those they depend on."""
    names = []
    for name, p in objective.search_space.items():
        if all(params.get(dep) == value for dep, value in (p.when or {}).items()):
            names.append(name)
    return [*names, "architecture"] if uses_arch(objective, params) else names


def make_sampler(objective: Objective, seed: int) -> optuna.samplers.BaseSampler:
    """The objective's sampler; TPE and GP read each trial's constraints (Optuna ≥ 5)."""
    kind = objective.proposers.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if kind == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if kind == "gp":
            return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=8)


def _frozen(
    objective: Objective,
    dists: dict[str, BaseDistribution],
    t: SeenTrial,
    warm_from: str | None = None,
    curves: bool = False,
) -> FrozenTrial | None:
    """A history trial as Optuna knows it; None if it no longer fits the search space. Its
    validation curve becomes intermediate values where it was pruned, or everywhere with
    `curves` (an export for people's tools)."""
    names = [n for n in active(objective, t.params) if n in t.params and n in dists]
    state = _STATES.get(t.status, TrialState.FAIL)
    try:
        return optuna.trial.create_trial(
            state=state,
            values=study_values(objective, t) if state == TrialState.COMPLETE else None,
            params={n: t.params[n] for n in names},
            distributions={n: dists[n] for n in names},
            intermediate_values=dict(enumerate(t.curve))
            if curves or state == TrialState.PRUNED
            else None,
            constraints={str(i): v for i, v in enumerate(t.constraint_excess)} or None,
            user_attrs={"trial_id": t.trial_id} | ({"warm_start": warm_from} if warm_from else {}),
        )
    except ValueError:
        return None


def study_directions(objective: Objective) -> list[Literal["maximize", "minimize"]]:
    """One direction (the validation reward), or one per Pareto axis when asked."""
    if not objective.proposers.multi_objective:
        return ["maximize"]
    reward = objective.reward
    return [
        objective.primary_direction if a == reward.metric else METRIC_DIRECTIONS[a]
        for a in objective.pareto_axes
    ]


def study_values(objective: Objective, t: SeenTrial) -> list[float] | None:
    """What Optuna is told of a completed trial: validation numbers only, never the test split."""
    if t.val_reward is None:
        return None
    if not objective.proposers.multi_objective:
        return [t.val_reward]
    return [t.val[a] for a in objective.pareto_axes]


def build_study(
    objective: Objective,
    seen: Sequence[SeenTrial],
    seed: int,
    storage: str | None = None,
    study_name: str | None = None,
    warm: Sequence[SeenTrial] = (),
    curves: bool = False,
) -> optuna.Study:
    """A fresh study that has been told every trial of history: in memory for proposing, or
    in `storage` (an Optuna storage URL) when exporting history to Optuna's tools.

    `warm` trials come from another objective (`proposers.warm_start`); they are told first,
    with the user attribute `warm_start`, and those that do not fit this search space are left
    out. Under successive halving a configuration is told once, at the highest rung it reached.
    """
    study = optuna.create_study(
        directions=study_directions(objective),
        sampler=make_sampler(objective, seed),
        storage=storage,
        study_name=study_name,
    )
    dists = distributions(objective, known_architectures(seen))
    warm_from = objective.proposers.warm_start
    latest = {t.key: t for t in seen}  # history's order: a continuation follows its parent
    told = [(t, warm_from) for t in warm] + [(t, None) for t in latest.values()]
    for t, source in told:
        frozen = _frozen(objective, dists, t, source, curves)
        if frozen is not None and not (t.status == "ok" and study_values(objective, t) is None):
            study.add_trial(frozen)
    return study


def _suggest(
    objective: Objective, trial: optuna.Trial, architectures: Sequence[str]
) -> dict[str, Any] | None:
    """A define-by-run sample; None when it picks `arch` before any architecture is known."""
    params: dict[str, Any] = {}
    for name, p in objective.search_space.items():
        if not all(params.get(dep) == value for dep, value in (p.when or {}).items()):
            continue
        if isinstance(p, FloatParam):
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        elif isinstance(p, IntParam):
            params[name] = trial.suggest_int(name, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, CategoricalParam):
            params[name] = trial.suggest_categorical(name, list(p.choices))
    if uses_arch(objective, params):
        if not architectures:
            return None
        params["architecture"] = trial.suggest_categorical("architecture", list(architectures))
    return params


class OptunaProposer:
    """Asks a history-rebuilt study for a batch of distinct, untried proposals."""

    def __init__(self, objective: Objective) -> None:
        self.name = f"optuna:{objective.proposers.sampler}"

    def propose(
        self,
        objective: Objective,
        seen: Sequence[SeenTrial],
        n: int,
        cycle: int,
        first_number: int,
        pending: Sequence[Proposal] = (),
        warm: Sequence[SeenTrial] = (),
    ) -> list[Proposal]:
        """`n` proposals numbered from `first_number`, none repeating history or `pending`;
        `warm`: another objective's trials to seed the study with (`proposers.warm_start`)."""
        study = build_study(
            objective, seen, seed=objective.proposers.seed * 7919 + cycle, warm=warm
        )
        n_warm = sum("warm_start" in t.user_attrs for t in study.trials)
        warmed = (
            f"; study warm-started from {n_warm} trials of {objective.proposers.warm_start!r}"
            if n_warm
            else ""
        )
        values = {t.key: study_values(objective, t) for t in seen}
        tried = {t.key for t in seen} | {p.key for p in pending}
        queued = [
            dict(c)
            for c in objective.proposers.enqueue
            if params_key({**c, **objective.fixed}) not in tried
        ]
        for config in queued:
            study.enqueue_trial(config)
        architectures = known_architectures(seen)
        proposals: list[Proposal] = []
        for _ in range(n):
            for _attempt in range(MAX_ASKS_PER_SLOT):
                trial = study.ask()
                params = _suggest(objective, trial, architectures)
                if params is None:  # only the LLM proposes new architectures
                    study.tell(trial, state=TrialState.FAIL)
                    continue
                key = params_key({**params, **objective.fixed})
                if key not in tried:
                    break
                # A repeat: tell it what that configuration already scored, and ask again.
                known = values.get(key)
                study.tell(
                    trial,
                    known,
                    state=TrialState.COMPLETE if known is not None else TrialState.FAIL,
                )
            else:
                break  # the space is exhausted around here; propose fewer rather than repeat
            tried.add(key)
            rationale = (
                "enqueued by the objective (proposers.enqueue)"
                if len(proposals) < len(queued)
                else f"{self.name} sample after {len(study.trials) - 1} told or pending "
                f"trials{warmed}"
            )
            proposals.append(
                make_proposal(
                    objective,
                    cycle,
                    first_number + len(proposals),
                    len(proposals),
                    params,
                    self.name,
                    rationale,
                )
            )
        return proposals
