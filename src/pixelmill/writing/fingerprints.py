"""A fingerprint per step: which results of a RUNDIR a new configuration keeps, and which it makes again.

A step's images depend on its own configuration (`StepConfig.fingerprint()`: task, provider, model, prompt or
template, fields, image parameters, file names), on the row, and on the outputs of the earlier steps it reads:
those whose output field it names (a placeholder of its prompt template, its prompt field, its image or mask
field, or the fields it reads by default: `prompt`, `conversations` / `conversation` without a prompt option,
`images` for an edit). A step's fingerprint is its own configuration and the fingerprints of the steps it reads,
so a change to one step changes its fingerprint and those of the steps that read its outputs, transitively, and
no other. Base URLs, keys, limits, retries, budget and output format are in no fingerprint (DESIGN 2.7).

Everything here works on the plain dicts that the journal stores (`meta.step_fingerprints`), so that a journal
that only kept the whole configuration's fingerprint (`meta.fingerprint`, the first layout) is read the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from pixelmill.errors import ConfigError
from pixelmill.reading.records import template_fields

# The fields a step reads when no option names them (reading/records.py `user_turns`, engine/inputs.py).
DEFAULT_PROMPT_FIELDS = ("prompt", "conversations", "conversation")
DEFAULT_IMAGE_FIELD = "images"


def reads(step: dict[str, Any]) -> set[str]:
    """The row fields a step reads, from its own fingerprint (`StepConfig.fingerprint()`)."""
    fields: set[str] = set()
    prompt = step.get("prompt")
    if isinstance(prompt, str):
        try:
            fields.update(template_fields(prompt))
        except ConfigError:  # a template an older version took: it read no field this one can tell
            pass
    elif isinstance(step.get("prompt_field"), str):
        fields.add(step["prompt_field"])
    else:
        fields.update(DEFAULT_PROMPT_FIELDS)
    image_field = step.get("image_field") or (DEFAULT_IMAGE_FIELD if step.get("task") != "generate" else None)
    for name in (image_field, step.get("mask_field")):
        if isinstance(name, str):
            fields.add(name)
    return fields


def step_fingerprints(steps: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each step's fingerprint, in step order: `{"config": its own, "reads": {step: fingerprint}}` over the
    earlier steps whose output field it reads (a later step's output is not in the row yet)."""
    out: dict[str, dict[str, Any]] = {}
    writers: dict[str, str] = {}  # output field -> the earlier step that writes it
    for name, own in steps:
        needed = reads(own)
        out[name] = {"config": own, "reads": {w: out[w] for field, w in writers.items() if field in needed}}
        if isinstance(own.get("output_field"), str):
            writers[own["output_field"]] = name
    return out


def from_whole(fingerprint: dict[str, Any], order: list[str]) -> dict[str, dict[str, Any]]:
    """The step fingerprints of a whole configuration's fingerprint (`RunConfig.fingerprint()`), its steps in
    `order` (the snapshot's; names it lacks follow in name order)."""
    steps = fingerprint.get("steps")
    if not isinstance(steps, dict):
        return {}
    names = [n for n in order if n in steps] + sorted(n for n in steps if n not in order)
    return step_fingerprints((n, steps[n]) for n in names if isinstance(steps[n], dict))


def same(a: Any, b: Any) -> bool:
    return canonical(a) == canonical(b)


def canonical(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def readers(fingerprints: dict[str, dict[str, Any]], names: Iterable[str]) -> list[str]:
    """`names` and every step that reads their outputs, transitively, in step order (`fingerprints` is in step
    order)."""
    chosen = set(names)
    for name, fp in fingerprints.items():
        if set(fp["reads"]) & chosen:
            chosen.add(name)
    return [n for n in fingerprints if n in chosen] + sorted(chosen - set(fingerprints))


def roots(fingerprints: dict[str, dict[str, Any]], changed: Iterable[str]) -> list[str]:
    """The changed steps that read no changed step: restarting them (and so their readers) covers every
    change, and nothing narrower does."""
    changed = set(changed)
    return [n for n, fp in fingerprints.items() if n in changed and not set(fp["reads"]) & changed]
