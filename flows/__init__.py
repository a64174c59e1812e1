"""Prefect flows: thin wrappers that run the package's functions as tasks, and their
deployments (``flows/prefect.yaml``). Installed with the package, so ``python -m
flows.campaign`` and a Prefect worker import them from anywhere."""
