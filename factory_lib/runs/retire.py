"""Retiring a cycle: a person's tag on its run that makes the search pass over it.

A retired cycle (a typo in the objective, a wrong data set) stays in the datastore, readable and
append-only like every run; `chain_from` skips it as `--from-run` skips a damaged run: the next
cycle continues from the newest cycle that is not retired, takes its champion and its patience
count, and numbers its cycle and trials on after every run of the search, retired ones included.
The budget's `max_cycles` does not count retired cycles. Only the tip of a search can be retired
(a cycle that no other cycle continued from), and unretired while it still is.
"""

from __future__ import annotations

from typing import Any

from factory_lib.registry import utc_stamp
from factory_lib.runs.client import (
    RETIRED_TAG,
    Retirement,
    all_namespaces,
    branch_of,
    cycle_runs,
    default_branch,
    objective_tag,
    retirement_of,
)

# A run tag holds at most 500 characters (metaflow.tagging_util.MAX_TAG_SIZE).
REASON_CHARS = 300


class RetireError(RuntimeError):
    """A run that cannot be retired (or unretired) as asked: the message says why."""


def retirement_tag(actor: str, reason: str) -> str:
    """The run tag that retires a cycle: "retired:<UTC stamp>:<who>:<why>"."""
    clean = " ".join(reason.split())[:REASON_CHARS]
    if not clean:
        raise RetireError("give a --reason: it is shown wherever the cycle is listed")
    return f"{RETIRED_TAG}:{utc_stamp()}:{actor.replace(':', '_')}:{clean}"


def retire_cycle(
    flow_name: str,
    objective_name: str,
    run_id: str,
    reason: str,
    actor: str,
    branch: str | None = None,
) -> Retirement:
    """Tag a finished cycle of the objective retired; RetireError if it is not one, is retired
    already, or a cycle that is not retired continued from it (retire that one first)."""
    from metaflow.client.core import Run

    tag = retirement_tag(actor, reason)
    with all_namespaces():
        run = _cycle_run(flow_name, objective_name, run_id, branch)
        done = retirement_of(run)
        if done is not None:
            raise RetireError(
                f"{run.pathspec} is already {done.describe()} "
                f"(`factory unretire {run.id} --objective {objective_name}` undoes it)"
            )
        child = _continued_from(flow_name, objective_name, run, branch)
        if child is not None:
            raise RetireError(
                f"{run.pathspec} cannot be retired: {child.pathspec} continued from it and holds "
                f"its trials; retire {child.id} first (a search is retired from its newest "
                "cycle back)"
            )
        Run(run.pathspec).add_tag(tag)
        found = retirement_of(Run(run.pathspec))
    assert found is not None, f"{run.pathspec} did not keep its tag {tag!r}"
    return found


def unretire_cycle(
    flow_name: str, objective_name: str, run_id: str, branch: str | None = None
) -> Retirement:
    """Remove a cycle's retirement (returned) while no cycle has run since without it."""
    from metaflow.client.core import Run

    with all_namespaces():
        run = _cycle_run(flow_name, objective_name, run_id, branch)
        done = retirement_of(run)
        if done is None:
            raise RetireError(f"{run.pathspec} is not retired")
        since = [
            r
            for r in cycle_runs(flow_name, objective_name, retired=False, branch=branch)
            if r.created_at > run.created_at
        ]
        if since:
            raise RetireError(
                f"{run.pathspec} cannot be unretired: {since[0].pathspec} has run since without "
                "its trials, and the search goes on from there"
            )
        Run(run.pathspec).remove_tag(done.tag)
    return done


def _cycle_run(flow_name: str, objective_name: str, run_id: str, branch: str | None) -> Any:
    """The finished cycle of the search that `run_id` (or `Flow/run_id`) names."""
    from metaflow.client.core import Run
    from metaflow.exception import MetaflowNotFound

    run_id = run_id.rsplit("/", 1)[-1]
    try:
        run = Run(f"{flow_name}/{run_id}")
    except MetaflowNotFound:
        raise RetireError(f"{flow_name}/{run_id}: no such run") from None
    if objective_tag(objective_name) not in run.tags:
        if not run.finished:
            raise RetireError(
                f"{run.pathspec} is still running (or stopped before its end step): only a "
                "finished cycle can be retired"
            )
        tagged = sorted(t for t in run.tags if t.startswith(objective_tag("")))
        raise RetireError(
            f"{run.pathspec} is not a cycle of objective {objective_name!r} (not tagged "
            f"{objective_tag(objective_name)}; its tags: {', '.join(tagged) or 'none'})"
        )
    end = run.end_task
    if end is not None and not end.finished:
        raise RetireError(f"{run.pathspec} is still running its end step: wait for it to finish")
    if branch_of(run) != default_branch(branch):
        raise RetireError(
            f"{run.pathspec} is a cycle of {objective_name!r} on branch "
            f"{branch_of(run) or '(none: from before branches)'}, not on "
            f"{default_branch(branch)}: name its branch with --branch"
        )
    return run


def _continued_from(
    flow_name: str, objective_name: str, run: Any, branch: str | None
) -> Any | None:
    """A successful cycle of the search that is not retired and continued from `run`, or None."""
    for other in cycle_runs(flow_name, objective_name, retired=False, branch=branch):
        if other.created_at <= run.created_at:
            continue
        plan = other["start"].task["plan"].data
        if plan.previous is not None and plan.previous.run_pathspec == run.pathspec:
            return other
    return None
