"""CGCNN-style element features: nine properties, each one-hot encoded (91 entries).

Following Xie & Grossman (PRL 2018, Table S2), from pymatgen's element data and ASE's
covalent radii. Continuous properties fall into 10 equal bins between the bounds below
(values outside go to the end bins); a property an element lacks (the electronegativity
of a noble gas) leaves its block zero.

| property | encoding | entries |
| --- | --- | --- |
| group | 1..18 | 18 |
| period | 1..7 | 7 |
| Pauling electronegativity | 0.5..4.0 | 10 |
| covalent radius (Å) | 0.25..2.5 | 10 |
| valence electrons | 1..12 (group for groups 1-12, group - 10 for 13-18) | 12 |
| first ionisation energy (eV) | ln, 1.3..3.3 | 10 |
| electron affinity (eV) | -3.0..3.7 | 10 |
| block | s, p, d, f | 4 |
| molar volume (cm³/mol) | ln, 1.5..4.3 | 10 |
"""

import functools
import math
import warnings
from collections.abc import Callable

import numpy as np
from ase.data import covalent_radii
from pymatgen.core import Element

MAX_ATOMIC_NUMBER = 100
GROUPS = 18
PERIODS = 7
# Valence electrons: the group up to group 12, then the group less the ten d-block groups.
MAX_VALENCE = 12
D_BLOCK_GROUPS = 10
BINS = 10
BLOCKS = ("s", "p", "d", "f")
CONTINUOUS = {  # name: (lower bound, upper bound, value of an element or nan)
    "electronegativity": (0.5, 4.0, lambda e: e.X),
    "covalent_radius": (0.25, 2.5, lambda e: covalent_radii[e.Z]),
    "first_ionization_energy": (1.3, 3.3, lambda e: math.log(e.ionization_energies[0])),
    "electron_affinity": (-3.0, 3.7, lambda e: e.electron_affinity),
    "molar_volume": (1.5, 4.3, lambda e: math.log(float(e.molar_volume))),
}
FEATURE_SIZE = GROUPS + PERIODS + MAX_VALENCE + len(BLOCKS) + BINS * len(CONTINUOUS)


def one_hot(index: int | None, size: int) -> np.ndarray:
    vector = np.zeros(size)
    if index is not None and 0 <= index < size:
        vector[index] = 1.0
    return vector


def binned(value: float, lower: float, upper: float) -> np.ndarray:
    if value is None or not math.isfinite(value):
        return np.zeros(BINS)
    index = int((value - lower) / (upper - lower) * BINS)
    return one_hot(min(max(index, 0), BINS - 1), BINS)


def element_features(atomic_number: int) -> np.ndarray:
    """The 91-entry feature vector of one element."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about missing data, which we zero
        element = Element.from_Z(atomic_number)
        group, period = element.group, element.row
        valence = group if group <= MAX_VALENCE else group - D_BLOCK_GROUPS
        parts = [one_hot(group - 1, GROUPS), one_hot(period - 1, PERIODS), one_hot(valence - 1, MAX_VALENCE),
                 one_hot(BLOCKS.index(element.block) if element.block in BLOCKS else None, len(BLOCKS))]
        for lower, upper, read in CONTINUOUS.values():
            try:
                value = read(element)
            except (TypeError, ValueError, IndexError, AttributeError):
                value = None
            parts.append(binned(value, lower, upper))
    return np.concatenate(parts)


def element_table(features_of: Callable[[int], np.ndarray], size: int) -> np.ndarray:
    """``(MAX_ATOMIC_NUMBER + 1, size)`` float32 with ``features_of(Z)`` in row Z (row 0 zero)."""
    table = np.zeros((MAX_ATOMIC_NUMBER + 1, size), dtype=np.float32)
    for atomic_number in range(1, MAX_ATOMIC_NUMBER + 1):
        table[atomic_number] = features_of(atomic_number)
    return table


@functools.cache
def cgcnn_feature_table() -> np.ndarray:
    """``(MAX_ATOMIC_NUMBER + 1, 91)`` float32; row Z is element Z (row 0 unused, zero)."""
    return element_table(element_features, FEATURE_SIZE)
