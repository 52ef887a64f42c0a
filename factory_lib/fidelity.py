"""Multi-fidelity: successive halving over epoch budgets, continued from checkpoints.

With `fidelity: {rungs: [3, 9, 27], eta: 3}` every new trial trains for 3 epochs and stores a
checkpoint. A trial is promoted to the next rung as soon as it ranks in the best 1/eta (by
validation reward) of all trials that completed its rung so far, the asynchronous rule of
ASHA. Promotion happens in two places:

- in the train task, right after its group: the task ranks its own trials together with
  history and continues the promoted ones at once, from the checkpoint in memory;
- in the next cycle's start step, for promotions that only became due once the join saw
  every group: they come first among the cycle's trials, and the train task loads the
  checkpoint from the task that stored it.

A continued trial is a new record, `<trial>-r<k>`, with the same parameters and seed. It resumes
from the weights, optimiser state, random state and early-stopping state of the checkpoint, so
its curve extends its parent's and equals one uninterrupted fit (tested); its `start_epoch` says
how many of its epochs it inherited. History keeps both records: nothing is rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise

from factory_lib.objective import Objective
from factory_lib.records import Proposal, TrialRecord

_RUNG_SUFFIX = re.compile(r"-r\d+$")


def trial_epochs(objective: Objective, proposal: Proposal) -> int:
    """The epochs this trial trains to: its rung's budget, never past `budget.max_epochs`."""
    cap = objective.budget.max_epochs
    return min(proposal.epochs or cap, cap)


def first_rung(objective: Objective) -> int | None:
    """The epoch budget of new trials under successive halving; None without it."""
    return objective.fidelity.rungs[0] if objective.fidelity else None


def needs_checkpoint(objective: Objective, proposal: Proposal) -> bool:
    """Whether a trial that completes its budget may be promoted later, so keeps a checkpoint."""
    spec = objective.fidelity
    return spec is not None and trial_epochs(objective, proposal) < spec.rungs[-1]


def promotions(objective: Objective, records: Sequence[TrialRecord], cycle: int) -> list[Proposal]:
    """Continuations due now: trials in the best 1/eta of their rung, not yet continued.

    A rung's population is every eligible trial that trained for exactly its epochs; one that
    early stopping ended before the rung's budget stays in the ranking but cannot continue.
    """
    spec = objective.fidelity
    if spec is None:
        return []
    continued = {r.proposal.continues for r in records if r.proposal.continues}
    due = []
    for k, (rung, next_rung) in enumerate(pairwise(spec.rungs)):
        population = [
            r for r in records if r.eligible and trial_epochs(objective, r.proposal) == rung
        ]
        ranked = sorted(population, key=lambda r: (-(r.val_reward or 0.0), r.proposal.number))
        best = ranked[: len(population) // spec.eta]
        for r in best:
            if r.trial_id in continued or not r.result.resumable:
                continue
            due.append(
                r.proposal.model_copy(
                    update={
                        "trial_id": f"{_RUNG_SUFFIX.sub('', r.trial_id)}-r{k + 1}",
                        "cycle": cycle,
                        "epochs": next_rung,
                        "continues": r.trial_id,
                        "checkpoint": r.result.task_pathspec,
                        "source": "fidelity",
                        "rationale": (
                            f"in the best {len(best)} of {len(population)} trials at {rung} "
                            f"epochs (1/{spec.eta}): continued from its checkpoint to {next_rung}"
                        ),
                    }
                )
            )
    return due
