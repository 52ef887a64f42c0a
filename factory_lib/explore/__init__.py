"""Explore: what people read about a search.

- `analysis`: cycles as `CycleView`s and pure tables over records (leaderboard, best so far,
  Pareto front, proposers, lineage, budget); the same in cards, `factory status` and notebooks.
- `plots`: matplotlib figures of those tables.
- `cards`: the cycle card's Metaflow components.
- `report`: rich tables for the terminal.
"""
