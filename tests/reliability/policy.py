"""The retry policy as a test oracle: given the faults a row's requests met (from the emulator's log), what the
policy says the row must end as and how many requests it may make.

The oracle walks the sequence the way DESIGN 2.7 and `engine/retry.py`'s documentation state the policy, not by
calling the engine's code: a 429 is retried (bounded by the deadline only); a 5xx up to `max_retries` times; a
call that may have been billed is retried at most `max_billed_retries` times (and counts as a transient retry
too): an answer that arrived broken (truncated, malformed, invalid base64; kind `transient`) or a request sent
whose answer never came (a client timeout while the server holds it, a reset; kind `unknown_outcome`); a refusal
is recorded at once; auth and quota errors stop the run, leaving the row pending.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

RATE = ("rate_limit", "rate_limit_no_header")
TRANSIENT = ("server_error", "bad_gateway", "unavailable", "gateway_timeout")
BILLED = ("truncated", "malformed", "invalid_base64")
UNANSWERED = ("timeout", "reset")  # the client gives up first (its timeout is shorter than the fault's hold)
MAYBE_BILLED = BILLED + UNANSWERED  # each one charged at its reservation: `pixelmill.unanswered.calls`
REFUSED = ("moderation", "prompt_blocked", "image_safety", "no_image", "text_only")
FATAL = {"auth": "auth", "quota": "quota"}


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str  # done | failed | pending (a fatal error stopped the run) | incomplete (a retry is missing)
    kind: str | None  # the error kind the row must record
    requests: int  # how many requests the policy makes for this sequence


def verdict(faults: list[str | None], *, max_retries: int = 5, max_billed_retries: int = 1) -> Verdict:
    transient = billed = 0
    for i, fault in enumerate(faults):
        sent = i + 1
        if fault is None:
            return Verdict("done", None, sent)
        if fault in RATE:
            continue
        if fault in MAYBE_BILLED:
            billed += 1
            if billed > max_billed_retries:
                return Verdict("failed", "unknown_outcome" if fault in UNANSWERED else "transient", sent)
        if fault in TRANSIENT or fault in MAYBE_BILLED:
            transient += 1
            if transient > max_retries:
                return Verdict("failed", "transient", sent)
            continue
        if fault in REFUSED:
            return Verdict("failed", "refused", sent)
        if fault in FATAL:
            return Verdict("pending", FATAL[fault], sent)
        raise AssertionError(f"the oracle does not know fault {fault!r}")
    return Verdict("incomplete", None, len(faults))


IMAGE_ENDPOINTS = ("generations", "edits", "generateContent")


def requests_by_prompt(emu: Any) -> dict[str, list[Any]]:
    """The emulator's image requests grouped by prompt (every test row has its own), in arrival order."""
    out: dict[str, list[Any]] = defaultdict(list)
    for record in sorted(emu.records(endpoint=lambda e: e in IMAGE_ENDPOINTS), key=lambda r: r.seq):
        out[record.prompt].append(record)
    return out
