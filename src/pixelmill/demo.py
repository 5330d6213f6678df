"""`pixelmill demo`: the whole job rehearsed offline, on the built-in emulator: generate product images for
a bundled prompt file, edit some of them, and say where everything is. No key, no network, no cost."""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from pixelmill.console import run_with_progress
from pixelmill.options import build_config, job_options

if TYPE_CHECKING:
    from pixelmill.options import JobOptions


def _say(text: str) -> None:
    sys.stderr.write(f"demo: {text}\n")


def run_demo(root: Path) -> int:
    root.mkdir(parents=True, exist_ok=True)
    prompts = root / "prompts.jsonl"
    with resources.files("pixelmill").joinpath("data/demo_prompts.jsonl").open("rb") as src, \
            prompts.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    _say(f"prompts: {prompts} (12 product photos); provider: the built-in emulator on loopback")

    generate = build_config("generate", prompts, _options(root / "generate", id_field="id", size="1536x1024",
                                                          quality="low"))
    report = run_with_progress(generate, interval=2.0)
    if report.exit_code not in (0, 1):
        return report.exit_code

    # Edit the first four generated images: each row points at a file of the first run, by a path relative to
    # the edit file (input paths resolve against their file's folder and stay inside its tree).
    edits = root / "edits.jsonl"
    with (report.output).open("rb") as f, edits.open("wb") as out:
        for line in list(f)[:4]:
            row = orjson.loads(line)
            if row.get("images"):
                out.write(orjson.dumps({
                    "id": row["id"],
                    "images": [f"generate/{row['images'][0]}"],
                    "prompt": f"Put this {row['id']} on a marble table, keep the lighting",
                }) + b"\n")
    edit = build_config("edit", edits, _options(root / "edit", id_field="id", quality="low"))
    report2 = run_with_progress(edit, interval=2.0)
    _say(f"generated images: {root / 'generate' / 'images'}; table: {report.output}")
    _say(f"edited images:    {root / 'edit' / 'images'}; table: {report2.output}")
    from pixelmill.reports.gallery.page import write_gallery

    for rundir in (root / "generate", root / "edit"):
        page = write_gallery(rundir)
        _say(f"gallery: {page.path} ({page.cards} rows; open it in a browser, it needs no network)")
    _say("next: pixelmill status " + str(root / "generate"))
    return max(report.exit_code, report2.exit_code)


def _options(output: Path, **extra: object) -> JobOptions:
    return job_options(provider="emulator", model="gpt-image-2", output=output, restart=True, concurrency=8,
                       **extra)
