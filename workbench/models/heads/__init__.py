"""Heads: what a backbone's atom features become. One per file."""

from workbench.models.heads.per_site import PerSiteHead
from workbench.models.heads.scalar import ScalarHead
from workbench.models.heads.spectrum import SpectrumHead

__all__ = ["PerSiteHead", "ScalarHead", "SpectrumHead"]
