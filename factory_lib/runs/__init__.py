"""Runs: everything that reads or writes Metaflow runs (the Client API), and nothing else does.

- `client`: a search's cycles (by the run tag `objective:<name>`), the one reader of a cycle's
  end artifacts (`read_cycle` → `CycleState`), what a new cycle continues, checked
  (`chain_from`, `DamagedRunError`; retired cycles skipped, `Retirement`), stored checkpoints.
- `lease`: one cycle at a time per search (the lease in the datastore), no resume past a newer
  cycle, and the run tag that publishes a cycle.
- `champions`: `load_champion`, earlier versions, the promotion log, registry decisions as tags.
- `retire`: `factory retire` and `unretire`, the tag that makes a search pass over a cycle.
- `env`: a Metaflow user name and local worker defaults, set before Metaflow is imported.
- `deploy`: the deployment file and the `deployed` flow mutator (schedule, chaining, secrets).
"""

from factory_lib.runs.champions import load_champion, load_version, versions
from factory_lib.runs.client import latest_cycle, read_cycle

__all__ = ["latest_cycle", "load_champion", "load_version", "read_cycle", "versions"]
