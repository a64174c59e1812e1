r"""Orbital field matrices (Pham et al., Sci. Technol. Adv. Mater. 18, 756, 2017), the
atom descriptor of OGCNN (Karamad et al., Phys. Rev. Mater. 4, 093801, 2020) and, with
atomic features beside it, of OCrystalNet (Yang, seed paper 003).

Each element's valence shell is a 32-entry one-hot vector :math:`o`: the occupation of
its s (2 entries), p (6), d (10) and f (14) subshells outside the noble-gas core, as
pymatgen writes its configuration (Fe ``[Ar].3d6.4s2``: s2 and d6). The orbital field
matrix of a centre atom :math:`c` sums over its Voronoi neighbours :math:`k` (periodic
images included):

.. math::
    X^c = \sum_k w_k\, o(c)\, o(k)^\top, \qquad
    w_k = \frac{\theta_k}{\max_{k'} \theta_{k'}} \frac{1}{r_k}

with :math:`\theta_k` the solid angle of the Voronoi face shared with :math:`k` and
:math:`r_k` the distance to it (Å). The descriptor is :math:`X^c` row by row (1,024
entries) followed by :math:`o(c)` (32): 1,056 entries.

:math:`X^c` is the outer product of :math:`o(c)`, which the element fixes, and the
*orbital field* :math:`f(c) = \sum_k w_k\, o(k)`, which the structure fixes. So a graph
stores only :math:`f` (32 numbers per atom) and the 1,056 entries are rebuilt exactly on
loading (:func:`orbital_field_descriptors`).
"""

import functools
import re
import warnings

import numpy as np
from pymatgen.analysis.local_env import VoronoiNN
from pymatgen.core import Element

from workbench.featurize.atom_features import element_table
from workbench.featurize.graph import GraphError
from workbench.structures.crystal import Crystal

SUBSHELL_CAPACITY = {"s": 2, "p": 6, "d": 10, "f": 14}
SUBSHELL_OFFSET = {"s": 0, "p": 2, "d": 8, "f": 18}
VALENCE_SIZE = sum(SUBSHELL_CAPACITY.values())  # 32
DESCRIPTOR_SIZE = VALENCE_SIZE * VALENCE_SIZE + VALENCE_SIZE  # 1,056
SUBSHELL = re.compile(r"^\d([spdf])(\d+)$")  # "3d6": shell 3, d, 6 electrons


def valence_one_hot(atomic_number: int) -> np.ndarray:
    """The 32-entry one-hot vector of an element's valence subshells."""
    vector = np.zeros(VALENCE_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about elements with sparse data
        configuration = Element.from_Z(atomic_number).electronic_structure
    for part in configuration.split("."):
        if part.startswith("["):  # the noble-gas core
            continue
        subshell, electrons = SUBSHELL.match(part).groups()
        vector[SUBSHELL_OFFSET[subshell] + int(electrons) - 1] = 1.0
    return vector


@functools.cache
def valence_table() -> np.ndarray:
    """``(MAX_ATOMIC_NUMBER + 1, 32)`` float32; row Z is element Z (row 0 unused, zero)."""
    return element_table(valence_one_hot, VALENCE_SIZE)


def orbital_field(crystal: Crystal, atomic_numbers: np.ndarray) -> np.ndarray:
    """The orbital field :math:`f(c)` of every atom: ``(N, 32)`` float32."""
    structure = crystal.to_pymatgen()
    voronoi = VoronoiNN(compute_adj_neighbors=False)
    table = valence_table()
    field = np.zeros((len(atomic_numbers), VALENCE_SIZE), dtype=np.float64)
    for centre in range(len(structure)):
        # One site at a time: the all-sites tessellation breaks the faces of degenerate
        # (cubic) cells, e.g. 5 Cl and 4 Na faces around Na in rock salt, not 6 Cl.
        try:
            shell = voronoi.get_nn_info(structure, centre)
        except (ValueError, RuntimeError) as error:  # pathological cells, Qhull failures
            raise GraphError(f"no Voronoi neighbours for the orbital field matrices: {error}") from error
        # VoronoiNN's weight is the face's solid angle over the largest one of the centre;
        # a neighbour's site sits in its periodic image.
        distances = np.linalg.norm([neighbour["site"].coords for neighbour in shell]
                                   - structure[centre].coords, axis=1)
        weights = np.array([neighbour["weight"] for neighbour in shell]) / distances
        others = atomic_numbers[[neighbour["site_index"] for neighbour in shell]]
        field[centre] = weights @ table[others]
    return field.astype(np.float32)


def orbital_field_descriptors(atomic_numbers: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Orbital field matrices row by row, then the valence vector: ``(N, 1056)`` float32."""
    valence = valence_table()[atomic_numbers]
    matrices = valence[:, :, None] * field[:, None, :]
    return np.concatenate([matrices.reshape(len(valence), -1), valence], axis=1)
