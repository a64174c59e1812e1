"""Expected DFT cost of a candidate, for cost-aware acquisition.

The model is ``log t = a + b log(n_sites) + c s``, with ``s`` 1 when the preset polarises
the structure's spins. Past calculations of the same preset (their recorded wall time)
fit it by least squares, pulled towards a prior (``b`` = 3: plane-wave DFT grows roughly
with the cube of the cell; ``c`` = log 2: two spin channels) by :data:`PRIOR_WEIGHT`
pseudo-observations, so that two or three past calculations already inform it without
swinging it. Only ratios of costs matter for a ranking, so the intercept's prior is weak.
"""

import math
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, select

from workbench.dft.presets import Preset, magnetic_moments
from workbench.store.bulk import one_of
from workbench.store.engine import session_scope
from workbench.store.schema import Calculation, CalculationStatus, Structure

PRIOR_SIZE_EXPONENT = 3.0
PRIOR_SPIN_LOG_FACTOR = math.log(2.0)
PRIOR_WEIGHT = 3.0
# The intercept (overall speed of the machine) is left to the data.
INTERCEPT_PRIOR_WEIGHT = 1e-3
# Floor on a recorded wall time (s) before its log: a time recorded as 0 would be log 0.
MIN_WALL_TIME_S = 1e-3


def spin_polarised(preset: Preset, elements: list[str]) -> bool:
    """Whether ``preset`` runs a structure with these elements spin-polarised."""
    if preset.spin == "on":
        return True
    return preset.spin == "auto" and any(element in magnetic_moments() for element in elements)


def _features(nsites: np.ndarray, spin: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(len(nsites)), np.log(nsites), spin.astype(float)])


@dataclass(frozen=True)
class CostModel:
    """Fitted coefficients ``(a, b, c)`` and how many calculations fitted them."""

    coefficients: tuple[float, float, float]
    calculations: int

    def expected_seconds(self, nsites: np.ndarray, spin: np.ndarray) -> np.ndarray:
        return np.exp(_features(np.asarray(nsites, float), np.asarray(spin, bool)) @ np.array(self.coefficients))


def fit_cost_model(nsites: np.ndarray, spin: np.ndarray, seconds: np.ndarray) -> CostModel:
    """Ridge fit of ``log seconds`` towards the prior (see the module docstring)."""
    features = _features(np.asarray(nsites, float), np.asarray(spin, bool))
    prior = np.array([0.0, PRIOR_SIZE_EXPONENT, PRIOR_SPIN_LOG_FACTOR])
    weights = np.diag([INTERCEPT_PRIOR_WEIGHT, PRIOR_WEIGHT, PRIOR_WEIGHT])
    log_seconds = np.log(np.maximum(np.asarray(seconds, float), MIN_WALL_TIME_S))
    coefficients = np.linalg.solve(features.T @ features + weights, features.T @ log_seconds + weights @ prior)
    return CostModel(tuple(float(value) for value in coefficients), len(log_seconds))


def cost_model_of(engine: Engine, preset: Preset) -> CostModel:
    """The model fitted on every done calculation of ``preset`` in the store."""
    with session_scope(engine) as session:
        rows = session.execute(
            select(Structure.nsites, Structure.elements, Calculation.wall_time_s)
            .join(Calculation, Calculation.structure_id == Structure.id)
            .where(Calculation.preset == preset.name, Calculation.status == CalculationStatus.DONE,
                   Calculation.wall_time_s.is_not(None))
        ).all()
    nsites = np.array([row.nsites for row in rows], float)
    spin = np.array([spin_polarised(preset, row.elements) for row in rows], bool)
    return fit_cost_model(nsites, spin, np.array([row.wall_time_s for row in rows], float))


def expected_costs(engine: Engine, preset: Preset, structure_ids: list[int]) -> np.ndarray:
    """Expected seconds of a ``preset`` calculation for each structure, in order."""
    model = cost_model_of(engine, preset)
    with session_scope(engine) as session:
        rows = {row.id: row for row in session.execute(
            select(Structure.id, Structure.nsites, Structure.elements)
            .where(one_of(session, Structure.id, structure_ids)))}
    nsites = np.array([rows[i].nsites for i in structure_ids], float)
    spin = np.array([spin_polarised(preset, rows[i].elements) for i in structure_ids], bool)
    return model.expected_seconds(nsites, spin)
