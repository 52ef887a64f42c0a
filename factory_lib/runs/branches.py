"""Searches on branches: adopting the runs from before branches into one, and promoting a
branch's champion into another (production), a person's approval recorded.

A search is an objective on a branch of the flow's `@project` (`user.<name>`, `test.<name>`,
`prod`; runs.client.branch_name). Both acts only add run tags: history stays as written.
"""

from __future__ import annotations

from factory_lib.registry import RegistryEvent, events_from_tags, utc_stamp
from factory_lib.runs.champions import record_decision
from factory_lib.runs.client import (
    ADOPTED_TAG,
    all_namespaces,
    find_version,
    flow_command,
    latest_cycle,
    nothing_found,
    search_runs,
    unscoped_runs,
)


class BranchError(RuntimeError):
    """A branch operation that cannot be done as asked: the message says why and what to do."""


def adopt(flow_name: str, objective_name: str, branch: str, actor: str) -> list[str]:
    """Tag every run of the objective from before branches `adopted:<branch>:<stamp>:<actor>`,
    so that they are the history of the search on `branch` and its next cycle continues from
    the newest of them. Returns their pathspecs, newest first. BranchError when there are none,
    or when the branch already has runs of the objective (two histories cannot be merged)."""
    from metaflow.client.core import Run

    with all_namespaces():
        old = unscoped_runs(flow_name, objective_name)
        if not old:
            raise BranchError(
                f"objective {objective_name!r} has no runs from before branches left to adopt"
            )
        there = search_runs(flow_name, objective_name, branch)
        if there:
            raise BranchError(
                f"branch {branch} already has {len(there)} runs of {objective_name!r} (newest "
                f"{there[0].pathspec}): adopting older runs would join two histories. Adopt "
                "into a branch of its own (--branch NAME), or retire those runs"
            )
        tag = f"{ADOPTED_TAG}:{branch}:{utc_stamp()}:{actor.replace(':', '_')}"
        for run in old:
            Run(run.pathspec).add_tag(tag)
    return [run.pathspec for run in old]


def promote_into(
    flow_name: str,
    objective_name: str,
    from_branch: str,
    to_branch: str,
    trial_id: str | None,
    actor: str,
    reason: str,
) -> RegistryEvent | None:
    """Make a model of the search on `from_branch` (its current champion, or `trial_id`: any
    model that was ever its champion or candidate) the champion of the search on `to_branch`,
    recorded as a `promoted_from` event tagged on that search's newest cycle with who
    approved it and why. The next cycle there starts from it and challengers must beat it.
    None, recording nothing, when it is that search's champion already.
    """
    from metaflow.client.core import Run

    if from_branch == to_branch:
        raise BranchError(f"{from_branch} is the branch it would be promoted into")
    if not " ".join(reason.split()):
        raise BranchError("give a --reason: it is recorded with your name as the approval")
    source = latest_cycle(flow_name, objective_name, branch=from_branch)
    if source is None:
        raise BranchError(nothing_found(objective_name, from_branch, flow_name))
    if trial_id is None:
        if source.bundle is None:
            raise BranchError(
                f"{objective_name!r} on {from_branch} has no champion yet ({source.run_pathspec})"
            )
        bundle = source.bundle
    else:  # LookupError if it never was champion or candidate there
        bundle = find_version(flow_name, objective_name, trial_id, from_branch)
    target = latest_cycle(flow_name, objective_name, branch=to_branch)
    if target is None:
        raise BranchError(
            f"objective {objective_name!r} has no cycle on {to_branch} yet to record the "
            f"promotion on: run its first cycle there ({flow_command(to_branch)}), then promote"
        )
    # trial ids repeat across branches: the weights tell models apart
    if (
        target.bundle is not None
        and target.bundle.package.weights_sha == bundle.package.weights_sha
    ):
        return None
    record_decision(target, "promoted_from", bundle.trial_id, actor, reason, from_branch)
    with all_namespaces():
        tags = list(Run(target.run_pathspec).tags)
    recorded = [e for e in events_from_tags(tags, target.run_pathspec) if e.kind == "promoted_from"]
    return recorded[-1]
