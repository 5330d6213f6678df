"""Batch runs (`--batch`): rows sent through a provider's batch API at its batch price (engine/batch/flow.py)."""
