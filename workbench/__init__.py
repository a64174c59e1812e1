"""workbench: a database-backed active-learning workbench for crystalline materials."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("workbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
