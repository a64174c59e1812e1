"""How far a crystal lies from the training structures in the members' embedding: a
spread that the members' disagreement misses.

Members that start from different seeds but learn the same training set tend to agree
even on crystals unlike any of it; the distance to the nearest training crystals in
the representation the heads read tracks the error more closely there (Janet, Duan,
Yang, Nandy and Kulik, Chem. Sci. 10, 7913 (2019)). The ensemble's calibration weighs
the two (:func:`workbench.train.ensemble.fit_spread_scales`).
"""

from dataclasses import dataclass

import torch

# Reference rows compared at once: bounds the distance matrix to some 100 MB.
CHUNK = 4096


@dataclass(frozen=True)
class LatentNeighbours:
    """The training structures' embeddings, standardized per feature; a crystal's
    distance is its mean Euclidean distance to the ``k`` nearest of them.

    Attributes:
        reference: ``(R, F)`` standardized embeddings of the training structures.
        centre, spread: ``(F,)`` the mean and standard deviation they were standardized with.
        k: the neighbours averaged over.
    """

    reference: torch.Tensor
    centre: torch.Tensor
    spread: torch.Tensor
    k: int

    @classmethod
    def fit(cls, embeddings: torch.Tensor, k: int) -> "LatentNeighbours":
        """From the training structures' ``(R, F)`` embeddings."""
        if k < 1:
            raise ValueError(f"latent neighbours: k must be 1 or more, not {k}")
        embeddings = embeddings.detach().float().cpu()
        centre = embeddings.mean(dim=0)
        # A feature that never varies is left unscaled rather than divided by zero.
        spread = embeddings.std(dim=0, unbiased=False).clamp_min(1e-6)
        return cls((embeddings - centre) / spread, centre, spread, min(k, len(embeddings)))

    def distance(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B,)`` mean distance of each of ``(B, F)`` embeddings to its ``k`` nearest
        training structures (a training structure's own counts: 0 for ``k = 1``)."""
        query = (embeddings.detach().float().cpu() - self.centre) / self.spread
        nearest = torch.cat([torch.cdist(query, self.reference[start:start + CHUNK])
                             .topk(min(self.k, len(self.reference[start:start + CHUNK])), dim=1, largest=False).values
                             for start in range(0, len(self.reference), CHUNK)], dim=1)
        return nearest.topk(self.k, dim=1, largest=False).values.mean(dim=1)

    def to_document(self) -> dict:
        return {"reference": self.reference, "centre": self.centre, "spread": self.spread, "k": self.k}

    @classmethod
    def from_document(cls, document: dict) -> "LatentNeighbours":
        return cls(document["reference"], document["centre"], document["spread"], int(document["k"]))
