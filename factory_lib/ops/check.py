"""`factory check OBJECTIVE...`: everything a cycle would refuse, and what it would run,
without training.

For each file: the checks every run makes before any step (factory_lib.checks); the data,
loaded and described (sizes, classes, split fingerprints); one model per family at the small
and the large end of the search space, built, with its parameter count; and what a cycle
runs, with a rough cost from one timed epoch of the largest model.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from factory_lib.checks import check_file
from factory_lib.data.module import TrialData, build_trial_data
from factory_lib.models.builders import build_model, count_params
from factory_lib.models.params import FAMILY_PARAMS
from factory_lib.objective import CategoricalParam, FloatParam, IntParam, Objective

# What a local cycle costs beyond its trials' training (docs/benchmarks.md, overhead).
CYCLE_OVERHEAD_S = 15.0


def check_report(path: Path) -> list[str]:
    """The lines `factory check` prints for one objective; raises ObjectiveError first."""
    checked = check_file(path)
    objective = checked.objective
    lines = [f"{path}: ok", *(f"  warning: {w}" for w in checked.warnings)]
    data = build_trial_data(objective)
    summary = data.summary
    sizes = ", ".join(f"{k} {v}" for k, v in summary.sizes.items())
    what = "classes" if objective.task == "classification" else "output(s)"
    lines.append(
        f"  data {summary.name}: {sizes} rows; input {summary.input_shape}, "
        f"{summary.n_outputs} {what}; fingerprint {summary.fingerprint}"
    )
    lines.append(
        "  splits: " + ", ".join(f"{k} {v}" for k, v in summary.split_fingerprints.items())
    )
    if summary.classes is not None:
        shown = ", ".join(map(str, summary.classes[:10]))
        lines.append(f"  classes: {shown}{', ...' if len(summary.classes) > 10 else ''}")
    prep = data.preprocessing
    lines.append(f"  preprocessing: {prep.describe() if prep else 'as the data module yields it'}")
    lines += [f"  note: {n}" for n in summary.notes]
    largest: nn.Module | None = None
    for family, ends in _model_ends(objective).items():
        if ends is None:
            grammar = objective.model.grammar
            assert grammar is not None  # the schema pairs `arch` with a grammar
            lines.append(
                f"  model {family}: designed by the proposers within the grammar "
                f"(at most {grammar.max_depth} blocks, {grammar.max_params:,} parameters)"
            )
            continue
        built = [build_model(objective, p, summary.input_shape, summary.n_outputs) for p in ends]
        counts = [count_params(m) for m in built]
        lines.append(f"  model {family}: {counts[0]:,} to {counts[1]:,} parameters")
        if largest is None or counts[1] > count_params(largest):
            largest = built[1]
    lines += _cycle_lines(objective, data, largest)
    return lines


def _model_ends(objective: Objective) -> dict[str, tuple[dict[str, Any], dict[str, Any]] | None]:
    """Per family, the parameters of its smallest and largest model in the search space (None
    for `arch`, whose models the proposers design)."""
    families = ("builder",) if objective.model.builder else objective.model.families
    ends: dict[str, tuple[dict[str, Any], dict[str, Any]] | None] = {}
    for family in families:
        if family == "arch":
            ends[family] = None
            continue
        small: dict[str, Any] = {**objective.fixed, "family": family}
        large: dict[str, Any] = dict(small)
        for name, spec in objective.search_space.items():
            if name == "family" or (spec.when or {}).get("family", family) != family:
                continue
            if family != "builder" and name not in FAMILY_PARAMS[family]:
                continue
            if isinstance(spec, IntParam | FloatParam):
                small[name], large[name] = spec.low, spec.high
            elif isinstance(spec, CategoricalParam):
                small[name], large[name] = spec.choices[0], spec.choices[-1]
        ends[family] = (small, large)
    return ends


def _cycle_lines(objective: Objective, data: TrialData, model: nn.Module | None) -> list[str]:
    budget = objective.budget
    tasks = min(budget.trials_per_cycle, os.cpu_count() or 1)
    if budget.group_size != "auto":
        tasks = math.ceil(budget.trials_per_cycle / int(budget.group_size))
    rungs = (
        f", successive halving at {objective.fidelity.rungs} epochs" if objective.fidelity else ""
    )
    lines = [
        f"  a cycle: {budget.trials_per_cycle} trials in {tasks} train task(s), up to "
        f"{budget.max_epochs} epochs each{rungs}; the promotion gate re-trains over "
        f"{objective.promotion.seeds} seed(s); at most {budget.max_cycles} cycles"
    ]
    if model is None:
        return lines
    epoch_s = _epoch_seconds(model, data, objective.task)
    trial_s = epoch_s * budget.max_epochs
    waves = math.ceil(budget.trials_per_cycle / max(1, min(tasks, os.cpu_count() or 1)))
    cycle_s = waves * trial_s + (objective.promotion.seeds - 1) * trial_s + CYCLE_OVERHEAD_S
    lines.append(
        f"  rough cost here: one epoch of the largest model {epoch_s:.2f} s, a trial at most "
        f"{trial_s:.1f} s, a cycle at most {cycle_s / 60:.1f} min (no early stopping or "
        "pruning counted)"
    )
    return lines


def _epoch_seconds(model: nn.Module, data: TrialData, task: str) -> float:
    """One timed training epoch of `model` on the data, on the CPU."""
    optimizer = torch.optim.Adam(model.parameters())
    loss_fn: nn.Module = nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()
    dm = data.datamodule
    started = time.perf_counter()
    for batch in dm.train_dataloader():
        x, y = batch[0], batch[1]
        optimizer.zero_grad()
        out = model(x.float())
        target = y.long() if task == "classification" else y.float().view_as(out)
        loss_fn(out, target).backward()
        optimizer.step()
    return time.perf_counter() - started
