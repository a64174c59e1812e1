"""Parse CIF and POSCAR text into :class:`Crystal` records.

CIF goes through gemmi (a C++ CIF parser, about 50x faster than pymatgen's on these files;
see benchmarks/store.md), POSCAR through ASE.
"""

import io

import ase.io
import gemmi
import numpy as np

from workbench.structures.crystal import ORDERED_ONLY, Crystal

# CIF per-site columns that become per-site labels, and the target each feeds.
CIF_SITE_COLUMNS = {"_atom_site_charge": "charges"}
FULL_OCCUPANCY_TOLERANCE = 1e-3


def strip_preamble(cif_text: str) -> str:
    """Drop anything before the first ``data_`` line (some files start with a provenance line)."""
    start = cif_text.find("data_")
    if start > 0 and cif_text[start - 1] != "\n":
        start = cif_text.find("\ndata_") + 1
    return cif_text[start:] if start > 0 else cif_text


def cif_blocks(cif_text: str) -> list[gemmi.cif.Block]:
    """Every data block with atom sites; raises ``ValueError`` if there is none."""
    blocks = [block for block in gemmi.cif.read_string(strip_preamble(cif_text))
              if block.find_values("_atom_site_fract_x")]
    if not blocks:
        raise ValueError("no data block with atom sites (_atom_site_fract_x) in CIF")
    return blocks


def crystal_from_block(block: gemmi.cif.Block) -> tuple[Crystal, dict[str, np.ndarray]]:
    """The crystal of one data block and its per-site columns; ``ValueError`` says why not.

    Symmetry is expanded to the full unit cell; per-site columns in ``CIF_SITE_COLUMNS``
    are carried to every symmetry copy of the site they were given for.
    """
    try:
        small = gemmi.make_small_structure_from_block(block)
    except RuntimeError as error:
        raise ValueError(str(error)) from None
    if small.cell.volume <= 0:
        raise ValueError("CIF has no valid cell (_cell_length_*, _cell_angle_*)")
    sites = small.get_all_unit_cell_sites()
    unknown = sorted({site.type_symbol or site.label for site in sites if site.element.atomic_number == 0})
    if unknown:
        raise ValueError(f"unknown element in atom site type {', '.join(map(repr, unknown))}")
    partial = [f"{site.label} ({site.occ:g})" for site in small.sites if abs(site.occ - 1.0) > FULL_OCCUPANCY_TOLERANCE]
    if partial:
        more = f" and {len(partial) - 5} more" if len(partial) > 5 else ""
        raise ValueError(f"partial occupancy at atom sites {', '.join(partial[:5])}{more}: {ORDERED_ONLY}")
    # gemmi's orthogonalisation matrix maps fractional to Cartesian: its columns are a, b, c.
    lattice = np.array(small.cell.orth.mat.tolist()).T
    crystal = Crystal(
        lattice=lattice,
        species=tuple(site.element.name for site in sites),
        frac_coords=np.array([site.fract.tolist() for site in sites]),
    )
    columns = {}
    for tag, target in CIF_SITE_COLUMNS.items():
        values = [_cif_number(value, tag) for value in block.find_values(tag)]
        if values:
            columns[target] = _expand_site_column(small, sites, values, tag)
    return crystal, columns


def _expand_site_column(
    small: gemmi.SmallStructure, sites: list, values: list[float], tag: str
) -> np.ndarray:
    """Carry a value given per asymmetric-unit row to every site of the unit cell."""
    if len(values) != len(small.sites):
        raise ValueError(f"{tag} has {len(values)} values for {len(small.sites)} atom sites")
    if len(sites) == len(small.sites):  # nothing was expanded: rows are the sites, in order
        return np.array(values)
    labels = [site.label for site in small.sites]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{tag} on a symmetry-expanded cell needs unique _atom_site_label values")
    by_label = dict(zip(labels, values, strict=True))
    return np.array([by_label[site.label] for site in sites])


def _cif_number(text: str, tag: str) -> float:
    try:
        return float(text.split("(")[0])  # drop a standard uncertainty, "0.123(4)"
    except ValueError:
        raise ValueError(f"{tag}: {text!r} is not a number") from None


def read_poscar(text: str) -> Crystal:
    if "\n" not in text.strip() and "\\n" in text:
        text = text.replace("\\n", "\n")  # some JSON dumps keep a literal backslash-n
    # ASE's reader: five times faster than pymatgen's Poscar on these files.
    return Crystal.from_ase(ase.io.read(io.StringIO(text), format="vasp"))


def guess_text_format(text: str) -> str:
    """``cif`` for text with a CIF data block header, else ``poscar``."""
    return "cif" if "data_" in text else "poscar"


def parse_structure_text(text: str, text_format: str) -> tuple[Crystal, dict[str, np.ndarray]]:
    """One structure from text; a CIF must hold exactly one data block."""
    if text_format == "cif":
        blocks = cif_blocks(text)
        if len(blocks) != 1:
            raise ValueError(f"expected one CIF data block, found {len(blocks)}")
        return crystal_from_block(blocks[0])
    if text_format == "poscar":
        return read_poscar(text), {}
    raise ValueError(f"unknown structure text format {text_format!r}")
