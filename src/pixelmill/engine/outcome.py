"""What a call's answer adds to a row's `pixelmill` metadata, and how a chat's model turns are kept in the
journal: image data replaced by the path of the file it was saved to (the journal stays small), and put back
byte for byte when a resumed conversation needs the turn again."""

from __future__ import annotations

from typing import Any

import pybase64

from pixelmill.providers.base import ImageResult
from pixelmill.writing.store import ImageStore


def done_call(info: dict[str, Any], call_no: int) -> dict[str, Any]:
    calls: list[dict[str, Any]] = info.get("calls", [])
    return calls[call_no] if call_no < len(calls) else {}


def merge_result(info: dict[str, Any], result: ImageResult, params: dict[str, Any], cost: float | None,
                  paths: list[str], call_no: int, multi: bool, *, by_path: bool) -> None:
    """Fold one call's answer into the row's `pixelmill` metadata."""
    info.setdefault("parameters", params)
    if result.usage is not None:
        usages: list[dict[str, Any]] = info.setdefault("_usages", [])
        usages.append(result.usage)
        info["usage"] = result.usage if len(usages) == 1 else _sum_usage(usages)
    if result.request_id:
        info.setdefault("request_ids", []).append(result.request_id)
    revised = [img.revised_prompt for img in result.images if img.revised_prompt]
    if revised:
        info["revised_prompt"] = revised[0] if len(revised) == 1 and "revised_prompt" not in info else \
            ([info["revised_prompt"]] if isinstance(info.get("revised_prompt"), str) else
             info.get("revised_prompt", [])) + revised
    if result.text:
        info["text"] = result.text
    if result.finish_reason:
        info["finish_reason"] = result.finish_reason
    if result.extra:
        response: dict[str, Any] = info.setdefault("response", {})
        for key, value in result.extra.items():
            response.setdefault(key, value)
    calls: list[dict[str, Any]] = info.setdefault("calls", [])
    entry: dict[str, Any] = {"outputs": paths, "cost_usd": cost}
    if multi and result.model_content is not None:
        entry["model_content"] = _strip_content(result.model_content, paths) if by_path else result.model_content
    while len(calls) < call_no:
        calls.append({})
    calls[call_no:call_no + 1] = [entry]


def _sum_usage(usages: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for usage in usages:
        for key, value in usage.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            elif isinstance(value, dict):
                total[key] = _sum_usage([total.get(key, {}), value]) if key in total else dict(value)
            else:
                total.setdefault(key, value)
    return total


def _strip_content(content: Any, paths: list[str]) -> Any:
    """A model turn for the journal: inline image data replaced by the path of the file it was saved to
    (the images are on disk already), so the journal stays small and a resumed chat can rebuild the turn."""
    if not isinstance(content, dict):
        return content
    out = dict(content)
    parts = []
    image_no = 0
    for part in content.get("parts", []):
        inline = part.get("inlineData") or part.get("inline_data") if isinstance(part, dict) else None
        if inline and not part.get("thought") and image_no < len(paths):
            part = {**part, "inlineData": {"mimeType": inline.get("mimeType", inline.get("mime_type")),
                                           "$file": paths[image_no]}}
            part.pop("inline_data", None)
            image_no += 1
        parts.append(part)
    out["parts"] = parts
    return out


def restore_content(content: Any, store: ImageStore) -> Any:
    if not isinstance(content, dict):
        return content
    parts = []
    for part in content.get("parts", []):
        inline = part.get("inlineData") if isinstance(part, dict) else None
        if inline and "$file" in inline:
            data = (store.rundir / inline["$file"]).read_bytes()
            part = {**part, "inlineData": {"mimeType": inline["mimeType"],
                                           "data": pybase64.b64encode(data).decode()}}
        parts.append(part)
    return {**content, "parts": parts}
