"""Pruning from history: stop a trial whose validation curve falls behind earlier trials'.

At each epoch from `pruning.warmup_epochs` on, a trial's validation metric is compared with
the `pruning.percentile` of the earlier trials' values at the same epoch (the median by
default), over every trial of history that reached that epoch, earlier cycles included (their
curves are in the records, so no side database is needed) and the trials that ran before it
in the same task. A trial worse than that, in the metric's direction, stops and is recorded as
`pruned` with its curve. With fewer than `pruning.min_trials` earlier curves at an epoch,
nothing is pruned there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from factory_lib.objective import PruningSpec


def prune_reason(
    curve: Sequence[float],
    references: Sequence[Sequence[float]],
    spec: PruningSpec,
    direction: Literal["maximize", "minimize"],
) -> str | None:
    """Why a trial with this curve so far should stop now, or None to let it go on."""
    if spec.rule == "none" or not curve:
        return None
    epoch = len(curve)  # 1-based: the value just measured is curve[epoch - 1]
    if epoch < spec.warmup_epochs:
        return None
    earlier = [r[epoch - 1] for r in references if len(r) >= epoch]
    if len(earlier) < spec.min_trials:
        return None
    # "Worse than the p-th percentile" counted from the good end of the metric.
    q = spec.percentile if direction == "minimize" else 100 - spec.percentile
    bar = float(np.percentile(earlier, q))
    value = curve[-1]
    worse = value < bar if direction == "maximize" else value > bar
    if not worse:
        return None
    return (
        f"pruned at epoch {epoch}: {value:.4g} is worse than the {spec.percentile:g}th-percentile "
        f"bar {bar:.4g} of {len(earlier)} earlier trials at that epoch"
    )
