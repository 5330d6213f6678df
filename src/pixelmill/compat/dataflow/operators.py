"""DataFlow's two image operators, with DataFlow's constructors and `run(...)` signatures.

`PromptedImageGenerator`: one image request per user message of each row's conversation; the samples are keyed
`sample{row}_condition{j}` (j counts the row's user messages from 0) and the row's output is the list of all
its images, in message order.

`PromptedImageEditGenerator`: one request per row: the row's input image(s) (a path, URL or data URL, or a
list of them; relative paths resolve against the input file's folder, then the working directory) and its
conversation; several user messages make a multi-turn edit (Gemini: a chat; OpenAI: a chain of edits, each
editing the previous turn's result), whose output is the final turn's image(s). Samples are keyed
`sample_{row}`. A row whose output column already holds images is kept as it is, as DataFlow did.

Both are `batch_size` requests in flight, retried, resumable and budgeted by the engine; errors are recorded
per row (see `step_run` for the output columns).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from pixelmill.compat.dataflow.ledger import Request
from pixelmill.compat.dataflow.serving import ImageGenServing
from pixelmill.compat.dataflow.step_run import KEEP, KeepRow, OperatorRun, StepResult
from pixelmill.compat.dataflow.storage import FileStorage

_CONVERSATION_KEYS = ("conversations", "conversation")


class PromptedImageGenerator:
    def __init__(self, t2i_serving: ImageGenServing, save_interval: int = 50) -> None:
        self.t2i_serving = t2i_serving
        self.save_interval = save_interval

    @staticmethod
    def get_desc(lang: str = "en") -> str:
        return "Generate one image per user message of each row's conversation, through an image API."

    def run(self, storage: FileStorage, input_conversation_key: str = "conversations",
            output_image_key: str = "images") -> StepResult:
        run = OperatorRun(label="PromptedImageGenerator", serving=self.t2i_serving, storage=storage,
                          task="generate", output_key=output_image_key, image_field=None,
                          save_interval=self.save_interval)
        field = input_conversation_key if input_conversation_key in _CONVERSATION_KEYS else "conversations"

        def requests_of(data: dict[str, Any], row: int) -> list[Request]:
            messages = _cell(_conversation(data, input_conversation_key))
            users = [m for m in messages if _is_user(m)] if isinstance(messages, list) else []
            if not users:
                # No user message: one request that the engine records as this row's input error.
                return [Request(f"sample{row}_condition0", {field: messages})]
            return [Request(f"sample{row}_condition{j}", {field: [m]}) for j, m in enumerate(users)]

        return run.execute(requests_of)


class PromptedImageEditGenerator:
    def __init__(self, image_edit_serving: ImageGenServing, save_interval: int = 50) -> None:
        self.image_edit_serving = image_edit_serving
        self.save_interval = save_interval

    @staticmethod
    def get_desc(lang: str = "en") -> str:
        return "Edit each row's image(s) by its instructions (several messages: a multi-turn edit)."

    def run(self, storage: FileStorage, input_image_key: str = "images",
            input_conversation_key: str = "conversations", output_image_key: str = "output_image",
            save_image_with_idx: bool = True) -> StepResult:
        """`save_image_with_idx` is accepted for DataFlow's signature: samples are always keyed by row."""
        field = input_conversation_key if input_conversation_key in _CONVERSATION_KEYS else "conversations"
        image_field = input_image_key if input_image_key not in (field, "_id", "_identity") else "images"
        run = OperatorRun(label="PromptedImageEditGenerator", serving=self.image_edit_serving, storage=storage,
                          task="edit", output_key=output_image_key, image_field=image_field,
                          save_interval=self.save_interval)
        base = storage.input_path().parent

        def requests_of(data: dict[str, Any], row: int) -> list[Request] | KeepRow:
            existing = _cell(data.get(output_image_key))
            if existing and isinstance(existing, list | str):
                return KEEP
            refs = _cell(data.get(input_image_key))
            images = [_resolve(ref, base) for ref in refs] if isinstance(refs, list) else \
                ([] if refs in (None, "") else [_resolve(refs, base)])
            conversation = _cell(_conversation(data, input_conversation_key))
            return [Request(f"sample_{row}", {image_field: images, field: conversation})]

        return run.execute(requests_of)


def _conversation(data: dict[str, Any], key: str) -> Any:
    if key in data:
        return data[key]
    for other in _CONVERSATION_KEYS:  # DataFlow's code says `conversation`, its documents `conversations`
        if key in _CONVERSATION_KEYS and other in data:
            return data[other]
    return None


def _cell(value: Any) -> Any:
    """A list or object that a flat format (csv, parquet from pandas) stored as JSON text, decoded."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):  # numpy arrays from pandas
        return value.tolist()
    return value


def _is_user(message: Any) -> bool:
    if not isinstance(message, dict):
        return False
    return message.get("role", message.get("from", "user")) in ("user", "human")


def _resolve(ref: Any, base: Path) -> Any:
    """An input image reference with a relative path made absolute: against the input file's folder first
    (where DataFlow's documents put them), then the working directory (where DataFlow itself looked)."""
    if not isinstance(ref, str) or not ref or ref.startswith(("http://", "https://", "data:")):
        return ref
    path = Path(os.path.expanduser(ref))
    if path.is_absolute():
        return str(path)
    for candidate in (base / path, Path.cwd() / path):
        if candidate.exists():
            return str(candidate.resolve())
    return str((base / path).resolve())
