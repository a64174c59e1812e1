"""Energies above the convex hull of plain entries, with pymatgen's ``PhaseDiagram``.

One phase diagram per chemical system that has entries, over the entries whose elements
lie within it (its elements, binaries, ...): the energy above hull of a compound depends
on those alone. A system lacking an entry of one of its elements has no hull; it is
reported, not guessed.
"""

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from itertools import combinations

REFERENCE_KEY = "reference:"  # the key of an element at zero energy (element_zeros)


@dataclass(frozen=True)
class HullEntry:
    """A structure's energy: ``key`` names it (a structure id), ``composition`` is
    ``{element: amount}`` and ``energy_per_atom`` is in eV/atom."""

    key: Hashable
    composition: dict[str, float]
    energy_per_atom: float

    @property
    def elements(self) -> frozenset[str]:
        return elements_of(self.composition)


def elements_of(composition: dict[str, float]) -> frozenset[str]:
    """The elements of ``{element: amount}`` present in it."""
    return frozenset(element for element, amount in composition.items() if amount > 0)


@dataclass(frozen=True)
class HullPoint:
    """An entry judged against its system's hull: ``e_above_hull`` in eV/atom (0 on the
    hull) and ``decomposition``, the keys of the hull phases it decomposes into with their
    fractions by atom (itself alone when it is on the hull)."""

    key: Hashable
    chemical_system: str
    e_above_hull: float
    decomposition: dict[Hashable, float]


@dataclass(frozen=True)
class Hull:
    """The points of every entry whose system has a hull, and the systems without one
    (chemical system -> elements that have no entry)."""

    points: dict[Hashable, HullPoint]
    missing_elements: dict[str, list[str]]


def chemical_system(elements: frozenset[str]) -> str:
    return "-".join(sorted(elements))


def element_zeros(elements: Iterable[str]) -> list[HullEntry]:
    """Each element at zero energy: the references of formation energies."""
    return [HullEntry(f"{REFERENCE_KEY}{element}", {element: 1.0}, 0.0) for element in sorted(set(elements))]


def pd_entry(entry: HullEntry):
    """The entry as pymatgen's ``PDEntry`` (total energy of its composition)."""
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

    composition = Composition(entry.composition)
    return PDEntry(composition, entry.energy_per_atom * composition.num_atoms)


def by_system(entries: list[HullEntry]) -> dict[frozenset[str], list[int]]:
    """Indices of ``entries`` per chemical system (the elements of their composition)."""
    systems: dict[frozenset[str], list[int]] = {}
    for index, entry in enumerate(entries):
        systems.setdefault(entry.elements, []).append(index)
    return systems


def convex_hull(entries: list[HullEntry]) -> Hull:
    """Energy above hull and decomposition of every entry whose system is complete."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    phase_entries = [pd_entry(entry) for entry in entries]
    keys = {id(phase_entry): entry.key for phase_entry, entry in zip(phase_entries, entries, strict=True)}
    systems = by_system(entries)
    elements_with_entry = {next(iter(system)) for system in systems if len(system) == 1}

    points: dict[Hashable, HullPoint] = {}
    missing: dict[str, list[str]] = {}
    for system in sorted(systems, key=chemical_system):
        name = chemical_system(system)
        lacking = sorted(system - elements_with_entry)
        if lacking:
            missing[name] = lacking
            continue
        diagram = PhaseDiagram([phase_entries[index] for index in entries_within(system, systems)])
        for index in systems[system]:
            decomposition, energy = diagram.get_decomp_and_e_above_hull(phase_entries[index])
            points[entries[index].key] = HullPoint(
                key=entries[index].key, chemical_system=name, e_above_hull=float(energy),
                decomposition={keys[id(phase)]: float(amount) for phase, amount in decomposition.items()},
            )
    return Hull(points, missing)


def entries_within(system: frozenset[str], systems: dict[frozenset[str], list[int]]) -> list[int]:
    """Indices of the entries whose elements lie within ``system``: looked up by subset
    while the system has fewer subsets than there are systems (100,000 candidates in as
    many ternary systems need not each scan all the others)."""
    if 2 ** len(system) <= len(systems):
        subsets = (frozenset(part) for size in range(1, len(system) + 1)
                   for part in combinations(sorted(system), size))
        return [index for subset in subsets for index in systems.get(subset, ())]
    return [index for subset, indices in systems.items() if subset <= system for index in indices]
