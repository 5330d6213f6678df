"""Black Forest Labs' API (`--provider bfl`): `provider.py` the wire, `params.py` the parameter mapping,
`errors.py` the errors."""
