"""Throughput: one cycle as one trial per task, as trial groups, and with fused trials.

    python benchmarks/throughput.py                    # 8 trials, CPU or the local GPU
    python benchmarks/throughput.py --trials 16 --epochs 10 --skip-cycles

Part 1 runs three fresh cycles of the same 8 proposals through metaflow.Runner (throw-away
datastore) on a digits objective whose trials differ only in numbers (family mlp, depth 2,
width 128; lr, weight decay and dropout searched), so they can fuse:
  per-task: budget.group_size 1, fuse off     groups: group_size auto, fuse off
  fused:    group_size auto, fuse on
and reports cycle wall time, Σ trial seconds, training samples per second of wall time and
trials per hour.

Part 2, in-process (no Metaflow): samples/s of one Lightning trial against K trials fused.
"""

from __future__ import annotations

# torch and Lightning before Runner: Metaflow's vendored typing_extensions can break their
# first import once Runner has run in this process (#2462)
import lightning  # noqa: F401  # isort: skip
import torch  # isort: skip

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "per-task": {"group_size": 1, "fuse": False},
    "groups": {"group_size": "auto", "fuse": False},
    "fused": {"group_size": "auto", "fuse": True},
}


def _objective(tmp: Path, trials: int, epochs: int, variant: dict[str, object]) -> Path:
    spec = yaml.safe_load((ROOT / "objectives" / "digits.yaml").read_text())
    spec["name"] = "throughput"
    spec["model"] = {"families": ["mlp"]}
    spec["search_space"] = {k: spec["search_space"][k] for k in ("lr", "weight_decay", "dropout")}
    spec["fixed"] = {
        "optimizer": "adamw",
        "family": "mlp",
        "depth": 2,
        "width": 128,
        "activation": "relu",
    }
    spec["proposers"].pop("llm", None)
    spec["budget"].update(
        trials_per_cycle=trials, max_epochs=epochs, early_stopping_patience=epochs, **variant
    )
    path = tmp / f"throughput-{variant['group_size']}-{variant['fuse']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cycles(trials: int, epochs: int) -> list[dict[str, object]]:
    from factory_lib.runs.env import ensure_metaflow_user

    ensure_metaflow_user()
    from metaflow.runner.metaflow_runner import Runner

    tmp = Path(tempfile.mkdtemp(prefix="factory-throughput-"))
    rows = []
    for name, variant in VARIANTS.items():
        objective = _objective(tmp, trials, epochs, variant)
        started = time.time()
        with Runner(
            str(ROOT / "flows" / "cycle.py"),
            show_output=False,
            config=[("objective", str(objective))],
        ).run(fresh=True) as running:
            wall = time.time() - started
            assert running.status == "successful", running.stderr[-3000:]
            data = running.run["end"].task.data
        results = [r.result for r in data.records]
        train_size = data.plan.data.sizes["train"]
        samples = sum(r.epochs * train_size for r in results)
        rows.append(
            {
                "variant": name,
                "trials": len(results),
                "ok": sum(r.status == "ok" for r in results),
                "tasks": len(list(running.run["train"])),
                "wall_s": round(wall, 1),
                "sum_trial_s": round(
                    sum(r.evaluation.train_seconds for r in results if r.evaluation), 1
                ),
                "samples_per_s": round(samples / wall),
                "trials_per_hour": round(len(results) / wall * 3600),
            }
        )
    return rows


def in_process(epochs: int, fused_sizes: tuple[int, ...]) -> list[dict[str, object]]:
    """One Lightning trial against K fused trials, same data, same epochs, this device."""
    from factory_lib.data.module import build_trial_data
    from factory_lib.objective import load_objective
    from factory_lib.propose.base import make_proposal
    from factory_lib.train.fused import train_fused
    from factory_lib.train.trial import run_trial

    base = load_objective(ROOT / "objectives" / "digits.yaml")
    objective = base.model_copy(
        update={
            "budget": base.budget.model_copy(
                update={"max_epochs": epochs, "early_stopping_patience": epochs}
            ),
            "fixed": {"optimizer": "adamw"},
        }
    )
    data = build_trial_data(objective)
    n_train = len(data.datamodule.tensors["train"][1])  # type: ignore[attr-defined]
    params = {"family": "mlp", "depth": 2, "width": 128, "activation": "relu", "dropout": 0.0}

    def proposal(i: int):  # type: ignore[no-untyped-def]
        return make_proposal(objective, 1, i, i, {**params, "lr": 1e-3 * (1 + i % 7)}, "bench", "")

    run_trial(objective, proposal(0), data)  # warm-up: first-call costs out of the timing
    started = time.perf_counter()
    run_trial(objective, proposal(0), data)
    alone = n_train * epochs / (time.perf_counter() - started)
    rows = [
        {"trials": 1, "mode": "Lightning, alone", "samples_per_s": round(alone), "speedup": 1.0}
    ]
    for k in fused_sizes:
        proposals = [proposal(i) for i in range(k)]
        train_fused(objective, proposals[:2], data)  # warm-up
        started = time.perf_counter()
        train_fused(objective, proposals, data)
        rate = k * n_train * epochs / (time.perf_counter() - started)
        rows.append(
            {
                "trials": k,
                "mode": "fused",
                "samples_per_s": round(rate),
                "speedup": round(rate / alone, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--skip-cycles", action="store_true", help="only the in-process part")
    args = parser.parse_args()
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = tempfile.mkdtemp(prefix="factory-bench-")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {device}",
        "cycles": [] if args.skip_cycles else cycles(args.trials, args.epochs),
        "in_process": in_process(args.epochs, (8, 32)),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
