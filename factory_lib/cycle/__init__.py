"""The cycle: what each step of `flows/cycle.py` calls, in the order the flow runs them.

- `plan`: the lease and the plan every step carries (`CyclePlan`); light.
- `propose`: start (`open_cycle`: plan, proposals, `group_trials`); imports the proposers.
- `close`: join (`score_cycle`, `measure_jobs`) and decide (`close_cycle`); light.
- `measure`: the measure step's jobs (re-training over seeds, exports); torch where it trains.
"""
