"""The cycle card: what one cycle tried, what worked, what it cost and why it decided.

`cycle_card` turns a `CycleView` into Metaflow card components; the flow's end step appends
them to its `@card(type="blank", id="cycle")`. Every number comes from `explore.analysis` and
every plot from `explore.plots`, so the card, the notebook and `factory status` agree. Plots
are embedded as PNGs: the card is one self-contained HTML file, viewable offline.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
from metaflow.plugins.cards.card_modules.components import Image, Markdown, ProgressBar, Table

from factory_lib.explore import analysis, plots
from factory_lib.explore.analysis import CycleView, cell, missing
from factory_lib.explore.summary import LABELS, TRIGGER_TAG, number

CARD_ID = "cycle"
CAUSE_CHARS = 300


def text(value: str) -> str:
    """Free text from a record (a rationale, a reason, an error) as Markdown shows it: HTML
    escaped, so an answer from a model or a user's exception cannot add markup to the card."""
    return html.escape(value, quote=False)


def triggers(tags: Iterable[str]) -> list[str]:
    """Why a cycle was started, from its run's tags (`trigger:drift:<why>` → `drift: <why>`)."""
    return [t[len(TRIGGER_TAG) :].replace(":", ": ", 1) for t in tags if t.startswith(TRIGGER_TAG)]


def cycle_card(view: CycleView, started_by: Sequence[str] = ()) -> list[Any]:
    """The card's components, top to bottom; `started_by`: why the cycle was started."""
    return [
        *_header(view),
        *[Markdown(f"**Started by** {text(why)}") for why in started_by],
        *_space_changes(view),
        *_decision(view),
        *_budget(view),
        *_notes(view),
        *_leaderboard(view),
        *_progress(view),
        *_pareto(view),
        *_proposers(view),
        *_failures(view),
    ]


def _header(view: CycleView) -> list[Any]:
    s = view.summary
    where = f" · run `{view.run_pathspec}`" if view.run_pathspec else ""
    return [
        Markdown(
            f"# {view.objective.name}: cycle {view.cycle}\n\n"
            f"{s.trials} trials this cycle ({s.counts.text()}), "
            f"{s.trials_so_far} {LABELS['trials_so_far']}{where}\n\n"
            f"`{text(s.line())}`"
        )
    ]


def _space_changes(view: CycleView) -> list[Any]:
    if not view.space_changes:
        return []
    lines = [f"- {text(change)}" for change in view.space_changes]
    return [
        Markdown(
            "## Search space changed\n\n"
            "since the cycle this one continues from; earlier trials were drawn from the old "
            "space:\n\n" + "\n".join(lines)
        )
    ]


def _decision(view: CycleView) -> list[Any]:
    d = view.decision
    lines = [f"## Promotion decision: {d.status}", "", text(d.reason)]
    if d.challenger:
        lines.append(f"\n- challenger: `{d.challenger}`")
    if d.champion:
        lines.append(f"- champion before: `{d.champion}`")
    if d.delta is not None:
        lines.append(f"- delta on the held-out split: {d.delta:+.4g}")
    champ, summary = view.champion, view.summary.champion
    if champ is not None and summary is not None:
        p = champ.record.proposal
        params = ", ".join(f"{k}={text(cell(v))}" for k, v in sorted(p.params.items()))
        lines += [
            "",
            f"**Champion** `{summary.text()}`; promoted in cycle {champ.promoted_in_cycle}, "
            f"val reward (one run) {number(champ.record.val_reward)}; proposed by `{p.source}`: "
            f"{text(p.rationale) or '-'}",
            "",
            f"parameters: {params}",
        ]
    return [Markdown("\n".join(lines))]


def _budget(view: CycleView) -> list[Any]:
    b = analysis.budget_status(view)
    llm = view.llm_report
    cost = "\n\n" + "\n".join(f"- {text(line)}" for line in llm.cost_lines()) if llm else ""
    return [
        Markdown(
            "## Budget\n\n"
            f"{b.cycles_used} of {b.max_cycles} cycles spent, {b.cycles_left} left; "
            f"{b.trials_this_cycle} trials this cycle (budget {b.trials_per_cycle}), "
            f"{b.trials_total} in the search; training time {b.train_seconds_cycle:.1f} s this "
            f"cycle, {b.train_seconds_total:.1f} s in all; {b.stale_cycles} of {b.patience} "
            "cycles without gain before `factory loop` stops" + cost
        ),
        ProgressBar(max=b.max_cycles, value=b.cycles_used, label="cycles", unit="cycles"),
        ProgressBar(max=b.patience, value=b.stale_cycles, label="cycles without gain"),
    ]


def _notes(view: CycleView) -> list[Any]:
    """The lab notes: what the search learned, importances, plateau, the graded ledger."""
    notes = view.notes
    if notes is None:
        return []
    importances = [
        f"- {imp.evaluator}: " + ", ".join(f"{text(p)} {v:.2f}" for p, v in imp.shares)
        for imp in notes.importances
    ]
    counts = ", ".join(f"{n} {v}" for v, n in notes.verdicts().items())
    ledger: list[list[Any]] = [
        [e.trial_id, e.verdict, text(e.prediction), text(e.observed), text(e.hypothesis)]
        for e in notes.ledger
    ]
    return [
        Markdown(
            "## Lab notes\n\n"
            + "\n".join(f"- {text(c)}" for c in notes.changes)
            + f"\n\n**Plateau**: {'yes' if notes.plateau else 'no'}: {text(notes.plateau_reason)}"
            + "\n\n**Parameter importance** (share of the validation reward's variance; "
            + f"{text(notes.importance_note)})\n\n"
            + "\n".join(importances)
            + f"\n\n**Hypotheses ledger** ({len(notes.ledger)}: {counts})"
        ),
        Table(
            data=ledger or [["(none)", "", "", "", ""]],
            headers=["trial", "verdict", "prediction", "observed", "hypothesis"],
        ),
    ]


LEADERBOARD_COLUMNS = ["rank", "trial_id", "source", "status", "val_reward", "test_reward"]
COST_COLUMNS = ["n_params", "latency_ms", "train_seconds", "epochs"]


def _leaderboard(view: CycleView) -> list[Any]:
    board = analysis.leaderboard(view.records)
    metrics = [f"{s}_{m}" for s in ("val", "test") for m in view.objective.metric_names]
    return [
        Markdown("## Leaderboard (this cycle)"),
        _table(board, [*LEADERBOARD_COLUMNS, *metrics, *COST_COLUMNS], params=True),
    ]


def _progress(view: CycleView) -> list[Any]:
    by_trial = analysis.best_so_far(view.history)
    return [
        Markdown("## Best so far, across all cycles"),
        Image(plots.png(plots.best_so_far_figure(by_trial)), label="validation reward"),
        _table(analysis.best_by_cycle(view.history), analysis.BY_CYCLE_COLUMNS, labels=LABELS),
    ]


def _pareto(view: CycleView) -> list[Any]:
    axes = analysis.default_pareto_axes(view.objective)
    front = analysis.pareto_front(view.history, axes)
    board = analysis.leaderboard(view.history)
    names = " and ".join(f"{a.metric} ({a.direction})" for a in axes)
    return [
        Markdown(f"## Pareto front of {names}, all cycles"),
        Image(plots.png(plots.pareto_figure(board, front, axes)), label="Pareto front"),
        _table(front, ["trial_id", "source", *(a.column for a in axes), "val_reward"]),
    ]


def _proposers(view: CycleView) -> list[Any]:
    stats = analysis.proposer_stats(view.history)
    return [
        Markdown("## Proposers, all cycles"),
        _table(stats, analysis.PROPOSER_COLUMNS),
        Image(plots.png(plots.proposer_figure(stats)), label="proposers"),
    ]


def _failures(view: CycleView) -> list[Any]:
    failed = analysis.failed_trials(view.records)
    title = "## Trials that did not complete (pruned, failed, diverged, timeout)"
    if failed.empty:
        return [Markdown(f"{title}\n\nnone: every trial of this cycle completed")]
    failed["cause"] = failed["cause"].str.slice(0, CAUSE_CHARS)
    counts = view.summary.counts.model_copy(update={"ok": 0}).text()
    return [Markdown(f"{title}\n\n{counts}"), _table(failed, list(failed.columns))]


def _table(
    frame: pd.DataFrame,
    columns: Sequence[str],
    params: bool = False,
    labels: Mapping[str, str] | None = None,
) -> Table:
    """A card table of the named columns (those present), numbers to four digits; with
    `params`, one more column listing each trial's hyperparameters; `labels` names headers."""
    present = [c for c in columns if c in frame.columns]
    param_cols = [c for c in frame.columns if c.startswith("param_")] if params else []
    rows: list[list[Any]] = []
    for _, row in frame.iterrows():
        cells = [text(cell(row[c])) for c in present]
        if param_cols:
            cells.append(
                ", ".join(
                    f"{c.removeprefix('param_')}={text(cell(row[c]))}"
                    for c in param_cols
                    if not missing(row[c])
                )
            )
        rows.append(cells)
    headers = [*((labels or {}).get(c, c) for c in present), *(["params"] if param_cols else [])]
    return Table(data=rows or [["(none)", *[""] * (len(headers) - 1)]], headers=headers)
