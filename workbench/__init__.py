"""workbench: a database-backed active-learning workbench for crystalline materials."""


def __getattr__(name: str) -> str:
    # Looked up on first use, not at import: importlib.metadata costs every command's
    # start-up a tenth of a second, and only a saved model needs the version.
    if name != "__version__":
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("workbench")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"
