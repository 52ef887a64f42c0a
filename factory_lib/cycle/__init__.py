"""The cycle: what each step of `flows/cycle.py` calls, in the order the flow runs them.

- `plan`: start (`plan_cycle`) and propose (`propose_cycle`, `group_trials`).
- `close`: join (`score_cycle`, `measure_jobs`) and decide (`close_cycle`); light.
- `measure`: the measure step's jobs (re-training over seeds, exports); torch where it trains.
"""

from factory_lib.cycle.plan import BudgetSpent, CyclePlan, ProposalBatch

__all__ = ["BudgetSpent", "CyclePlan", "ProposalBatch"]
