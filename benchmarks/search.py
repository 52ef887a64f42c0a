"""Search efficiency on cheap synthetic functions: the factory's proposer against baselines.

    python benchmarks/search.py                      # Branin and Hartmann-6, 5 seeds, 60 trials
    python benchmarks/search.py --seeds 10 --trials 100

Methods, all minimising the same function from the same initial design (8 shared random
points per seed, paired across methods):
- factory: the real `OptunaProposer` (TPE), rebuilt from the history every cycle and asked for
  a batch of 4, exactly as the propose step does;
- tpe: plain sequential Optuna TPE (ask/tell one at a time);
- random: Optuna's RandomSampler;
- cmaes: Optuna's CmaEsSampler.
Reported: median best value after every trial, trials to reach the target (random search's
median best at the full budget), area under the regret curve, each with a bootstrap 90%
interval over seeds; plots under docs/. The LLM arm is measured only live, with an API key.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import yaml

from factory_lib.objective import Objective, parse_objective
from factory_lib.propose import OptunaProposer, seen_by_proposers
from factory_lib.records import Evaluation, TrialRecord, TrialResult
from factory_lib.reward import score

ROOT = Path(__file__).resolve().parents[1]
INITIAL = 8
BATCH = 4
HARTMANN_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
HARTMANN_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)
HARTMANN_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def branin(x: np.ndarray) -> float:
    x1, x2 = x
    return float(
        (x2 - 5.1 / (4 * math.pi**2) * x1**2 + 5 / math.pi * x1 - 6) ** 2
        + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1)
        + 10
    )


def hartmann6(x: np.ndarray) -> float:
    return float(
        -np.sum(HARTMANN_ALPHA * np.exp(-np.sum(HARTMANN_A * (x - HARTMANN_P) ** 2, axis=1)))
    )


TASKS: dict[str, tuple[Callable[[np.ndarray], float], list[tuple[float, float]], float]] = {
    "branin": (branin, [(-5.0, 10.0), (0.0, 15.0)], 0.397887),
    "hartmann6": (hartmann6, [(0.0, 1.0)] * 6, -3.32237),
}


def objective_for(bounds: list[tuple[float, float]]) -> Objective:
    """A factory objective whose search space is the function's box (data: a placeholder)."""
    space = {f"x{i}": {"type": "float", "low": lo, "high": hi} for i, (lo, hi) in enumerate(bounds)}
    spec = {
        "name": "search-bench",
        "task": "classification",
        "data": {"dataset": "iris"},
        "search_space": space,
        "reward": {"metric": "accuracy"},
        "budget": {"trials_per_cycle": BATCH},
    }
    return parse_objective(yaml.safe_dump(spec), "benchmarks/search.py")


def record(objective: Objective, proposal: object, value: float) -> TrialRecord:
    """A trial record whose validation 'accuracy' is −f(x): larger is better, as rewards are."""
    evaluation = Evaluation(
        val={"accuracy": -value, "macro_f1": -value},
        test={"accuracy": -value, "macro_f1": -value},
        params=1,
        latency_ms=0.0,
        train_seconds=0.0,
    )
    return score(objective, TrialResult(proposal=proposal, status="ok", evaluation=evaluation))  # type: ignore[arg-type]


def run_factory(task: str, seed: int, trials: int, initial: np.ndarray) -> list[float]:
    f, bounds, _ = TASKS[task]
    base = objective_for(bounds)
    objective = base.model_copy(
        update={
            "proposers": base.proposers.model_copy(
                update={
                    "seed": seed,
                    "enqueue": tuple({f"x{i}": float(v) for i, v in enumerate(p)} for p in initial),
                }
            )
        }
    )
    history: list[TrialRecord] = []
    values: list[float] = []
    cycle = 0
    while len(values) < trials:
        cycle += 1
        n = min(BATCH if len(values) >= INITIAL else INITIAL, trials - len(values))
        proposals = OptunaProposer(objective).propose(
            objective, seen_by_proposers(objective, history), n, cycle, len(history)
        )
        for p in proposals:
            value = f(np.array([p.params[f"x{i}"] for i in range(len(bounds))]))
            history.append(record(objective, p, value))
            values.append(value)
    return values


def run_optuna(
    task: str, seed: int, trials: int, initial: np.ndarray, sampler: optuna.samplers.BaseSampler
) -> list[float]:
    f, bounds, _ = TASKS[task]
    study = optuna.create_study(direction="minimize", sampler=sampler)
    for p in initial:
        study.enqueue_trial({f"x{i}": float(v) for i, v in enumerate(p)})
    values = []
    for _ in range(trials):
        trial = study.ask()
        x = np.array([trial.suggest_float(f"x{i}", lo, hi) for i, (lo, hi) in enumerate(bounds)])
        value = f(x)
        study.tell(trial, value)
        values.append(value)
    return values


def trials_to_target(best_so_far: np.ndarray, target: float, budget: int) -> float:
    """The first trial whose best so far reaches the target; budget + 1 if none does."""
    hits = np.nonzero(best_so_far <= target)[0]
    return float(hits[0] + 1) if len(hits) else float(budget + 1)


def bootstrap(
    values: np.ndarray, stat: Callable[[np.ndarray], float], rng: np.random.Generator
) -> tuple[float, float, float]:
    draws = [stat(values[rng.integers(0, len(values), len(values))]) for _ in range(2000)]
    return stat(values), float(np.percentile(draws, 5)), float(np.percentile(draws, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--plots", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import warnings

    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    rng = np.random.default_rng(0)
    report = {}
    for task, (_, bounds, optimum) in TASKS.items():
        curves: dict[str, list[np.ndarray]] = {m: [] for m in ("factory", "tpe", "random", "cmaes")}
        for seed in range(args.seeds):
            lo, hi = np.array(bounds).T
            initial = np.random.default_rng(100 + seed).uniform(lo, hi, size=(INITIAL, len(bounds)))
            runs = {
                "factory": run_factory(task, seed, args.trials, initial),
                "tpe": run_optuna(
                    task, seed, args.trials, initial, optuna.samplers.TPESampler(seed=seed)
                ),
                "random": run_optuna(
                    task, seed, args.trials, initial, optuna.samplers.RandomSampler(seed=seed)
                ),
                "cmaes": run_optuna(
                    task,
                    seed,
                    args.trials,
                    initial,
                    optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
                ),
            }
            for method, values in runs.items():
                curves[method].append(np.minimum.accumulate(values))
        best = {m: np.array(c) for m, c in curves.items()}
        target = float(np.median(best["random"][:, -1]))

        rows = {}
        for method, c in best.items():
            regret = c - optimum
            rows[method] = {
                "median_best": bootstrap(c[:, -1], np.median, rng),
                "trials_to_target": bootstrap(
                    np.array([trials_to_target(r, target, args.trials) for r in c]), np.median, rng
                ),
                "regret_auc": bootstrap(regret.mean(axis=1), np.median, rng),
            }
        report[task] = {"target": target, "optimum": optimum, "methods": rows}
        _plot(task, best, optimum, args.plots / f"search-{task}.png")
    print(json.dumps(report, indent=1))


def _plot(task: str, best: dict[str, np.ndarray], optimum: float, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, c in best.items():
        regret = np.maximum(c - optimum, 1e-9)
        ax.plot(np.arange(1, c.shape[1] + 1), np.median(regret, axis=0), label=method)
    ax.set_yscale("log")
    ax.set_xlabel("trials")
    ax.set_ylabel("median simple regret (log)")
    ax.set_title(f"{task}: best so far, median over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
