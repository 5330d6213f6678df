"""Which fault (if any) a request gets, and how long it waits: prompt markers, `fail_after`, seeded chance.

Precedence: a marker in the prompt (`[[fault:NAME]]`, `[[latency:SECONDS]]`) beats `fail_after`, which beats
the random draw. The random draw uses one seeded generator for the whole emulator, so a run with the same
seed and the same request order gets the same faults.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from pixelmill.testing.config import FAULTS, EmulatorConfig

MARKER = re.compile(r"\[\[(fault|latency):([A-Za-z0-9_.\-]+)\]\]")


@dataclass(frozen=True, slots=True)
class Markers:
    fault: str | None = None
    latency: float | None = None
    thoughts: bool = False


NO_MARKERS = Markers()


def read_markers(text: str) -> Markers:
    """The markers in a prompt. Unknown fault names are ignored (a prompt may talk about `[[fault:x]]`)."""
    if "[[" not in text:
        return NO_MARKERS
    fault: str | None = None
    latency: float | None = None
    thoughts = False
    for kind, value in MARKER.findall(text):
        if kind == "fault":
            if value == "thoughts":
                thoughts = True
            elif value in FAULTS:
                fault = value
        else:
            try:
                latency = max(0.0, float(value))
            except ValueError:
                pass
    return Markers(fault, latency, thoughts)


@dataclass(frozen=True, slots=True)
class Decision:
    fault: str | None
    thoughts: bool
    latency: float


class FaultDice:
    """Seeded draws of faults and latencies."""

    def __init__(self, seed: int | None) -> None:
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        self._rng = random.Random(seed)

    def uniform(self) -> float:
        return self._rng.random()

    def choice(self, options: tuple[str, ...]) -> str:
        return options[self._rng.randrange(len(options))]

    def decide(self, config: EmulatorConfig, seq: int, markers: Markers) -> Decision:
        fault = markers.fault
        if fault is None and config.fail_after is not None and seq > config.fail_after:
            fault = config.fail_with
        if fault is None and config.faults:
            roll = self._rng.random()
            acc = 0.0
            for name in FAULTS:
                p = config.faults.get(name, 0.0)
                if p <= 0.0:
                    continue
                acc += p
                if roll < acc:
                    fault = name
                    break
        p_thoughts = config.faults.get("thoughts", 0.0)
        thoughts = markers.thoughts or (p_thoughts > 0.0 and self._rng.random() < p_thoughts)
        if markers.latency is not None:
            latency = markers.latency
        elif config.latency_sigma > 0.0 and config.latency > 0.0:
            latency = config.latency * math.exp(config.latency_sigma * self._rng.gauss(0.0, 1.0))
        else:
            latency = config.latency
        return Decision(fault, thoughts, latency)
