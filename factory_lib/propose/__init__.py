"""Proposers: given the objective and history, suggest the next cycle's experiments.

`base` is the face every proposer shares; `optuna_proposer` and `llm` import Optuna and the
`anthropic` SDK, so they are imported by name where they propose, and what only reads the
records (`notes`, `hypotheses`, the history of a finished cycle) stays light.
"""

from factory_lib.propose.base import Proposer, SeenTrial, seen_by_proposers

__all__ = ["Proposer", "SeenTrial", "seen_by_proposers"]
