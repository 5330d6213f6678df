"""OpenAI's images API, Azure OpenAI and OpenAI-compatible endpoints: request building and answer mapping
(provider.py), wire parameters per model (params.py), error mapping (errors.py)."""
