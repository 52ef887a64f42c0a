"""Pruning from history: does it save epochs without losing quality? Does cycle 2 start better?

    python benchmarks/pruning.py                     # 10 seeds, 4 cycles of 8 digits MLP trials
    python benchmarks/pruning.py --seeds 5 --cycles 2

Per seed, the same search runs once per arm: the factory's `OptunaProposer` asked for a batch
of 8 per cycle from the history so far, each trial trained for real (`run_trial`, in this
process, max 20 epochs, early stopping patience 20 so that early stopping hides nothing), with
the validation curves of every earlier cycle's trials as pruning references, as the cycle
flow passes them (`factory_lib.cycle.pruning_curves`). Arms:
- off: `pruning.rule: none`;
- percentile: the default rule (`PruningSpec()`: below the median of earlier curves from
  epoch 5 on, given at least 4 of them);
- halving: successive halving (`fidelity`; by default rungs of 3 and 20 epochs, the best third
  of the first continued from its checkpoint; `--rungs`, `--eta`), as the propose and train
  steps run it; no pruning.
Another arm is one more entry in `ARMS`.

Reported per arm: epochs trained (a continued trial counts only the epochs it trained
itself) and the held-out test accuracy of the best-by-validation trial, median over seeds; and
per seed against `off`, the saving in epochs (%) and the loss in test accuracy (points), mean
over seeds, each with a bootstrap 90% interval.

"A later cycle starts better": in the `off` arm, cycle 1's 8 proposals (empty history: TPE's
random start-up) against cycle 2's 8 (history: cycle 1's results), each cycle's median
validation reward; the per-seed difference, how often cycle 2 wins.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
import torch
import yaml

from factory_lib.data.module import TrialData, build_trial_data
from factory_lib.fidelity import promotions
from factory_lib.objective import FidelitySpec, Objective, PruningSpec, parse_objective
from factory_lib.propose.base import seen_by_proposers
from factory_lib.propose.optuna_proposer import OptunaProposer
from factory_lib.records import Proposal, TrialRecord
from factory_lib.reward import score
from factory_lib.train.group import train_group
from factory_lib.train.prune import history_curves
from factory_lib.train.trial import run_trial

BATCH = 8
CYCLES = 4
MAX_EPOCHS = 20
HALVING = FidelitySpec(rungs=(3, 20), eta=3)  # --rungs / --eta change it
OBJECTIVE = {
    "name": "pruning-bench",
    "task": "classification",
    "data": {"dataset": "digits"},
    "model": {"families": ["mlp"]},
    "search_space": {
        "lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
        "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "depth": {"type": "int", "low": 1, "high": 3},
        "width": {"type": "int", "low": 16, "high": 256, "log": True},
    },
    "fixed": {"family": "mlp", "optimizer": "adamw"},
    "reward": {"metric": "accuracy"},
    "budget": {
        "trials_per_cycle": BATCH,
        "max_epochs": MAX_EPOCHS,
        "early_stopping_patience": MAX_EPOCHS,
    },
}

TrainCycle = Callable[
    [Objective, TrialData, Sequence[Proposal], Sequence[TrialRecord]], list[TrialRecord]
]
Arm = Callable[[Objective, TrialData, int], list[TrialRecord]]


def pruning(objective: Objective, spec: PruningSpec) -> Objective:
    return objective.model_copy(update={"pruning": spec})


def train_against_history(
    objective: Objective,
    data: TrialData,
    proposals: Sequence[Proposal],
    history: Sequence[TrialRecord],
) -> list[TrialRecord]:
    """A cycle's trials, each pruned against the curves of every earlier cycle's trials."""
    references = history_curves(history)
    records = []
    for proposal in proposals:
        with contextlib.redirect_stdout(io.StringIO()):  # run_trial reports every epoch
            result = run_trial(objective, proposal, data, references=references).result
        records.append(score(objective, result))
    return records


def search(
    objective: Objective, data: TrialData, cycles: int, train_cycle: TrainCycle
) -> list[TrialRecord]:
    """Cycles of the factory's batched proposer, each trained by `train_cycle`."""
    history: list[TrialRecord] = []
    for cycle in range(1, cycles + 1):
        proposals = OptunaProposer(objective).propose(
            objective, seen_by_proposers(objective, history), BATCH, cycle, len(history)
        )
        history += train_cycle(objective, data, proposals, history)
    return history


def halving_search(objective: Objective, data: TrialData, cycles: int) -> list[TrialRecord]:
    """Successive halving as the cycle flow runs it: each cycle the promotions due come first
    (`propose_cycle`), new proposals fill the batch, and the cycle's trials train as one group
    (`train_group`), which continues the best of each rung at once from their checkpoints."""
    history: list[TrialRecord] = []
    stored: dict[str, bytes] = {}
    for cycle in range(1, cycles + 1):
        due = promotions(objective, history, cycle)[:BATCH]
        new = OptunaProposer(objective).propose(
            objective,
            seen_by_proposers(objective, history),
            BATCH - len(due),
            cycle,
            len(history),
        )
        references = history_curves(history)
        with contextlib.redirect_stdout(io.StringIO()):
            outputs = train_group(
                objective,
                [*due, *new],
                # one torch thread, as the other arms: train_group shares the cores this way
                concurrent_tasks=os.cpu_count() or 1,
                references=references,
                history=history,
                load_checkpoint=lambda p: stored[p.continues or ""],
            )
        stored.update({o.result.proposal.trial_id: o.checkpoint for o in outputs if o.checkpoint})
        history += [score(objective, o.result) for o in outputs]
    return history


def halving(objective: Objective, spec: FidelitySpec = HALVING) -> Objective:
    """Successive halving by `spec`; no pruning, no fused trials (the other arms train alone)."""
    return objective.model_copy(
        update={
            "fidelity": spec,
            "pruning": PruningSpec(rule="none"),
            "budget": objective.budget.model_copy(update={"fuse": False}),
        }
    )


def epochs_trained(records: Sequence[TrialRecord]) -> int:
    """Epochs actually trained: a continued trial's inherited epochs were counted in its parent."""
    return sum(r.result.epochs - r.result.start_epoch for r in records)


ARMS: dict[str, Arm] = {
    "off": lambda objective, data, cycles: search(
        pruning(objective, PruningSpec(rule="none")), data, cycles, train_against_history
    ),
    "percentile": lambda objective, data, cycles: search(
        pruning(objective, PruningSpec()), data, cycles, train_against_history
    ),
    "halving": lambda objective, data, cycles: halving_search(halving(objective), data, cycles),
}


def best_by_validation(records: Sequence[TrialRecord]) -> TrialRecord:
    """The trial the search would pick: best validation reward, the earliest on a tie."""
    scored = [r for r in records if r.val_reward is not None]
    return max(scored, key=lambda r: (r.val_reward, -r.proposal.number))


def median_val_reward(records: Sequence[TrialRecord]) -> float:
    return float(np.median([r.val_reward if r.val_reward is not None else 0.0 for r in records]))


def bootstrap(
    values: np.ndarray, stat: Callable[[np.ndarray], float], rng: np.random.Generator
) -> tuple[float, float, float]:
    draws = [stat(values[rng.integers(0, len(values), len(values))]) for _ in range(2000)]
    return float(stat(values)), float(np.percentile(draws, 5)), float(np.percentile(draws, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=CYCLES)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="off always runs"
    )
    parser.add_argument("--max-epochs", type=int, default=MAX_EPOCHS, help="shrunk for tests")
    parser.add_argument("--rungs", type=int, nargs="+", default=list(HALVING.rungs))
    parser.add_argument("--eta", type=int, default=HALVING.eta)
    args = parser.parse_args()
    spec = FidelitySpec(rungs=tuple(args.rungs), eta=args.eta)
    arms = {a: ARMS[a] for a in ARMS if a == "off" or a in args.arms}
    if "halving" in arms:
        arms["halving"] = lambda o, d, c: halving_search(halving(o, spec), d, c)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's, once per trial
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    epochs = {"max_epochs": args.max_epochs, "early_stopping_patience": args.max_epochs}
    shrunk = {**OBJECTIVE, "budget": {**OBJECTIVE["budget"], **epochs}}
    base = parse_objective(yaml.safe_dump(shrunk), "benchmarks/pruning.py")
    data = build_trial_data(base)
    runs: dict[str, list[list[TrialRecord]]] = {arm: [] for arm in arms}
    for seed in range(args.seeds):
        objective = base.model_copy(
            update={"proposers": base.proposers.model_copy(update={"seed": seed})}
        )
        for arm, run in arms.items():
            runs[arm].append(run(objective, data, args.cycles))
        print(f"seed {seed}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    rng = np.random.default_rng(0)
    report: dict[str, Any] = {
        "seeds": args.seeds,
        "cycles": args.cycles,
        "halving": spec.model_dump(),
        "arms": {},
    }
    epochs = {a: np.array([epochs_trained(run) for run in rs]) for a, rs in runs.items()}
    test = {
        a: np.array([best_by_validation(run).test_reward for run in rs]) for a, rs in runs.items()
    }
    for arm in arms:
        report["arms"][arm] = {
            "epochs": bootstrap(epochs[arm].astype(float), np.median, rng),
            "best_test_accuracy": bootstrap(test[arm], np.median, rng),
            "pruned_trials": float(
                np.mean([sum(r.status == "pruned" for r in run) for run in runs[arm]])
            ),
            "saving_pct": bootstrap(100 * (1 - epochs[arm] / epochs["off"]), np.mean, rng),
            "loss_points": bootstrap(100 * (test["off"] - test[arm]), np.mean, rng),
            "per_seed_epochs": epochs[arm].tolist(),
            "per_seed_test": test[arm].tolist(),
        }
    if args.cycles >= 2:
        first = np.array([median_val_reward(run[:BATCH]) for run in runs["off"]])
        second = np.array([median_val_reward(run[BATCH : 2 * BATCH]) for run in runs["off"]])
        report["cycle_2_vs_1"] = {
            "cycle_1_median_val": bootstrap(first, np.median, rng),
            "cycle_2_median_val": bootstrap(second, np.median, rng),
            "difference_points": bootstrap(100 * (second - first), np.mean, rng),
            "cycle_2_wins": int(np.sum(second > first)),
            "ties": int(np.sum(second == first)),
            "per_seed_difference_points": (100 * (second - first)).tolist(),
        }
    report["wall_s"] = time.monotonic() - started
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
