"""A run with a progress display: what the command line, the demo and the DataFlow compatibility layer show
while a run goes on (a live display on a terminal, plain lines otherwise), then the summary and the command that
resumes the run (kept in the journal for `status`), and when images were made the command that reviews them
(`pixelmill gallery`: the page is written on demand, not after every run, since its thumbnails take time)."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from pixelmill.api import RunReport, run_config
from pixelmill.engine.stats import RunStats
from pixelmill.options import command_line
from pixelmill.reports.progress import Progress
from pixelmill.reports.status import remember_command

if TYPE_CHECKING:
    from pixelmill.config import RunConfig


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
    with progress:
        report = run_config(config, stats=stats, notice=progress.notice, handle_signals=True)
    if remember:
        remember_command(config.output, command_line(config))
    if summary:
        progress.summary(report, config)
        if not quiet and report.counts.done:
            progress.say(f"review: pixelmill gallery {shlex.quote(str(config.output))}")
    return report
