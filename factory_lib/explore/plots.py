"""The factory's plots, drawn from `factory_lib.explore.analysis` tables with matplotlib.

The card embeds them as PNGs and the notebook shows them inline; both call these functions.
The figures are built with the object-oriented API on a `Figure` (no pyplot state), so they
work in a headless task without choosing a backend.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure

from factory_lib.explore.analysis import ParetoAxis
from factory_lib.explore.summary import STATUS_ORDER

FIGSIZE = (6.4, 3.6)
DPI = 110
STATUS_COLOURS = {
    "ok": "tab:green",
    "pruned": "tab:olive",
    "failed": "tab:red",
    "diverged": "tab:purple",
    "timeout": "tab:brown",
}


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def best_so_far_figure(by_trial: pd.DataFrame) -> Figure:
    """Each trial's validation reward and the best so far, by trial number, cycles shaded."""
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    if by_trial.empty:
        ax.text(0.5, 0.5, "no trials yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    for i, (cycle, rows) in enumerate(by_trial.groupby("cycle", sort=True)):
        lo, hi = rows["number"].min() - 0.5, rows["number"].max() + 0.5
        ax.axvspan(lo, hi, color="0.93" if i % 2 else "1.0", zorder=0)
        ax.text(
            (lo + hi) / 2,
            1.0,
            f"c{cycle}",
            ha="center",
            va="bottom",
            fontsize=8,
            transform=ax.get_xaxis_transform(),
        )
    ax.scatter(by_trial["number"], by_trial["val_reward"], s=18, color="tab:blue", label="trial")
    ax.step(
        by_trial["number"],
        by_trial["best_val_reward"],
        where="post",
        color="tab:red",
        label="best so far",
    )
    ax.set_xlabel("trial number (across cycles)")
    ax.set_ylabel("validation reward")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def pareto_figure(board: pd.DataFrame, front: pd.DataFrame, axes: Sequence[ParetoAxis]) -> Figure:
    """Every completed trial, the first axis (quality) up, the second (cost) across, with the
    Pareto front drawn over them."""
    quality, cost = axes[0], axes[1]
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    done = board[board["status"] == "ok"] if not board.empty else board
    if done.empty:
        ax.text(0.5, 0.5, "no completed trials", ha="center", va="center", transform=ax.transAxes)
        return fig
    feasible = done["feasible"].astype(bool)
    ax.scatter(
        done.loc[feasible, cost.column],
        done.loc[feasible, quality.column],
        s=18,
        color="tab:blue",
        label="feasible",
    )
    if (~feasible).any():
        ax.scatter(
            done.loc[~feasible, cost.column],
            done.loc[~feasible, quality.column],
            s=18,
            color="tab:gray",
            marker="x",
            label="infeasible",
        )
    if not front.empty:
        line = front.sort_values(cost.column)
        ax.plot(
            line[cost.column], line[quality.column], "o-", color="tab:red", label="Pareto front"
        )
        for _, row in line.iterrows():
            ax.annotate(
                str(row["trial_id"]),
                (row[cost.column], row[quality.column]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    if cost.metric == "params" and done[cost.column].min() > 0:
        ax.set_xscale("log")
    ax.set_xlabel(f"{cost.metric} ({_arrow(cost)})")
    ax.set_ylabel(f"validation {quality.metric} ({_arrow(quality)})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _arrow(a: ParetoAxis) -> str:
    return "higher is better" if a.direction == "maximize" else "lower is better"


def proposer_figure(stats: pd.DataFrame) -> Figure:
    """Per proposer: trials by outcome, and the best validation reward it found."""
    fig = Figure(figsize=FIGSIZE)
    left, right = fig.subplots(1, 2)
    if stats.empty:
        left.text(0.5, 0.5, "no trials yet", ha="center", va="center", transform=left.transAxes)
        return fig
    names = list(stats["source"])
    start = [0] * len(names)
    for status in STATUS_ORDER:  # stacked, one colour per status
        counts = list(stats[status])
        if any(counts):
            left.barh(names, counts, left=start, color=STATUS_COLOURS[status], label=status)
            start = [a + b for a, b in zip(start, counts, strict=True)]
    left.set_xlabel("trials")
    left.legend(fontsize=8)
    best = [0.0 if math.isnan(v) else v for v in stats["best_val_reward"]]
    right.barh(names, best, color="tab:blue")
    right.set_xlabel("best validation reward")
    right.set_yticks([])
    fig.tight_layout()
    return fig
