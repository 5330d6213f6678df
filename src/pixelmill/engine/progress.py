"""What a user sees while a run goes: a live line on a terminal (rich), one plain line every few seconds
otherwise, notices as they come, and a summary at the end."""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pixelmill.engine.stats import RunStats

if TYPE_CHECKING:
    from pixelmill.api import RunReport


class Progress:
    def __init__(self, stats: RunStats, *, quiet: bool = False, interval: float | None = None) -> None:
        self.stats = stats
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.interval = interval if interval is not None else (0.5 if self.tty else 10.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Any = None

    def line(self) -> str:
        s = self.stats
        total = f"/{s.total}" if s.total else ""
        spend = s.spent_before + s.spent
        return (
            f"rows {s.rows_done + s.rows_skipped} done, {s.rows_failed} failed{total} | {s.images} images "
            f"({s.images_per_minute():.0f}/min) | {s.in_flight} in flight | ${spend:.4f} | "
            f"{s.rate_limited} x 429, {s.retries} retries"
        )

    def notice(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(f"[yellow]notice:[/yellow] {text}", markup=True, highlight=False)
        else:
            sys.stderr.write(f"pixelmill: notice: {text}\n")

    def __enter__(self) -> Progress:
        if self.quiet:
            return self
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self.line(), console=Console(stderr=True), refresh_per_second=4, transient=True)
            self._live.start()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self._live is not None:
                self._live.update(self.line())
            else:
                sys.stderr.write(f"pixelmill: {self.line()}\n")
                sys.stderr.flush()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._live is not None:
            self._live.stop()
            self._live = None

    def summary(self, report: RunReport, config: Any) -> None:
        c = report.counts
        s = report.stats
        lines = [
            f"{c.rows} rows: {c.done} done, {c.failed} failed, {c.pending} pending; {s.images} images made in "
            f"this run, {s.requests} requests ({s.rate_limited} rate-limited, {s.retries} retried) in "
            f"{s.elapsed():.1f}s",
            f"spent ${s.spent:.4f} in this run, ${s.spent_before + s.spent:.4f} in all",
        ]
        if s.failures:
            lines.append("failures: " + ", ".join(f"{k} {v}" for k, v in sorted(s.failures.items())))
        lines.append(f"output: {report.output}")
        if report.aborted:
            lines.append(f"stopped: {report.aborted}")
        if c.pending or report.aborted:
            lines.append("re-run the same command to continue; done rows are not sent again")
        elif c.failed:
            lines.append("re-run with --retry-failed to try the failed rows again")
        if not self.quiet or report.aborted:
            for line in lines:
                sys.stderr.write(f"pixelmill: {line}\n")


