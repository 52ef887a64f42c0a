"""Proposers: given the objective and history, suggest the next cycle's experiments."""

from factory_lib.propose.base import Proposer, SeenTrial, seen_by_proposers
from factory_lib.propose.optuna_proposer import OptunaProposer

__all__ = ["OptunaProposer", "Proposer", "SeenTrial", "seen_by_proposers"]
