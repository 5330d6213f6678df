"""Progress in a Jupyter notebook (`pixelmill.generate(..., progress=True)`): one HTML display, updated in place.

The same numbers as the terminal display (reports/progress.py: rows done of the total, failures, images per
minute, time left, spend), drawn as an HTML `<progress>` bar and a line of text through IPython's display
protocol, which every notebook front end renders (no widget library needed). The display starts no thread of
its own: the caller updates it, from the thread that waits for the run (the sync API) or from a task on the
notebook's event loop (the async API), and the last update shows how the run ended.
"""

from __future__ import annotations

import html
import sys
from typing import TYPE_CHECKING, Any

from pixelmill.engine.stats import RunStats
from pixelmill.reports.progress import Progress

if TYPE_CHECKING:
    from pixelmill.config import RunConfig

INTERVAL = 0.5  # seconds between two updates


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython is only looked at when already imported)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class NotebookProgress:
    def __init__(self, stats: RunStats, config: RunConfig) -> None:
        self.stats = stats
        self.numbers = Progress(stats, quiet=True, config=config)  # its numbers only: never entered
        self._handle: Any = None

    def show(self) -> None:
        shown = _ipython_display()
        self._handle = shown.display(shown.HTML(self.html()), display_id=True)

    def update(self, *, final: str | None = None) -> None:
        if self._handle is not None:
            self._handle.update(_ipython_display().HTML(self.html(final)))

    def html(self, final: str | None = None) -> str:
        s = self.stats
        total = s.total if s.total is not None else 0
        bar = f'<progress value="{self.numbers.processed()}" max="{max(total, 1)}" style="width:24em"></progress>'
        text = html.escape(final or self.numbers.line())
        return f'<div class="pixelmill-progress">{bar} <code>pixelmill: {text}</code></div>'


def _ipython_display() -> Any:
    """IPython's display module (its functions carry no type annotations)."""
    import importlib

    return importlib.import_module("IPython.display")
