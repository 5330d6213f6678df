"""Preflight: every field a configuration names, checked against the source's first rows before anything is sent.

A run whose prompt field, template field, image field, mask field or id field is misspelt (or that points at the
wrong file) would fail every row one by one after the run directory was bound to it: the retry would fail the
same way, and the fix would be refused as "another configuration". So `plan_run` reads a bounded sample of the
first rows (reading/sample.py) and checks each named field here. A field that is in none of the sampled rows, and
that no earlier step of a pipeline writes, is a `MissingField` (exit 2, nothing sent) naming the field, the fields
the rows have and the closest of them. A field in some sampled rows only is not an error: the rows without it fail
one by one with an input error, as they always have.

What each step names: its prompt template's `{fields}` (else its prompt field, else the default `prompt` /
`conversations`), its image field (else `images` for an edit, unless the rows hold conversations, whose messages
may carry the images), its mask field; and the run's id field.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass

from pixelmill.config import RunConfig, StepConfig
from pixelmill.errors import MissingField
from pixelmill.reading.records import template_fields
from pixelmill.reading.sample import Sample

# The fields a row's prompt comes from when the configuration names none (reading/records.user_turns).
DEFAULT_PROMPT_FIELDS = ("prompt", "conversations", "conversation")
DEFAULT_IMAGE_FIELD = "images"
# Column names that usually hold a prompt, suggested when no field is close to "prompt".
_PROMPT_LIKE = ("caption", "text", "description", "instruction", "query", "input", "prompts")
_FIELDS_SHOWN = 40


@dataclass(frozen=True, slots=True)
class _Named:
    field: str
    subject: str  # how the message names it: "--prompt-field 'descripton'"


def check_fields(config: RunConfig, sample: Sample) -> None:
    """Raise `MissingField` for the first field the configuration names that none of the sampled rows has and no
    earlier step writes. A sample without readable rows checks nothing (those rows fail as unreadable)."""
    if not sample.rows:
        return
    present = sample.fields()
    have = set(present)
    writers = {step.out_field: step.name for step in config.steps}
    earlier: list[str] = []  # output fields of the steps before this one
    for step in config.steps:
        known = have | set(earlier)
        context = _Context(config, step, sample, present, earlier)
        for named in _named_fields(step, config.pipeline):
            if named.field not in known:
                raise context.missing(named, writers.get(named.field))
        if step.prompt is None and step.prompt_field is None and not known & set(DEFAULT_PROMPT_FIELDS):
            raise context.no_prompt()
        if step.task == "edit" and step.image_field is None and DEFAULT_IMAGE_FIELD not in known \
                and not have & {"conversations", "conversation"}:
            raise context.no_images()
        earlier.append(step.out_field)
    if config.id_field is not None and config.id_field not in have:
        flag = "id_field" if config.pipeline else "--id-field"
        context = _Context(config, None, sample, present, [])
        raise context.missing(_Named(config.id_field, f"{flag} {config.id_field!r}"), None)


def _named_fields(step: StepConfig, pipeline: bool) -> Iterator[_Named]:
    if step.prompt is not None:  # a template wins over a prompt field (records.user_turns)
        where = "the prompt" if pipeline else "--prompt-template"
        for name in template_fields(step.prompt):
            yield _Named(name, f"field {name!r} of {where}")
    elif step.prompt_field is not None:
        yield _Named(step.prompt_field, f"{'prompt_field' if pipeline else '--prompt-field'} {step.prompt_field!r}")
    if step.image_field is not None:
        yield _Named(step.image_field, f"images field {step.image_field!r}" if pipeline
                     else f"--image-field {step.image_field!r}")
    if step.mask_field is not None:
        yield _Named(step.mask_field, f"mask field {step.mask_field!r}" if pipeline
                     else f"--mask-field {step.mask_field!r}")


class _Context:
    """The message parts shared by every complaint about one step: where, the rows, the fields present."""

    def __init__(self, config: RunConfig, step: StepConfig | None, sample: Sample, present: list[str],
                 earlier: list[str]) -> None:
        self.pipeline = config.pipeline
        origin = f"{config.origin}: " if config.pipeline and config.origin else ""
        self.where = f"{origin}step {step.name!r}: " if step is not None and config.pipeline else origin
        self.none_of = sample.none_of()
        self.present = present
        self.earlier = earlier

    def fields(self) -> str:
        shown = ", ".join(self.present[:_FIELDS_SHOWN])
        more = len(self.present) - _FIELDS_SHOWN
        text = f"the rows have: {shown}" + (f", ... ({more} more)" if more > 0 else "")
        if self.earlier:
            text += f"; earlier steps write: {', '.join(self.earlier)}"
        return text

    def closest(self, name: str) -> str | None:
        candidates = [*self.present, *self.earlier]
        folded = [c for c in candidates if c.casefold() == name.casefold()]
        if folded:
            return folded[0]
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        return close[0] if close else None

    def missing(self, named: _Named, writer: str | None) -> MissingField:
        nor = ", nor written by an earlier step" if self.earlier or writer is not None else ""
        later = f" (step {writer!r} writes it, but not before this step)" if writer is not None else ""
        suggestion = self.closest(named.field)
        hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
        return MissingField(f"{self.where}{named.subject} is in {self.none_of}{nor}{later}{hint}; "
                            f"{self.fields()}. Nothing was sent.", field=named.field,
                            present=tuple(self.present), suggestion=suggestion)

    def no_prompt(self) -> MissingField:
        suggestion = self.closest("prompt") or next(
            (f for f in self.present if f.casefold() in _PROMPT_LIKE), None)
        if self.pipeline:
            hint = f" (did you mean prompt_field: {suggestion}?)" if suggestion else ""
            how = 'name its field with prompt_field: NAME, or write a prompt: "A photo of {NAME}"'
        else:
            hint = f" (did you mean --prompt-field {suggestion}?)" if suggestion else ""
            how = 'name its field with --prompt-field NAME, or write it with --prompt-template "A photo of {NAME}"'
        return MissingField(f"{self.where}no prompt: {self.none_of} has a 'prompt' or 'conversations' "
                            f"field{hint}; {self.fields()}. Give the prompt: {how}. Nothing was sent.",
                            field="prompt", present=tuple(self.present), suggestion=suggestion)

    def no_images(self) -> MissingField:
        suggestion = self.closest(DEFAULT_IMAGE_FIELD) or self.closest("image")
        if self.pipeline:
            hint = f' (did you mean images: "{{{suggestion}}}"?)' if suggestion else ""
            how = 'images: "{NAME}"'
        else:
            hint = f" (did you mean --image-field {suggestion}?)" if suggestion else ""
            how = "--image-field NAME"
        return MissingField(f"{self.where}an edit needs input images: {self.none_of} has an 'images' "
                            f"field{hint}; {self.fields()}. Name the field that holds them with {how}. "
                            "Nothing was sent.", field=DEFAULT_IMAGE_FIELD, present=tuple(self.present),
                            suggestion=suggestion)
