"""Settings of the crystal graphs, kept free of numpy and pymatgen so that the command line
reads its defaults and the names of the atom features without importing them."""

from dataclasses import dataclass

from workbench.featurize.pretrained import PRETRAINED_MODELS

# The atom features a featurizer can give (``Featurizer.atom_features``), by name; the
# featurizer's tables (``featurizer.ATOM_FEATURE_TABLES``) have the same names.
ATOM_FEATURES = {
    "cgcnn": "the 91-entry CGCNN element vector",
    "ofm": "orbital field matrix then cgcnn, as in OCrystalNet/OGCNN",
} | {name: f"{model.width}-entry embedding by {model.package} {model.model} then cgcnn"
     for name, model in PRETRAINED_MODELS.items()}
DEFAULT_ATOM_FEATURES = "cgcnn"


@dataclass(frozen=True)
class GraphConfig:
    """How a crystal becomes a graph.

    Attributes:
        cutoff: neighbour search radius in Å.
        max_neighbors: keep the k nearest neighbours of each atom.
        keep_ties: also keep neighbours as far as the k-th one (within ``tie_tolerance``),
            so that a shell is never cut in half.
        max_cutoff: a site with fewer than k neighbours within ``cutoff`` gets the radius
            raised once to this value; if that is not enough, the structure is refused.
        tie_tolerance: distance in Å under which two neighbours count as one shell.
    """

    cutoff: float = 8.0
    max_neighbors: int = 12
    keep_ties: bool = False
    max_cutoff: float = 16.0
    tie_tolerance: float = 1e-3
