"""A replay of a campaign with a prior (``model.prior``) and atom features ranks as the
campaign does: by the prior's line until the model beats it on held-out labels."""

from itertools import permutations

import numpy as np
import pytest
from ase.calculators.emt import EMT

from tests.dft_helpers import LATTICE, campaign_document, l12
from workbench.campaign.config import config_from_document
from workbench.campaign.replay import ReplayResult, replay, replay_config
from workbench.errors import InputError
from workbench.io.entries import Entry, Label
from workbench.io.importer import import_entries
from workbench.io.readers import ReadOptions
from workbench.store.schema import TargetKind
from workbench.structures.crystal import Crystal

TARGET, PRIOR = "toy.energy", "toy.prior"
# The lower quartile of the 42 alloys' EMT energies: about 10 hits.
HIT_QUANTILE = 0.25
TINY = {"backbone": {"hidden": 8, "layers": 1}, "members": 2, "epochs": 2, "patience": 2, "device": "cpu"}


def _emt_energies() -> dict[str, tuple[object, float]]:
    """The 42 L1_2 alloys of the metals EMT knows, with their EMT energy per atom."""
    alloys = {}
    for major, minor in permutations(LATTICE, 2):
        atoms = l12(major, minor)
        atoms.calc = EMT()
        alloys[f"{major}3{minor}"] = (atoms, atoms.get_potential_energy() / len(atoms))
    return alloys


def _store_pool(engine, *, without_prior: int = 0) -> float:
    """The alloys under source ``pool``, labeled with their EMT energy as the target and
    the same value as the prior (but the first ``without_prior``); returns the objective's
    threshold."""
    alloys = _emt_energies()
    entries = []
    for index, (name, (atoms, energy)) in enumerate(alloys.items()):
        labels = {TARGET: Label(TargetKind.SCALAR, energy, "eV/atom")}
        if index >= without_prior:
            labels[PRIOR] = Label(TargetKind.SCALAR, energy, "eV/atom")
        entries.append(Entry(row=name, external_id=name, crystal=Crystal.from_ase(atoms), labels=labels))
    import_entries(engine, entries, source="pool", file="tests", options=ReadOptions())
    return float(np.quantile([energy for _, energy in alloys.values()], HIT_QUANTILE))


def _config(threshold: float, **overrides):
    """Two rounds of batches of 5 after 10 random alloys, one seed, tiny ensembles."""
    settings = {"architecture": "cgcnn", "initial": 10, "budget": 20, "seeds": 1, "batch": 5} | TINY | overrides
    return replay_config("pool", objective=[f"{TARGET}<={threshold:.4f}"], **settings)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_exact_prior_ranks_every_round_and_finds_the_hits(engine):
    """The prior is the target itself: its line's held-out MAE is ~0, which no model
    beats, so every round ranks by the line, and picks hits while any are hidden."""
    config = _config(_store_pool(engine), prior=PRIOR)
    result = replay(engine, config)
    assert result.revealed == [10, 15, 20]
    assert result.bases == [["prior", "prior"]]
    (curve,), (random_curve,) = result.hits, result.random_hits
    picks = config.budget - config.initial
    assert curve[-1] == min(result.hits_in_pool, curve[0] + picks)  # every pick a hit, while hits remain
    assert curve[-1] >= random_curve[-1]
    assert result.to_dict()["bases"] == [["prior", "prior"]]
    # Records from before the basis was kept still read.
    assert ReplayResult("x", 1, 0, [1], [[0]], [[0]]).to_dict()["bases"] == []


@pytest.mark.slow  # OFM descriptors of 42 alloys: some 20 s
@pytest.mark.parametrize("backend", ["sqlite"])
def test_without_a_prior_the_model_ranks_on_other_atom_features(engine):
    """No prior: every round ranks by the model; the backbone reads the featurizer's width
    (OFM then CGCNN: 1,147 entries per atom, not CGCNN's 91)."""
    result = replay(engine, _config(_store_pool(engine), atom_features="ofm", budget=15))
    assert result.bases == [["model"]]
    assert result.hits[0] == sorted(result.hits[0])


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_pool_structure_without_the_prior_is_refused(engine):
    config = _config(_store_pool(engine, without_prior=3), prior=PRIOR)
    with pytest.raises(InputError, match=rf"3 of 42 structures .* prior '{PRIOR}'"):
        replay(engine, config)


def test_a_campaigns_prior_and_atom_features_are_replayed():
    campaign = config_from_document(campaign_document("c", 20, model={**TINY, "prior": PRIOR, "atom_features": "ofm"}))
    config = replay_config("pool", campaign=campaign)
    assert (config.prior, config.atom_features) == (PRIOR, "ofm")
    assert config.featurizer() == campaign.model.featurizer()
    assert replay_config("pool", campaign=campaign, prior=None, atom_features="cgcnn").prior is None
    assert replay_config("pool", objective=[f"{TARGET}<=0"]).atom_features == "chgnet"  # a campaign's default
    assert replay_config("pool", objective=[f"{TARGET}<=0"], architecture="schnet").atom_features == "chgnet"
    assert replay_config("pool", objective=[f"{TARGET}<=0"], architecture="sevennet").atom_features == "cgcnn"
    assert replay_config("pool", campaign=campaign, architecture="sevennet").featurizer().atom_features == "cgcnn"
    with pytest.raises(InputError, match="atom_features"):
        replay_config("pool", campaign=campaign, atom_features="orbital")
