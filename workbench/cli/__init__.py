"""The ``workbench`` command line: one module per group of commands.

- :mod:`workbench.cli.store`: init, import, export-ase, sql, status.
- :mod:`workbench.cli.models`: featurize, train, predict.
- :mod:`workbench.cli.dft`: ``dft run | retry | status | show | presets``.
- :mod:`workbench.cli.campaign`: ``campaign run | status | report`` and ``replay``.
- :mod:`workbench.cli.serve`: ``serve``, the browser dashboard.
- :mod:`workbench.cli.generate`: ``generate substitute | predict | prototypes``.
- :mod:`workbench.cli.hull`: ``hull``, energies above the convex hull.
- :mod:`workbench.cli.relax`: ``relax``, relaxations stored as structures.
- :mod:`workbench.cli.shared`: the root command, its error handler and what commands share.
"""

from workbench.cli.shared import app

# Importing a module registers its commands; help lists them in this order.
# isort: off
from workbench.cli import store, models, dft, campaign, serve  # noqa: F401
from workbench.cli import generate, hull  # noqa: F401
from workbench.cli import relax  # noqa: F401
# isort: on

__all__ = ["app"]
