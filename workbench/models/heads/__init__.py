"""Heads: what a backbone's atom features become. One per file; ``HEADS`` names them."""

from workbench.models.heads.base import Head
from workbench.models.heads.per_site import PerSiteHead
from workbench.models.heads.scalar import POOLING, Pooling, ScalarHead
from workbench.models.heads.spectrum import SpectrumHead

HEADS: dict[str, type[Head]] = {head.name: head for head in (ScalarHead, SpectrumHead, PerSiteHead)}

__all__ = ["HEADS", "POOLING", "Head", "PerSiteHead", "Pooling", "ScalarHead", "SpectrumHead"]
