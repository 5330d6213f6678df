"""A resumed run checks that the rows done earlier still have their image files, before it counts them as done.

A file deleted, cut short (a disk that filled up under another program, a copy that stopped) or overwritten
since the run wrote it would otherwise stay "done" for ever: a re-run and `--retry-failed` would send nothing
while the output names a missing or broken file. So each chunk of rows read is checked (`FileCheck.scan`, in a
worker thread): one stat per file against the byte size the journal recorded when the file was written
(writing/store.py `check_files`); with `--verify-images`, each image is also decoded (Pillow's `verify`).

A step whose files are broken is made again (`FileCheck.apply`): its result is forgotten but what it cost is
kept (the budget and `cost_usd` count the repeat, which the user's disk caused), and so are the later steps of the
row that read its output (their images were made from the file that is gone). With `--report-broken` the row
stays done and only says which files are broken (`pixelmill.broken_files`), for the user to restore them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pixelmill.config import StepConfig
from pixelmill.writing.journal import Journal, StepState
from pixelmill.writing.store import check_files

BROKEN_KEY = "broken_files"


@dataclass(slots=True)
class FileCheck:
    rundir: Path
    steps: list[StepConfig]
    decode: bool = False  # --verify-images
    report_only: bool = False  # --report-broken
    remade: int = 0  # row-steps made again in this run
    reported: int = 0  # row-steps left done with broken files (--report-broken)
    _readers: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The later steps that read each step's output (as input images or mask): made again along with it.
        for i, step in enumerate(self.steps):
            self._readers[step.name] = [
                later.name for later in self.steps[i + 1:]
                if step.out_field in (later.image_field, later.mask_field)
            ]

    def scan(self, states: dict[str, dict[int, StepState]]) -> dict[tuple[str, int], list[str]]:
        """The broken files of every done (step, entry) in `states`, and an empty list for those that were
        reported broken before and are whole again. Blocking: one stat per file (a decode with `decode`)."""
        found: dict[tuple[str, int], list[str]] = {}
        for step, by_slot in states.items():
            for slot, state in by_slot.items():
                if state.status != "done":
                    continue
                sizes = state.info.get("sizes")
                broken = check_files(self.rundir, state.outputs, sizes if isinstance(sizes, dict) else {},
                                     decode=self.decode)
                if broken or BROKEN_KEY in state.info:
                    found[(step, slot)] = broken
        return found

    def apply(self, journal: Journal, slot: int, states: dict[str, StepState],
              found: dict[tuple[str, int], list[str]]) -> list[str]:
        """Act on what `scan` found for one row (its entry `slot`, its `states` by step, updated in place): make
        the broken steps again (and the steps that read them), or with `report_only` mark them. Returns a line
        per broken step, for the user."""
        lines: list[str] = []
        redo: set[str] = set()
        for step in self.steps:
            name = step.name
            state = states.get(name)
            broken = found.get((name, slot))
            if state is None or state.status != "done":
                continue
            if name in redo or (broken and not self.report_only):
                reason = broken or [f"it reads the output of a step made again ({', '.join(sorted(redo))})"]
                # Forgotten, except what it cost: spend across resumes (and --max-cost) still counts it.
                states[name] = StepState(attempts=state.attempts, cost=state.cost,
                                         info={"remade": {"because": reason[:10], "cost_usd_before": state.cost}})
                journal.save(name, slot, states[name])
                self.remade += 1
                redo.add(name)
                redo.update(self._readers[name])
            elif broken:  # --report-broken: the row stays done and says which files are broken
                state.info[BROKEN_KEY] = broken
                journal.save(name, slot, state)
                self.reported += 1
            elif broken is not None:  # reported broken before, whole again (restored by the user)
                state.info.pop(BROKEN_KEY, None)
                journal.save(name, slot, state)
            if broken:
                lines.append(f"step {name!r}: {', '.join(broken[:3])}{' ...' if len(broken) > 3 else ''}")
        return lines
