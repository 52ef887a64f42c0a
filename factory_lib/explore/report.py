"""Rich renderings of analysis results for the terminal (`factory status`, `factory show`)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from rich.table import Table

from factory_lib.explore.analysis import cell
from factory_lib.records import TrialRecord

STATUS_COLUMNS = (
    ("cycle", "cycle"),
    ("run_id", "run"),
    ("trials", "trials"),
    ("ok", "ok"),
    ("not_ok", "failed"),
    ("cycle_best", "best reward"),
    ("best_val_reward", "best so far"),
    ("decision", "decision"),
    ("champion", "champion"),
    ("champion_test", "champion test"),
    ("train_seconds", "train s"),
)
# Shown when a cycle of the search is retired: when, by whom and why.
RETIRED_COLUMN = ("retired", "retired")


def status_table(objective_name: str, cycles: pd.DataFrame) -> Table:
    """The cycles of a search (from `analysis.cycle_table`), one row each; a retired cycle's
    row is dimmed and says who retired it and why."""
    retired = cycles["retired"].notna()
    columns = (*STATUS_COLUMNS, RETIRED_COLUMN) if retired.any() else STATUS_COLUMNS
    title = f"{objective_name}: {len(cycles)} cycles"
    table = Table(title=title + (f" ({int(retired.sum())} retired)" if retired.any() else ""))
    for _, header in columns:
        table.add_column(
            header, justify="left" if header in ("run", "decision", "retired") else "right"
        )
    for is_retired, (_, row) in zip(retired, cycles.iterrows(), strict=True):
        table.add_row(
            *(cell(row[column]) for column, _ in columns), style="dim" if is_retired else None
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
