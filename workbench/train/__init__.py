"""Training: deduplicated splits, labeled graphs from the store, ensembles, metrics, baselines."""
