"""Hugging Face: Inference Providers through the router (`hf`) and dedicated Inference Endpoints
(`hf-endpoint`): requests and answers (provider.py), wire parameters (params.py), errors (errors.py)."""
