"""Turning one row into what a step sends: its task, its turns (prompts) and its input images.

Everything here is per row: problems are `InputError`s naming the field, recorded on the row; the run goes on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixelmill.errors import InputError
from pixelmill.providers.base import InputImage
from pixelmill.reading.images import InputPolicy, fit_for_model, load_image
from pixelmill.reading.records import Turn, user_turns

if TYPE_CHECKING:
    import aiohttp

    from pixelmill.config import StepConfig
    from pixelmill.models.table import ModelSpec


@dataclass(slots=True)
class StepInputs:
    task: str  # generate | edit
    turns: list[Turn]
    images: list[InputImage]  # the first turn's input images
    mask: InputImage | None
    later_images: list[list[InputImage]]  # images a conversation adds at turns 2, 3, ...


def image_refs(value: Any) -> list[Any]:
    if value is None or value == "" or value == []:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


async def gather_inputs(
    step: StepConfig,
    spec: ModelSpec,
    data: dict[str, Any],
    *,
    rundir_fields: set[str],
    policy: InputPolicy,
    rundir: Path,
    session: aiohttp.ClientSession | None,
) -> StepInputs:
    """Prompts, images and mask for one row of one step. `rundir_fields` are fields written by earlier steps,
    whose paths resolve against RUNDIR rather than the input file's folder."""
    turns = user_turns(data, prompt_field=step.prompt_field, template=step.prompt)
    image_field = step.image_field or ("images" if step.task != "generate" else None)
    refs = image_refs(data.get(image_field)) if image_field else []
    if image_field is not None:  # a text-to-image step ignores images inside the conversation's messages
        refs += turns[0].images
    if step.task == "edit" and not refs:
        if image_field not in data:
            raise InputError(f"row has no field {image_field!r} with the images to edit", field=image_field)
        raise InputError(f"field {image_field!r} holds no image to edit", field=image_field)
    task = "edit" if refs else "generate"
    if len(refs) > spec.max_input_images and spec.known:
        raise InputError(
            f"{len(refs)} input images in {image_field!r}; {spec.name} takes at most {spec.max_input_images}",
            field=image_field,
        )
    base = rundir if image_field in rundir_fields else policy.base_dir
    local = dataclasses.replace(policy, base_dir=base)
    images = []
    for i, ref in enumerate(refs):
        where = f"{image_field}[{i}]" if len(refs) > 1 else str(image_field)
        image = await load_image(ref, field=where, policy=local, session=session)
        images.append(fit_for_model(image, spec, field=where) if spec.known else image)
    mask = None
    if step.mask_field:
        if step.mask_field not in data or data[step.mask_field] in (None, ""):
            raise InputError(f"row has no mask in field {step.mask_field!r}", field=step.mask_field)
        mask_base = rundir if step.mask_field in rundir_fields else policy.base_dir
        mask = await load_image(
            data[step.mask_field], field=step.mask_field,
            policy=dataclasses.replace(policy, base_dir=mask_base),
            session=session,
        )
        if mask.mime != "image/png":
            raise InputError(f"{step.mask_field}: a mask must be a PNG with transparent areas to edit",
                             field=step.mask_field)
        if images and (mask.width, mask.height) != (images[0].width, images[0].height):
            raise InputError(
                f"{step.mask_field}: mask is {mask.width}x{mask.height} but the image is "
                f"{images[0].width}x{images[0].height}; they must match", field=step.mask_field)
    for t, turn in enumerate(turns):
        if len(turn.prompt) > spec.max_prompt_chars:
            raise InputError(
                f"prompt of turn {t + 1} has {len(turn.prompt)} characters; {spec.name} takes at most "
                f"{spec.max_prompt_chars}", field=step.prompt_field or "prompt")
    if task == "edit" and "edit" not in spec.tasks:
        raise InputError(f"{spec.name} cannot edit images, and this row has input images", field=image_field)
    later: list[list[InputImage]] = []
    for t, turn in enumerate(turns[1:], start=2):
        loaded = []
        for i, ref in enumerate(turn.images):
            where = f"turn {t} image {i}"
            image = await load_image(ref, field=where, policy=policy, session=session)
            loaded.append(fit_for_model(image, spec, field=where) if spec.known else image)
        later.append(loaded)
    return StepInputs(task, turns, images, mask, later)
