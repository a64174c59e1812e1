"""Train/validation/test splits that never put one structure in two splits.

Structures are grouped by dedup key (reduced formula, space group and volume bin), so
two copies of a crystal imported under different ids, or near-duplicates that share a
key, always land in the same split.
"""

from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    train: list[int]
    validation: list[int]
    test: list[int]


def grouped_split(ids: list[int], groups: list[str], *, validation: float, test: float, seed: int) -> Split:
    """Shuffle the groups with ``seed`` and deal them out until each split has its share
    of entries (``validation`` and ``test`` are fractions of all entries)."""
    if not 0 <= validation < 1 or not 0 <= test < 1 or validation + test >= 1:
        raise ValueError("validation and test fractions must be in [0, 1) and sum below 1")
    members: dict[str, list[int]] = defaultdict(list)
    for structure_id, group in zip(ids, groups, strict=True):
        members[group].append(structure_id)
    order = sorted(members)
    np.random.default_rng(seed).shuffle(order)
    wanted = {"test": test * len(ids), "validation": validation * len(ids)}
    dealt: dict[str, list[int]] = {"test": [], "validation": [], "train": []}
    for group in order:
        name = next((name for name in ("test", "validation") if len(dealt[name]) < wanted[name]), "train")
        dealt[name].extend(members[group])
    return Split(train=sorted(dealt["train"]), validation=sorted(dealt["validation"]), test=sorted(dealt["test"]))
