"""The trial logs a cycle's train tasks kept (`trial_logs`, factory_lib.train.tracking)."""

from __future__ import annotations

from pathlib import Path

from factory_lib.runs.client import all_namespaces


def cycle_trial_logs(run_pathspec: str) -> dict[str, dict[str, bytes]]:
    """Trial id → relative path → bytes, from every train task of the run (a task that
    @catch stood in for, or one run before tracking existed, has none)."""
    from metaflow.client.core import Step

    logs: dict[str, dict[str, bytes]] = {}
    with all_namespaces():
        for task in Step(f"{run_pathspec}/train"):
            logs.update(getattr(task.data, "trial_logs", None) or {})
    return logs


def write_logs(logs: dict[str, dict[str, bytes]], into: Path) -> int:
    """Write each trial's files under `into/<trial id>/`; returns how many were written."""
    written = 0
    for trial_id, files in logs.items():
        for relative, blob in files.items():
            path = into / trial_id / relative
            if into.resolve() not in path.resolve().parents:  # names are ours, but check
                raise ValueError(f"{trial_id}: log path {relative!r} leaves {into}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
            written += 1
    return written
