"""Flat `pixelmill_*` columns beside the `pixelmill` JSON column (which stays a JSON string: DESIGN 2.7), so that
SQL and dataframes filter on a row's outcome without parsing JSON: `WHERE pixelmill_status = 'failed'` in duckdb,
`df[df.pixelmill_status == "failed"]` in pandas.

Flat scalar columns rather than one struct column: a struct is `pixelmill_meta.status` in duckdb but a column of
dicts in pandas; flat columns read the same in both, and in the Hub's viewer.

Every row has `pixelmill_status` (done / failed / pending), `pixelmill_cost_usd` (what the row cost; null when
nothing was billed) and `pixelmill_error_kind` (null unless failed). One step adds `pixelmill_model`; a pipeline
gives the row's outcome over its steps (failed if any step failed, else pending if any is pending) and the same
four columns per step: `pixelmill_<step>_status`, `..._cost_usd`, `..._error_kind`, `..._model`.
"""

from __future__ import annotations

from typing import Any

FIELDS = (("status", "string"), ("cost_usd", "float64"), ("error_kind", "string"), ("model", "string"))


def meta_names(steps: tuple[str, ...] | None) -> list[tuple[str, str]]:
    """The flat columns and their Arrow type names, in order."""
    if steps is None:
        return [(f"pixelmill_{name}", kind) for name, kind in FIELDS]
    names = [(f"pixelmill_{name}", kind) for name, kind in FIELDS if name != "model"]
    for step in steps:
        names += [(f"pixelmill_{step}_{name}", kind) for name, kind in FIELDS]
    return names


def flat_meta(obj: Any, steps: tuple[str, ...] | None) -> dict[str, Any]:
    """The flat columns of one row's `pixelmill` object."""
    obj = obj if isinstance(obj, dict) else {}
    if steps is None:
        return {f"pixelmill_{name}": value for name, value in _step(obj).items()}
    if "error" in obj and not any(step in obj for step in steps):  # a line that could not be read
        per_step = {step: {**_step(obj), "model": None} for step in steps}
    else:
        per_step = {step: _step(obj.get(step)) for step in steps}
    statuses = [s["status"] for s in per_step.values()]
    costs = [s["cost_usd"] for s in per_step.values() if s["cost_usd"] is not None]
    failed = [s for s in per_step.values() if s["status"] == "failed"]
    row = {
        "pixelmill_status": "failed" if failed else "pending" if "pending" in statuses else "done",
        "pixelmill_cost_usd": sum(costs) if costs else None,
        "pixelmill_error_kind": failed[0]["error_kind"] if failed else None,
    }
    for step, values in per_step.items():
        row.update({f"pixelmill_{step}_{name}": value for name, value in values.items()})
    return row


def _step(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {"status": "pending", "cost_usd": None, "error_kind": None, "model": None}
    error = obj.get("error")
    cost = obj.get("cost_usd")
    model = obj.get("model")
    return {
        "status": str(obj.get("status") or ("failed" if error else "pending")),
        "cost_usd": float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
        "error_kind": str(error.get("kind")) if isinstance(error, dict) and error.get("kind") else None,
        "model": model if isinstance(model, str) else None,
    }
