"""What readers produce: one entry per structure, with its labels, not yet checked."""

from dataclasses import dataclass, field

import numpy as np

from workbench.errors import InputError
from workbench.store.schema import TargetKind
from workbench.structures.crystal import Crystal

# Info keys under which an extxyz frame gives its own id, the first present wins; the value
# is the frame's id, never one of its labels. (Not ``name``: frames often share one.)
FRAME_ID_KEYS = ("material_id", "external_id", "id")
# CSV columns that hold an entry's id, the first present wins: those, JARVIS's ``jid``
# and a ``name`` column.
ID_COLUMNS = (*FRAME_ID_KEYS, "jid", "name")


@dataclass(frozen=True)
class Label:
    """One value of one target, as read. ``value`` is a float for scalars, else an array.

    ``grid`` and ``grid_units`` describe a spectrum's axis where the file gives one; they
    are used when the import defines the target.
    """

    kind: TargetKind
    value: float | np.ndarray
    units: str = ""
    grid: np.ndarray | None = None
    grid_units: str = ""


@dataclass
class Entry:
    """One structure as read from a file.

    The structure is either parsed already (``crystal``) or kept as text with its format
    (``text``, ``text_format`` in ``cif``/``poscar``) so that parsing can run in worker
    processes. ``row`` locates the entry in its file for error messages.
    """

    row: str
    external_id: str
    crystal: Crystal | None = None
    text: str | None = None
    text_format: str | None = None
    labels: dict[str, Label] = field(default_factory=dict)
    # Earlier (source, external id) pairs of this structure, e.g. kept in a workbench
    # export, recorded beside the import's own source.
    origins: list[tuple[str, str]] = field(default_factory=list)
    # For text parsed later: per-site CIF columns that become labels, column -> (target, units).
    site_targets: dict[str, tuple[str, str]] = field(default_factory=dict)
    # A reader that could not make sense of this row says why here; the rest of the file
    # is still read, so that --skip-bad can leave out just this row.
    error: InputError | None = None
