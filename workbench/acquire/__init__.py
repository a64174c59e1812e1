"""Acquisition: which unlabeled candidates to compute next.

- :mod:`workbench.acquire.objective`: objectives made of constraints on targets.
- :mod:`workbench.acquire.scores`: greedy, uncertainty, UCB, expected improvement and
  the probability of meeting an objective, over an ensemble's mean and std.
- :mod:`workbench.acquire.batch`: batches spread out in the model's embedding space.
"""
