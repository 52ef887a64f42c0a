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

The readers below are imported when first asked for (PEP 562), not with the package: every
process of a cycle imports `runs.env` and `runs.deploy` through the flow's module, and the
readers bring the history and pandas with them (docs/benchmarks.md).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from factory_lib.runs.champions import load_champion, load_version, versions
    from factory_lib.runs.client import latest_cycle, read_cycle

_HOME = {
    "latest_cycle": "client",
    "read_cycle": "client",
    "load_champion": "champions",
    "load_version": "champions",
    "versions": "champions",
}
__all__ = ["latest_cycle", "load_champion", "load_version", "read_cycle", "versions"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
