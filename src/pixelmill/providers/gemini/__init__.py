"""Gemini image models: requests, answers and errors (provider.py), wire parameters (params.py)."""
