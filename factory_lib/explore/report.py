"""Rich renderings of analysis results for the terminal (`factory status`, `factory show`)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from factory_lib.explore.analysis import cell
from factory_lib.explore.summary import LABELS, STATUS_ORDER, CycleSummary, number
from factory_lib.records import TrialRecord

HEADER_CHARS = 10  # status headers wrap at this width, so a table of cycles fits 200 columns


def status_table(objective_name: str, summaries: Sequence[CycleSummary]) -> Table:
    """The cycles of a search (`analysis.cycle_summaries`), one row each, in the words and
    numbers of every other screen (`explore.summary.LABELS`); a retired cycle's row is dimmed
    and says who retired it and why."""
    metric = next((s.champion.metric for s in reversed(summaries) if s.champion), "metric")
    headers = [
        "cycle",
        "run",
        LABELS["trials"],
        *STATUS_ORDER,
        LABELS["best_val_reward_this_cycle"],
        LABELS["best_val_reward_so_far"],
        LABELS["decision"],
        LABELS["champion"],
        LABELS["test_one_run"].format(metric=metric),
        LABELS["test_mean"].format(metric=metric, seeds="mean over seeds"),
        "seeds",
        LABELS["train_seconds"],
    ]
    retired = sum(1 for s in summaries if s.retired)
    if retired:
        headers.append("retired")
    title = f"{objective_name}: {len(summaries)} cycles"
    table = Table(title=title + (f" ({retired} retired)" if retired else ""))
    for header in headers:
        left = header in ("run", LABELS["decision"], LABELS["champion"], "retired")
        # narrow headers, and folded rather than cut cells: a run id or a decision stays whole
        table.add_column(
            textwrap.fill(header, HEADER_CHARS),
            justify="left" if left else "right",
            overflow="fold",
        )
    for s in summaries:
        champ = s.champion
        table.add_row(
            str(s.cycle),
            s.run_id or "-",
            str(s.trials),
            *(str(getattr(s.counts, status)) for status in STATUS_ORDER),
            number(s.best_val_reward_this_cycle),
            number(s.best_val_reward_so_far),
            s.decision,
            champ.trial_id if champ else "none",
            number(champ.test_one_run if champ else None),
            number(champ.test_mean if champ else None),
            str(champ.seeds) if champ else "-",
            f"{s.train_seconds:.1f}",
            *((s.retired or "",) if retired else ()),
            style="dim" if s.retired else None,
        )
    return table


def trial_panel(record: TrialRecord) -> Table:
    """Every field of one trial's record, as a two-column table."""
    r = record.result
    p = record.proposal
    rows: list[tuple[str, Any]] = [
        ("trial", p.trial_id),
        ("cycle", p.cycle),
        ("number", p.number),
        ("source", p.source),
        ("rationale", p.rationale),
        ("seed", p.seed),
        ("status", r.status),
        ("cause", r.cause),
        ("feasible", record.feasible),
        ("violations", "; ".join(record.violations)),
        ("val reward", record.val_reward),
        ("test reward", record.test_reward),
        *((f"param {k}", v) for k, v in sorted(p.params.items())),
    ]
    ev = r.evaluation
    if ev is not None:
        rows += [
            *((f"val {k}", v) for k, v in ev.val.items()),
            *((f"test {k}", v) for k, v in ev.test.items()),
            ("params (count)", ev.params),
            ("latency ms/sample", ev.latency_ms),
            ("train seconds", ev.train_seconds),
        ]
    rows += [
        ("epochs", r.epochs if not r.start_epoch else f"{r.epochs} ({r.start_epoch} inherited)"),
        *((("continues", p.continues),) if p.continues else ()),
        ("validation curve", ", ".join(f"{v:.4g}" for v in r.curve)),
        ("weights", r.weights_sha),
        ("task", r.task_pathspec),
    ]
    table = Table(title=f"trial {p.trial_id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in rows:
        table.add_row(name, cell(value))
    return table
