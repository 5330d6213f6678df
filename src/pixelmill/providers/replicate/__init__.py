"""Replicate predictions: submit, poll, cancel and recover by listing (provider.py), wire inputs per model
(params.py), error mapping (errors.py)."""
