"""The dataset card (`README.md`) that `pixelmill push` publishes: a YAML header the Hub reads (the data files,
task categories, size category, tags) and a body a person reads: the models and parameters of each step, the
counts of done / failed / pending rows, the images made, what the run cost, the columns, and how to load it.

Everything comes from the run's configuration snapshot and its status (`status.py`); never a key, nor a base URL.
"""

from __future__ import annotations

from typing import Any

import yaml

from pixelmill.config import RunConfig
from pixelmill.reports.status import RunStatus
from pixelmill.version import VERSION
from pixelmill.writing.image_columns import layout_of

_TASKS = {"generate": "text-to-image", "edit": "image-to-image", "auto": "image-to-image"}
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"))


def dataset_card(repo_id: str, config: RunConfig, status: RunStatus, rows: int) -> str:
    header = {
        "pretty_name": repo_id.split("/", 1)[1],
        "tags": ["pixelmill", "synthetic", "image-generation"],
        "task_categories": sorted({_TASKS[step.task] for step in config.steps}),
        "size_categories": [next((name for bound, name in _SIZES if rows < bound), "n>10M")],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    }
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
        f"# {repo_id}", "",
        f"Images made with [pixelmill](https://pypi.org/project/pixelmill/) {VERSION}: {rows} rows, "
        f"{sum(s.images for s in status.steps)} images, ${status.spent:.4f} spent.", "",
        "## Steps", "",
        "| step | task | provider | model | done | failed | pending | images | cost (USD) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in status.steps:
        lines.append(f"| {_cell(s.name)} | {s.task} | {_cell(s.provider)} | {_cell(s.model)} | {s.done} | "
                     f"{s.failed} | {s.pending} | {s.images} | {s.spent:.4f} |")
    lines += ["", "## Parameters", ""]
    for step in config.steps:
        lines.append(f"- `{step.name}`: {_code(_parameters(step))}")
    lines += ["", "## Columns", "",
              *[f"- `{step.out_field}`: the images of step `{step.name}` (a list of `Image`)" for step in config.steps],
              *[f"- `{column.name}`: the input images the edits read (`Image`)" for column in layout_of(config).inputs],
              "- `pixelmill`: each row's record (JSON text): provider, model, parameters sent, usage, cost, "
              "error",
              "- `pixelmill_status`, `pixelmill_cost_usd`, `pixelmill_error_kind`: the row's outcome; failed and "
              "pending rows are kept, with an empty image list",
              "", "## Load it", "", "```python", "from datasets import load_dataset", "",
              f'data = load_dataset("{repo_id}", split="train")',
              'done = data.filter(lambda row: row["pixelmill_status"] == "done")', "```", ""]
    if status.failures:
        lines += ["## Failures", "", "| step | kind | rows | example |", "|---|---|---|---|"]
        lines += [f"| {_cell(f.step)} | {_cell(f.kind)} | {f.count} | {_cell(f.example_message[:160])} |"
                  for f in status.failures[:10]]
        lines.append("")
    return "\n".join(lines)


def _parameters(step: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"task": step.task, "model": step.model.model}
    if step.prompt:
        found["prompt"] = step.prompt
    if step.prompt_field:
        found["prompt_field"] = step.prompt_field
    found.update(step.params.model_dump(mode="json", exclude_none=True, exclude_defaults=True))
    return found


def _code(value: Any) -> str:
    import json

    return "`" + json.dumps(value, ensure_ascii=False).replace("`", "'") + "`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
