"""Search efficiency: the factory's proposer against baselines, on cheap synthetic functions
and on real trials on the bundled data sets.

    python benchmarks/search.py --tasks synthetic     # Branin and Hartmann-6: seconds
    python benchmarks/search.py --tasks data          # 4 data-set tasks, real trials: ~20 min
    python benchmarks/search.py --tasks digits-mlp --seeds 3 --trials 24

Methods, all minimising the same loss from the same initial design (8 random points per seed,
shared by every method: paired):
- factory: the real `OptunaProposer` (TPE), rebuilt from the history every cycle and asked for
  a batch of 4, exactly as the start step does;
- tpe: plain sequential Optuna TPE (ask/tell one at a time);
- random: Optuna's RandomSampler;
- cmaes: Optuna's CmaEsSampler (every search space here is numeric, so it applies throughout).

The synthetic loss is the function's value. A data-set task trains each proposal for real
(`factory_lib.train.run_trial`, in this process, no Metaflow) and its loss is the negated
validation reward: 1 − val accuracy above the optimum 0 for the classification tasks, the val
RMSE for diabetes. Trials are cached by (parameters, training seed) within a seed, so the shared
initial design is trained once; "epochs" still counts them for every method, as each method on
its own would have trained them.

Reported: median best after every trial, trials to reach the target (random search's median
best at the full budget), area under the regret curve (mean of best-so-far loss − optimum over
the trials), epochs trained, each with a bootstrap 90% interval over seeds; plots under docs/.
The LLM arm is measured only live, with an API key.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml

from factory_lib.objective import FloatParam, IntParam, Objective, parse_objective
from factory_lib.propose.base import make_proposal, seen_by_proposers
from factory_lib.propose.optuna_proposer import OptunaProposer
from factory_lib.records import Evaluation, Proposal, TrialRecord, TrialResult
from factory_lib.reward import score

ROOT = Path(__file__).resolve().parents[1]
INITIAL = 8
BATCH = 4
METHODS = ("factory", "tpe", "random", "cmaes")
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
COMMON_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
    "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
}
MLP_SPACE = {
    **COMMON_SPACE,
    "depth": {"type": "int", "low": 1, "high": 3},
    "width": {"type": "int", "low": 16, "high": 256, "log": True},
}
CNN_SPACE = {
    **COMMON_SPACE,
    "blocks": {"type": "int", "low": 1, "high": 2},
    "channels": {"type": "int", "low": 8, "high": 32, "log": True},
}


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


@dataclass(frozen=True)
class DataTask:
    """Real trials of one model family on one bundled data set."""

    dataset: str
    family: str
    space: dict[str, dict[str, Any]]
    metric: str  # the reward; the loss is its negation
    max_epochs: int
    trials: int
    val_fraction: float = 0.15


# breast_cancer keeps 30% for validation: at 15% (85 rows) most configurations score 1.0.
# diabetes is the one task whose validation metric (RMSE) cannot saturate.
DATA_TASKS: dict[str, DataTask] = {
    "digits-mlp": DataTask("digits", "mlp", MLP_SPACE, "accuracy", 10, 40),
    "breast_cancer-mlp": DataTask("breast_cancer", "mlp", MLP_SPACE, "accuracy", 10, 40, 0.3),
    "diabetes-mlp": DataTask("diabetes", "mlp", MLP_SPACE, "rmse", 10, 40),
    "digits-cnn": DataTask("digits", "cnn", CNN_SPACE, "accuracy", 8, 40),
}
SYNTHETIC_TRIALS = 60
EARLY_STOPPING_PATIENCE = 3


@dataclass(frozen=True)
class Problem:
    """What every method searches: one objective's space, scored through the factory's reward."""

    objective: Objective
    initial: list[dict[str, Any]]
    evaluate: Callable[[Proposal], TrialResult]
    optimum: float  # the best loss there is: regret = loss − optimum


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


def data_objective(task: DataTask) -> Objective:
    """The factory objective of a data-set task; pruning off (benchmarks/pruning.py has it)."""
    spec = {
        "name": f"search-bench-{task.dataset}-{task.family}",
        "task": "regression" if task.metric == "rmse" else "classification",
        "data": {"dataset": task.dataset, "val_fraction": task.val_fraction},
        "model": {"families": [task.family]},
        "search_space": task.space,
        "fixed": {"family": task.family, "optimizer": "adamw"},
        "reward": {"metric": task.metric},
        "budget": {
            "trials_per_cycle": BATCH,
            "max_epochs": task.max_epochs,
            "early_stopping_patience": EARLY_STOPPING_PATIENCE,
        },
        "pruning": {"rule": "none"},
    }
    return parse_objective(yaml.safe_dump(spec), "benchmarks/search.py")


def synthetic_result(f: Callable[[np.ndarray], float], n: int, proposal: Proposal) -> TrialResult:
    """A trial whose validation 'accuracy' is −f(x): larger is better, as rewards are."""
    value = f(np.array([proposal.params[f"x{i}"] for i in range(n)]))
    evaluation = Evaluation(
        val={"accuracy": -value, "macro_f1": -value},
        test={"accuracy": -value, "macro_f1": -value},
        params=1,
        latency_ms=0.0,
        train_seconds=0.0,
    )
    return TrialResult(proposal=proposal, status="ok", evaluation=evaluation)


def synthetic_problem(task: str, seed: int) -> Problem:
    f, bounds, optimum = TASKS[task]
    lo, hi = np.array(bounds).T
    initial = np.random.default_rng(100 + seed).uniform(lo, hi, size=(INITIAL, len(bounds)))
    return Problem(
        objective=objective_for(bounds),
        initial=[{f"x{i}": float(v) for i, v in enumerate(p)} for p in initial],
        evaluate=lambda p: synthetic_result(f, len(bounds), p),
        optimum=optimum,
    )


class TrainedTrials:
    """Real trials, each trained once per (parameters, training seed), whoever proposes it."""

    def __init__(self, objective: Objective, data: Any) -> None:
        self.objective, self.data = objective, data
        self.results: dict[tuple[str, int], TrialResult] = {}

    def __call__(self, proposal: Proposal) -> TrialResult:
        from factory_lib.train.trial import run_trial

        key = (proposal.key, proposal.seed)
        if key not in self.results:
            with contextlib.redirect_stdout(io.StringIO()):  # run_trial reports every epoch
                self.results[key] = run_trial(self.objective, proposal, self.data).result
        return self.results[key].model_copy(update={"proposal": proposal})


def suggest(objective: Objective, trial: optuna.Trial) -> dict[str, Any]:
    """A sample of the objective's (unconditional) search space."""
    params: dict[str, Any] = {}
    for name, p in objective.search_space.items():
        if isinstance(p, FloatParam):
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        elif isinstance(p, IntParam):
            params[name] = trial.suggest_int(name, p.low, p.high, log=p.log, step=p.step)
        else:
            params[name] = trial.suggest_categorical(name, list(p.choices))
    return params


def data_problem(task: DataTask, seed: int, data: Any) -> Problem:
    objective = data_objective(task)
    design = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=100 + seed))
    return Problem(
        objective=objective,
        initial=[suggest(objective, design.ask()) for _ in range(INITIAL)],
        evaluate=TrainedTrials(objective, data),
        optimum=-1.0 if task.metric == "accuracy" else 0.0,
    )


def loss(record: TrialRecord) -> float:
    """What every method minimises: the negated validation reward; inf for a failed trial."""
    return -record.val_reward if record.val_reward is not None else math.inf


def run_factory(problem: Problem, seed: int, trials: int) -> list[TrialRecord]:
    base = problem.objective
    objective = base.model_copy(
        update={
            "proposers": base.proposers.model_copy(
                update={"seed": seed, "enqueue": tuple(problem.initial)}
            )
        }
    )
    history: list[TrialRecord] = []
    cycle = 0
    while len(history) < trials:
        cycle += 1
        n = min(BATCH if len(history) >= INITIAL else INITIAL, trials - len(history))
        proposals = OptunaProposer(objective).propose(
            objective, seen_by_proposers(objective, history), n, cycle, len(history)
        )
        if not proposals:
            break
        history += [score(objective, problem.evaluate(p)) for p in proposals]
    return history


def run_optuna(
    problem: Problem, trials: int, sampler: optuna.samplers.BaseSampler, name: str
) -> list[TrialRecord]:
    objective = problem.objective
    study = optuna.create_study(direction="minimize", sampler=sampler)
    for params in problem.initial:
        study.enqueue_trial(params)
    records = []
    for number in range(trials):
        trial = study.ask()
        proposal = make_proposal(objective, 1, number, number, suggest(objective, trial), name, "")
        record = score(objective, problem.evaluate(proposal))
        if math.isfinite(loss(record)):
            study.tell(trial, loss(record))
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        records.append(record)
    return records


def run_methods(problem: Problem, seed: int, trials: int) -> dict[str, list[TrialRecord]]:
    return {
        "factory": run_factory(problem, seed, trials),
        "tpe": run_optuna(problem, trials, optuna.samplers.TPESampler(seed=seed), "tpe"),
        "random": run_optuna(problem, trials, optuna.samplers.RandomSampler(seed=seed), "random"),
        "cmaes": run_optuna(
            problem,
            trials,
            optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
            "cmaes",
        ),
    }


def trials_to_target(best_so_far: np.ndarray, target: float, budget: int) -> float:
    """The first trial whose best so far reaches the target; budget + 1 if none does."""
    hits = np.nonzero(best_so_far <= target)[0]
    return float(hits[0] + 1) if len(hits) else float(budget + 1)


def bootstrap(
    values: np.ndarray, stat: Callable[[np.ndarray], float], rng: np.random.Generator
) -> tuple[float, float, float]:
    draws = [stat(values[rng.integers(0, len(values), len(values))]) for _ in range(2000)]
    return float(stat(values)), float(np.percentile(draws, 5)), float(np.percentile(draws, 95))


def summarise(
    runs: dict[str, list[list[TrialRecord]]], optimum: float, trials: int, rng: np.random.Generator
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Per method: median best, trials to target, regret area and epochs, over seeds."""
    best = {
        m: np.array([np.minimum.accumulate([loss(r) for r in run]) for run in seeds])
        for m, seeds in runs.items()
    }
    target = float(np.median(best["random"][:, -1]))
    rows = {}
    for method, c in best.items():
        epochs = np.array([sum(r.result.epochs for r in run) for run in runs[method]], float)
        rows[method] = {
            "median_best": bootstrap(c[:, -1], np.median, rng),
            "trials_to_target": bootstrap(
                np.array([trials_to_target(r, target, trials) for r in c]), np.median, rng
            ),
            "regret_auc": bootstrap((c - optimum).mean(axis=1), np.median, rng),
            # Synthetic trials train no epochs (and leave the bootstrap's draws as they were).
            "epochs": bootstrap(epochs, np.median, rng) if epochs.any() else None,
        }
    return {"target": target, "optimum": optimum, "methods": rows}, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        default="synthetic",
        help="comma-separated: synthetic, data, all, or task names "
        f"({', '.join([*TASKS, *DATA_TASKS])})",
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, help="trials per run (default: each task's own)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for real trials")
    parser.add_argument("--plots", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    groups = {"synthetic": [*TASKS], "data": [*DATA_TASKS], "all": [*TASKS, *DATA_TASKS]}
    tasks = [t for name in args.tasks.split(",") for t in groups.get(name, [name])]
    unknown = [t for t in tasks if t not in TASKS and t not in DATA_TASKS]
    if unknown:
        parser.error(f"unknown tasks {unknown}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's, once per trial
    rng = np.random.default_rng(0)
    report = {}
    for task in tasks:
        started = time.monotonic()
        if task in TASKS:
            trials = args.trials or SYNTHETIC_TRIALS
            problems = [synthetic_problem(task, seed) for seed in range(args.seeds)]
        else:
            import torch  # before Lightning, as everywhere in the factory

            from factory_lib.data.module import build_trial_data

            torch.set_num_threads(args.threads)
            trials = args.trials or DATA_TASKS[task].trials
            data = build_trial_data(data_objective(DATA_TASKS[task]))
            problems = [data_problem(DATA_TASKS[task], s, data) for s in range(args.seeds)]
        runs: dict[str, list[list[TrialRecord]]] = {m: [] for m in METHODS}
        for seed, problem in enumerate(problems):
            for method, records in run_methods(problem, seed, trials).items():
                runs[method].append(records)
            print(f"{task} seed {seed}: {time.monotonic() - started:.0f} s", file=sys.stderr)
        report[task], best = summarise(runs, problems[0].optimum, trials, rng)
        report[task]["trials"] = trials
        report[task]["wall_s"] = time.monotonic() - started
        _plot(task, best, problems[0].optimum, task in TASKS, args.plots / f"search-{task}.png")
    print(json.dumps(report, indent=1))
    print(_markdown(report))


def _markdown(report: dict[str, Any]) -> str:
    """The docs' table rows, and each task's trials-to-target ratios against the baselines."""
    lines, ratios = [], []
    for task, r in report.items():
        sign = -1.0 if task in DATA_TASKS and DATA_TASKS[task].metric == "accuracy" else 1.0
        for i, (method, row) in enumerate(r["methods"].items()):
            m, lo, hi = (sign * v for v in row["median_best"])
            best = f"{m:.4g} [{min(lo, hi):.4g}, {max(lo, hi):.4g}]"
            cells = [
                f"{v[0]:.4g} [{v[1]:.4g}, {v[2]:.4g}]" if v else "–"
                for v in (row["trials_to_target"], row["regret_auc"], row["epochs"])
            ]
            lines.append(f"| {task if i == 0 else ''} | {method} | {best} | {' | '.join(cells)} |")
        ttt = {m: row["trials_to_target"][0] for m, row in r["methods"].items()}
        ratios.append((task, ttt["factory"] / ttt["random"], ttt["factory"] / ttt["tpe"]))
    lines += [f"{t}: factory/random {a:.2f}x, factory/tpe {b:.2f}x" for t, a, b in ratios]
    lines.append(
        f"median over these tasks: factory/random {np.median([a for _, a, _ in ratios]):.2f}x, "
        f"factory/tpe {np.median([b for _, _, b in ratios]):.2f}x"
    )
    return "\n".join(lines)


def _plot(task: str, best: dict[str, np.ndarray], optimum: float, log: bool, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, c in best.items():
        regret = np.maximum(c - optimum, 1e-9)
        ax.plot(np.arange(1, c.shape[1] + 1), np.median(regret, axis=0), label=method)
    if log:
        ax.set_yscale("log")
        ax.set_ylabel("median simple regret (log)")
    elif task in DATA_TASKS and DATA_TASKS[task].metric == "rmse":
        ax.set_ylabel("median best val RMSE")
    else:
        ax.set_ylabel("median 1 − best val accuracy")
    ax.set_xlabel("trials")
    ax.set_title(f"{task}: best so far, median over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
