"""A run with a progress display: what the command line, the demo and the DataFlow compatibility layer show
while a run goes on (a live display on a terminal, plain lines otherwise), then the summary and the command that
resumes the run (kept in the journal for `status`), and when images were made the command that reviews them
(`pixelmill gallery`: the page is written on demand, not after every run, since its thumbnails take time).

`quiet` (`-q`) also silences the progress bars of the libraries a run may use (`datasets` reading a source or
writing `--format hf`, `huggingface_hub` downloads, diffusers' steps: all tqdm), for the run's duration; the
summary, failures included, is still printed.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pixelmill.api import RunReport, run_config
from pixelmill.engine.stats import RunStats
from pixelmill.options import command_line
from pixelmill.reports.progress import Progress
from pixelmill.reports.status import remember_command

if TYPE_CHECKING:
    from pixelmill.config import RunConfig

# Read by tqdm, datasets and huggingface_hub when they are imported (all of them import-time settings).
_QUIET_ENV = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def run_with_progress(
    config: RunConfig,
    *,
    quiet: bool = False,
    interval: float | None = None,
    summary: bool = True,
    remember: bool = True,
    stats: RunStats | None = None,
) -> RunReport:
    """Run `config` to the end (Ctrl-C and SIGTERM stop it cleanly), showing progress unless `quiet`; then
    print the summary (`summary`) and keep the resume command (`remember`)."""
    stats = stats if stats is not None else RunStats()
    progress = Progress(stats, quiet=quiet, interval=interval, config=config if summary else None)
    with progress, (library_bars_off() if quiet else contextlib.nullcontext()):
        report = run_config(config, stats=stats, notice=progress.notice, handle_signals=True)
    if remember:
        remember_command(config.output, command_line(config))
    if summary:
        progress.summary(report, config)
        if not quiet and report.counts.done:
            progress.say(f"review: pixelmill gallery {shlex.quote(str(config.output))}")
    return report


@contextlib.contextmanager
def library_bars_off() -> Iterator[None]:
    """No third-party progress bars while inside: the environment variables tqdm, datasets and huggingface_hub
    read when they are imported (a variable the user set is left alone), and `datasets`' own switch when it is
    already imported. Restored on the way out (a library first imported inside keeps its bars off)."""
    saved = {name: os.environ.get(name) for name in _QUIET_ENV}
    os.environ.update({name: value for name, value in _QUIET_ENV.items() if saved[name] is None})
    enable_again = None
    if "datasets" in sys.modules:
        import datasets

        if not datasets.are_progress_bars_disabled():
            datasets.disable_progress_bars()
            enable_again = datasets.enable_progress_bars
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
        if enable_again is not None:
            enable_again()
