"""Training: a proposal becomes a seeded Lightning fit and a `TrialResult`, whatever happens.

- `trial`: `run_trial`, one proposal → one result (ok, failed, diverged, timeout, pruned).
- `group`: `train_group`, a train task's trials: fused where shapes match, back to back otherwise.
- `supervisor`, `worker`: the group in a worker process, killed when a trial hangs past its
  deadline; the trials left go on in a fresh one.
- `module`, `callbacks`: the `LightningModule` and what stops a trial early.
- `fused`: same-shape MLP trials as one batched model.
- `prune`: validation curves a trial is pruned against.
- `checkpoint`: what a trial keeps to continue at a higher rung (successive halving).

Importing the package stays light (the start step reads `prune`); its modules bring in torch
and Lightning.
"""
