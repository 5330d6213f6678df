"""What a user sees while a run goes, and when it ends.

- On a terminal: a live display (rich) redrawn a few times a second: a bar of rows done of the total, rows
  failed, images per minute, the time left, spend so far and projected to the end (against the budget), calls
  in flight, 429s and retries; once calls fail, the failed attempts per kind and the latest reason; when more
  than `RATE_LIMITED_SHARE` of the latest calls got 429, what to do about it (`--ipm` / `--rpm`, the rate found).
- Elsewhere (a log file, CI): one plain line every few seconds, with the same failures and advice.
- `quiet`: nothing while running; a short summary at the end (counts, failures grouped, how to continue).
- At the end: the summary `pixelmill status` prints (per step done / failed / pending, spend, calls that may
  have been billed without an answer, failures grouped, how to continue, where the output is), plus this run's
  own numbers (its unanswered calls among them), and the 429 advice when more than `RATE_LIMITED_SHARE` of its
  requests got 429; `quiet` keeps the unanswered line.

The engine streams its source and never counts it, so the total comes from a background thread that counts
the source's rows cheaply (`status.count_rows`: lines of a JSONL, Parquet metadata); until it has, the display
shows no bar and no time left.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from pixelmill.engine.stats import RunStats

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from pixelmill.api import RunReport
    from pixelmill.config import RunConfig

# Above this share of 429s among the latest calls (or the run's requests, in its summary), the run sends faster
# than the provider allows and the display says what to do. Below it, 429s are the learned pace's probes
# (engine/ratefinder.py: well under 2% of the requests) or a passing burst.
RATE_LIMITED_SHARE = 0.2
LAST_FAILURE_CHARS = 200  # of the latest failure's message, on the display


class Progress:
    def __init__(
        self,
        stats: RunStats,
        *,
        quiet: bool = False,
        interval: float | None = None,
        config: RunConfig | None = None,
        stream: TextIO | None = None,
        console: Console | None = None,
        tty: bool | None = None,
    ) -> None:
        self.stats = stats
        self.quiet = quiet
        self.config = config
        self.stream = stream if stream is not None else sys.stderr
        self.console = console
        self.tty = tty if tty is not None else (console.is_terminal if console is not None else _isatty(self.stream))
        self.interval = interval if interval is not None else (0.25 if self.tty else 5.0)
        self.budget = config.limits.max_cost if config is not None else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter: threading.Thread | None = None
        self._live: Any = None

    # ------------------------------------------------------------ numbers
    def processed(self) -> int:
        """Rows finished one way or the other, earlier runs' included."""
        s = self.stats
        return s.rows_done + s.rows_failed + s.rows_skipped

    def eta(self) -> float | None:
        """Seconds left at this run's pace, or None while the total or the pace is unknown."""
        s = self.stats
        worked = s.rows_done + s.rows_failed
        elapsed = s.elapsed()
        if s.total is None or worked == 0 or elapsed <= 0:
            return None
        return max(0, s.total - self.processed()) * elapsed / worked

    def spent(self) -> float:
        return self.stats.spent_before + self.stats.spent

    def projected(self) -> float | None:
        """Spend at the end of the run at this run's cost per row, or None while unknown."""
        s = self.stats
        worked = s.rows_done + s.rows_failed
        if s.total is None or worked == 0:
            return None
        return self.spent() + s.spent / worked * max(0, s.total - self.processed())

    def line(self) -> str:
        """The plain one-line form (logs, non-terminals)."""
        s = self.stats
        total = f"/{s.total}" if s.total is not None else ""
        eta = self.eta()
        projected = self.projected()
        parts = [
            f"rows {self.processed()}{total} ({s.rows_done + s.rows_skipped} done, {s.rows_failed} failed)",
            f"{s.images} images, {s.images_per_minute():.0f}/min",
            f"{s.in_flight} in flight" + _jobs(s),
            f"ETA {_duration(eta)}" if eta is not None else "ETA ?",
            f"${self.spent():.4f} spent" + (f", ~${projected:.4f} projected" if projected is not None else "")
            + (f" of ${self.budget:.2f}" if self.budget is not None else ""),
            f"{s.rate_limited} x 429, {s.retries} retries",
        ]
        failures = self.failures()
        if failures:
            parts.append(failures)
        advice = self.rate_advice()
        if advice:
            parts.append(advice)
        return " | ".join(parts)

    def failures(self) -> str | None:
        """Failed attempts per kind and the latest reason: why calls fail, while it happens."""
        s = self.stats
        if not s.failed_attempts:
            return None
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(s.failed_attempts.items(), key=lambda kv: -kv[1]))
        last = s.last_failure or ""
        if len(last) > LAST_FAILURE_CHARS:
            last = last[: LAST_FAILURE_CHARS - 3] + "..."
        return f"failed attempts: {kinds}; last: {last}"

    def rate_advice(self) -> str | None:
        """When many of the latest calls got 429: their share and what to do."""
        share = self.stats.recent_429_share()
        if share is None or share <= RATE_LIMITED_SHARE:
            return None
        return f"{share:.0%} of the latest calls got 429: {limit_advice(self.stats, self.config)}"

    def renderable(self) -> RenderableType:
        """The live display: a bar, then two lines of numbers."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        s = self.stats
        done = s.rows_done + s.rows_skipped
        head = Table.grid(padding=(0, 1))
        head.add_column()
        head.add_column()
        if s.total:
            bar = ProgressBar(total=float(s.total), completed=float(self.processed()), width=40)
            pct = 100.0 * self.processed() / s.total
            head.add_row(bar, Text(f"{pct:3.0f}%  rows {self.processed()}/{s.total}"))
        else:
            head.add_row(Text("rows"), Text(f"{self.processed()} (counting the source...)"))
        eta = self.eta()
        projected = self.projected()
        rows = Text.assemble(
            (f"{done} done", "green"), "  ",
            (f"{s.rows_failed} failed", "red" if s.rows_failed else ""), "  ",
            f"{s.images} images  {s.images_per_minute():.1f}/min  ",
            f"{s.in_flight} in flight{_jobs(s)}  ",
            f"elapsed {_duration(s.elapsed())}  ETA {_duration(eta) if eta is not None else '?'}",
        )
        money = Text.assemble(
            f"spent ${self.spent():.4f}",
            f"  projected ~${projected:.4f}" if projected is not None else "",
            (f"  budget ${self.budget:.2f}", "yellow" if projected and self.budget and projected > self.budget
             else "") if self.budget is not None else "",
            "  ",
            (f"{s.rate_limited} x 429", "yellow" if s.rate_limited else ""),
            f"  {s.retries} retries",
        )
        lines: list[RenderableType] = [head, rows, money]
        failures = self.failures()
        if failures:
            lines.append(Text(failures, style="red"))
        advice = self.rate_advice()
        if advice:
            lines.append(Text(advice, style="yellow"))
        return Group(*lines)

    # ------------------------------------------------------------ the display's life
    def notice(self, text: str) -> None:
        if self._live is not None:
            try:
                self._live.console.print(f"[yellow]notice:[/yellow] {_markup_escape(text)}", highlight=False)
            except (OSError, ValueError):
                pass  # messages are best effort: a closed terminal or a full disk never stops a run
        else:
            self._say(f"notice: {text}")

    def say(self, *lines: str) -> None:
        """Lines after the summary (best effort, as every line of the display)."""
        self._say(*lines)

    def _say(self, *lines: str) -> None:
        """Write lines to the stream, best effort: a terminal that closed (SIGHUP), a pipe whose reader left or a
        full disk must not end a run or change its exit status."""
        try:
            for line in lines:
                self.stream.write(f"pixelmill: {line}\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> Progress:
        if self.quiet:
            return self
        self._start_counting()
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            console = self.console or Console(file=self.stream)
            self._live = Live(get_renderable=self.renderable, console=console,
                              refresh_per_second=max(1.0, 1.0 / self.interval), transient=True)
            self._live.start()
        else:
            self._thread = threading.Thread(target=self._loop, name="pixelmill-progress", daemon=True)
            self._thread.start()
        return self

    def _start_counting(self) -> None:
        """Count the source's rows in the background, for the bar, ETA and projection."""
        if self.config is None or self.stats.total is not None:
            return
        config = self.config

        def count() -> None:
            from pixelmill.reports.status import count_rows

            total = count_rows(config.source, config.source_format, config.limit)
            if total is not None and self.stats.total is None:
                self.stats.total = total

        self._counter = threading.Thread(target=count, name="pixelmill-count-rows", daemon=True)
        self._counter.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._say(self.line())

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        if self._live is not None:
            with contextlib.suppress(OSError, ValueError):  # a terminal that closed under the display
                self._live.stop()
            self._live = None

    # ------------------------------------------------------------ the end
    def summary(self, report: RunReport, config: RunConfig) -> None:
        """What the run did, as `pixelmill status` says it, with this run's own numbers; shortened to the
        essentials with `quiet` (the reason of a stop is always said)."""
        from pixelmill.errors import PixelmillError
        from pixelmill.reports.status import describe, read_status, unanswered_line

        s = report.stats
        c = report.counts
        this_run = (
            f"this run: {s.images} images from {s.requests} requests ({s.rate_limited} rate-limited, {s.retries} "
            f"retried) in {_duration(s.elapsed())}, {s.images_per_minute():.1f} images/min, ${s.spent:.4f}"
        )
        if s.batch_resubmitted:
            this_run += (f"; {s.batch_resubmitted} row(s) resubmitted after an expired, cancelled or failed "
                         "batch")
        if s.unanswered:
            this_run += f"; {unanswered_line(s.unanswered, s.unanswered_cost).removeprefix('unanswered: ')}"
        try:
            lines = describe(read_status(config.output, rows=c.rows))
        except PixelmillError:  # no journal: nothing was run
            lines = [f"{c.rows} rows: {c.done} done, {c.failed} failed, {c.pending} pending",
                     f"output: {report.output}"]
        if self.quiet:
            lines = _quiet_lines(lines)
        else:
            lines.insert(1, this_run)
            if s.rate_found:  # learned from the provider (engine/ratefinder.py); --rpm/--ipm still cap it
                lines.insert(2, f"rate found: {s.rate_found}")
            if s.requests and s.rate_limited / s.requests > RATE_LIMITED_SHARE:
                lines.insert(2, f"rate limited: {s.rate_limited} of {s.requests} requests got 429: "
                                f"{limit_advice(s, config, found=False)}")
        if report.aborted and not any(report.aborted in line for line in lines):
            # The journal could not keep how the run ended (a full disk): the reason is said all the same.
            lines.insert(1, f"stopped: {report.aborted}")
        self._say(*lines)


def limit_advice(stats: RunStats, config: RunConfig | None, *, found: bool = True) -> str:
    """What to do about many 429s: lower the limits given, or give the provider's; with the rate found so far."""
    limits = config.limits if config is not None else None
    pairs = (("ipm", limits.ipm), ("rpm", limits.rpm)) if limits is not None else ()
    given = [f"--{name} {value:g}" for name, value in pairs if value is not None]
    advice = (f"lower {' / '.join(given)}" if given else
              "set --ipm (images a minute) or --rpm to the provider's limit for this key")
    if found and stats.rate_found:
        advice += f" (rate found so far: {stats.rate_found})"
    return advice


def _quiet_lines(lines: list[str]) -> list[str]:
    """The summary's essentials: the counts, calls that may have been billed, the failures grouped (the lines
    under `failures (...)`), how the run stopped, what to do next and where the output is."""
    from pixelmill.reports.status import ADVICE_LINES

    keep = ("run ", "unanswered:", "rate limited:", "last run: stopped", "to ", "output:", *ADVICE_LINES)
    out: list[str] = []
    in_failures = False
    for line in lines:
        in_failures = line.startswith("failures (") or (in_failures and line.startswith("  "))
        if in_failures or line.startswith(keep):
            out.append(line)
    return out


def _jobs(stats: RunStats) -> str:
    """Remote jobs running at the provider (fal, Replicate, ...): a call in flight that is a submitted job waits
    on the provider's queue, not on this process, and the display says so."""
    return f" ({stats.jobs_live} remote jobs running)" if stats.jobs_live else ""


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _markup_escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
