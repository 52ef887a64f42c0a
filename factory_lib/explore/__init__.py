"""Explore: what people read about a search.

- `summary`: a cycle's counts per status and labelled numbers (`CycleSummary`, `LABELS`): the
  one vocabulary of the flow's lines, `factory loop`, `factory status`, the card and notebooks.
- `analysis`: cycles as `CycleView`s and pure tables over records (leaderboard, best so far,
  Pareto front, proposers, lineage, budget); the same in cards, `factory status` and notebooks.
- `plots`: matplotlib figures of those tables.
- `cards`: the cycle card's Metaflow components.
- `report`: rich tables for the terminal.
"""
