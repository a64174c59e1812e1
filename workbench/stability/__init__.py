"""Thermodynamic stability: energies above the convex hull, one level of theory at a time.

- :mod:`workbench.stability.hull`: the hull of plain entries (composition, energy per
  atom) through pymatgen's ``PhaseDiagram``.
- :mod:`workbench.stability.store`: the hull of one level's energies in the store,
  written back as ``<level>.e_above_hull`` with its decomposition, and what is missing.
"""
