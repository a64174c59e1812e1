"""Candidate structures made by element substitution into prototypes.

- :mod:`workbench.generate.prototypes`: a prototype from a stored structure, a structure
  file or pymatgen's AFLOW prototype library, stored before it is decorated.
- :mod:`workbench.generate.substitute`: which elements replace which: explicit site
  choices, or pymatgen's substitution predictor; the charge-balance filter.
- :mod:`workbench.generate.store`: decorations into the store, deduplicated against every
  stored crystal, with their lineage.
"""
