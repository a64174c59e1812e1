"""Which elements replace which: explicit site choices, pymatgen's substitution
predictor, and the charge-balance filter.

A *site label* is an element of the prototype: ``Ca=Ba,Sr`` puts Ba or Sr on every site
the prototype's Ca occupies. Elements without a choice stay as they are.
"""

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations_with_replacement, product

from workbench.errors import InputError
from workbench.structures.crystal import Crystal
from workbench.structures.validate import ELEMENT_SYMBOLS


@dataclass(frozen=True)
class Substitution:
    """One decoration of a parent: the element that goes where each parent element was.

    ``probability`` is the substitution predictor's, for predicted ones.
    """

    mapping: dict[str, str]
    probability: float | None = None

    def apply(self, crystal: Crystal) -> Crystal:
        species = tuple(self.mapping.get(element, element) for element in crystal.species)
        return Crystal(crystal.lattice, species, crystal.frac_coords)

    @property
    def label(self) -> str:
        """``Ca=Ba,Ti=Zr``: part of the candidate's external id."""
        return ",".join(f"{old}={new}" for old, new in sorted(self.mapping.items()))


def parse_sites(options: list[str], prototype_elements: list[str]) -> dict[str, list[str]]:
    """``["Ca=Ba,Sr", "Ti=Zr"]`` as ``{"Ca": ["Ba", "Sr"], "Ti": ["Zr"]}``, checked by
    :func:`check_sites`."""
    sites: dict[str, list[str]] = {}
    for option in options:
        label, sep, choices = option.partition("=")
        label = label.strip()
        elements = [element.strip() for element in choices.split(",") if element.strip()]
        if not sep or not label or not elements:
            raise InputError(f"expects SITE=ELEMENT,ELEMENT,..., got {option!r}", field="--site")
        if label in sites:
            raise InputError(f"site {label!r} is given twice", field="--site")
        sites[label] = list(dict.fromkeys(elements))
    if not sites:
        raise InputError("give at least one --site", field="--site")
    check_sites(sites, prototype_elements, field="--site")
    return sites


def check_sites(sites: dict[str, list[str]], prototype_elements: list[str] | None = None, *,
                prototype: str = "", field: str | None = None) -> None:
    """Refuse a site that is not an element of the prototype (``prototype_elements``; of
    the periodic table while the prototype is not read yet), a site without a choice and a
    choice that is no element; ``prototype`` names the prototype in the message."""
    if prototype_elements is not None:
        foreign = [label for label in sites if label not in prototype_elements]
        if foreign:
            raise InputError(f"site {', '.join(map(repr, foreign))} is not an element of the prototype"
                             f"{' ' + prototype if prototype else ''} (its elements: {', '.join(prototype_elements)})",
                             field=field)
    if any(not choices for choices in sites.values()):
        raise InputError("every site needs at least one element", field=field)
    unknown = sorted({element for element in [*sites, *(e for choices in sites.values() for e in choices)]
                      if element not in ELEMENT_SYMBOLS})
    if unknown:
        raise InputError(f"unknown element {', '.join(map(repr, unknown))}", field=field)


def explicit_substitutions(sites: dict[str, list[str]]) -> Iterator[Substitution]:
    """Every combination of one choice per site."""
    labels = sorted(sites)
    for choice in product(*(sites[label] for label in labels)):
        yield Substitution(dict(zip(labels, choice, strict=True)))


def count_explicit(sites: dict[str, list[str]]) -> int:
    total = 1
    for choices in sites.values():
        total *= len(choices)
    return total


@dataclass
class ChargeBalance:
    """Whether a composition has a charge-balanced assignment of oxidation states.

    The same test as pymatgen's ``Composition.oxi_state_guesses`` (non-empty), with its
    default states (ICSD's, else the common ones; atoms of one element may differ), without
    ranking the guesses: 100,000 decorations are tested in seconds, not hours.
    """

    # (element, count) -> every total charge ``count`` atoms of the element can carry.
    _totals: dict[tuple[str, int], frozenset[int]] = field(default_factory=dict)

    def __call__(self, counts: dict[str, int]) -> bool:
        if len(counts) == 1:
            return True  # an element, in oxidation state 0
        reachable = {0}
        for element, count in counts.items():
            totals = self._element_totals(element, int(count))
            reachable = {charge + total for charge in reachable for total in totals}
            if not reachable:
                return False
        return 0 in reachable

    def _element_totals(self, element: str, count: int) -> frozenset[int]:
        key = (element, count)
        if key not in self._totals:
            from pymatgen.core import Element

            states = Element(element).icsd_oxidation_states or Element(element).common_oxidation_states
            self._totals[key] = frozenset(map(sum, combinations_with_replacement(states, count)))
        return self._totals[key]

    def crystal(self, crystal: Crystal) -> bool:
        return self(Counter(crystal.species))


def predicted_substitutions(crystal: Crystal, predictor) -> list[Substitution]:
    """Substitutions of ``crystal``'s elements that pymatgen's ``SubstitutionPredictor``
    (Hautier et al. 2011, its bundled probability table) finds above its threshold, most
    probable first; the parent's own composition is left out.

    Oxidation states are pymatgen's best guess for the composition; a parent without one
    (or of mixed valence) raises InputError.
    """
    from pymatgen.core import Composition, Species

    composition = Composition(Counter(crystal.species))
    guesses = composition.oxi_state_guesses(max_sites=-1)
    if not guesses:
        raise InputError(f"{composition.reduced_formula} has no charge-balanced oxidation states")
    states = guesses[0]
    if any(state != int(state) for state in states.values()):
        raise InputError(f"{composition.reduced_formula} is of mixed valence ({states})")
    species = {str(Species(element, int(state))): element for element, state in states.items()}
    try:
        predictions = predictor.list_prediction(list(species), to_this_composition=False)
    except ValueError as error:  # a species the probability table does not know
        raise InputError(f"{composition.reduced_formula}: {error}") from None
    # Species differing only in charge (Cu+, Cu2+) are one element here: the most probable stays.
    substitutions: dict[str, Substitution] = {}
    for prediction in sorted(predictions, key=lambda p: -p["probability"]):
        mapping = {species[old]: new.symbol for old, new in prediction["substitutions"].items()}
        substitution = Substitution(mapping, float(prediction["probability"]))
        if any(old != new for old, new in mapping.items()):
            substitutions.setdefault(substitution.label, substitution)
    return list(substitutions.values())
