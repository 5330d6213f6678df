"""Running on a Ray cluster (optional extra `pixelmill[ray]`; `import ray` happens only in this package).

- `local`: local diffusers models on every GPU of the cluster, one model copy per actor.

The driver stays the engine (journal, budget, limits, retries); the cluster only runs provider calls.
"""
