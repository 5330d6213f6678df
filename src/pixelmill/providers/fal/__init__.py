"""fal's queue API (`--provider fal`): `provider.py` the wire, `params.py` the parameter mapping, `errors.py`
the errors."""
