"""The emulator's shared state: everything that outlives one request, in one object that every route reads.

`EmulatorState` owns the config (replaced as a whole on every change, so a reader on another thread sees the old
config or the new one, never half of each), the model table, the request log and its sequence numbers, the
in-flight counts, the seeded fault dice and the count of admitted requests that `fail_after` reads, the rate-limit
window, the image cache, the files that DALL·E `url` answers point at, the secret that signs Gemini thought
signatures, the remote jobs of fal, Replicate and BFL (`jobs.JobQueue`) and the media their results name, and
the batch APIs' store (`batches.BatchStore`: files on disk, batches, counters). Route modules import this module;
they never import the server (which builds the app around one state) nor each other.
"""

from __future__ import annotations

import secrets
from typing import Any

from pixelmill.models.table import ModelTable, builtin_table
from pixelmill.testing.batches import BatchStore
from pixelmill.testing.config import EmulatorConfig
from pixelmill.testing.faults import FaultDice, Markers
from pixelmill.testing.images import ImageCache
from pixelmill.testing.jobs import JobQueue
from pixelmill.testing.log import RequestLog, RequestRecord
from pixelmill.testing.media import MediaStore
from pixelmill.testing.ratelimit import SlidingWindow

FILES_KEPT = 20_000  # DALL·E url answers: the oldest files are forgotten past this (their URLs then 404)


class EmulatorState:
    def __init__(self, config: EmulatorConfig, table: ModelTable | None = None) -> None:
        self._config = config
        self.table = table or builtin_table()
        self.images = ImageCache()
        self.secret = secrets.token_bytes(32)  # signs Gemini thought signatures
        self.log = RequestLog(config.max_log)
        self.dice = FaultDice(config.seed)
        self.window = SlidingWindow()
        self.seq = 0  # requests received (the log's `seq`)
        self.admitted = 0  # requests that reached the fault draw (what `fail_after` counts)
        self.in_flight = 0
        self.max_in_flight = 0
        self.files: dict[str, tuple[bytes, str]] = {}  # DALL·E url answers: name -> (bytes, mime)
        # Remote jobs, one queue per API (routes install the finisher that builds each API's result), and the
        # media their results point at. fal queues past its concurrency limit; BFL refuses past its own (429).
        self.jobs: dict[str, JobQueue] = {
            "fal": JobQueue(lambda: self._config.fal_concurrency),
            "replicate": JobQueue(lambda: None),
            "bfl": JobQueue(lambda: None),
        }
        self.media = MediaStore()
        self.hf_first_call: dict[str, float] = {}  # HF model or endpoint -> monotonic time of its first call
        self.bfl_spent = 0.0  # credits BFL tasks have cost (against `bfl_credits`)
        self.batches = BatchStore(config.seed)  # batch APIs: files on disk, batches, their counters

    @property
    def config(self) -> EmulatorConfig:
        return self._config

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Validate and install a changed config. A new `seed` restarts the random draws; new rate limits start
        from an empty window; a new `fail_after` counts from zero."""
        new = EmulatorConfig.model_validate({**self._config.model_dump(), **changes})
        if "seed" in changes:
            self.dice.reseed(new.seed)
        if {"rpm", "ipm", "rate_window"} & set(changes):
            self.window.reset()
        if "fail_after" in changes:
            self.admitted = 0
        if "batch_fates" in changes:
            self.batches.fates_used = 0
        if "batch_lost_creates" in changes:
            self.batches.lost_creates = 0
        self.log.resize(new.max_log)
        self._config = new
        return new

    def reset_log(self) -> None:
        """Forget the log, `max_in_flight`, the `fail_after` count, the rate-limit window, the remote jobs and
        their media, the HF cold starts and the BFL credits spent."""
        self.log.clear()
        for queue in self.jobs.values():
            queue.clear()
        self.media.clear()
        self.hf_first_call.clear()
        self.bfl_spent = 0.0
        self.max_in_flight = self.in_flight
        self.admitted = 0
        self.window.reset()

    def check_key(self, present: str | None) -> bool:
        """Whether `present` is an accepted key. Raises nothing; the route picks its API's error."""
        if not present:
            return False
        keys = self._config.api_keys
        return keys is None or present in keys

    def arrived(self, record: RequestRecord) -> None:
        """A request came in: log it and count it in flight."""
        self.log.append(record)
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight

    def job_latency(self, markers: Markers) -> float:
        """A new remote job's run time: the prompt's `[[latency:S]]`, else `job_latency` with its jitter."""
        if markers.latency is not None:
            return markers.latency
        config = self._config
        if config.job_jitter > 0:
            return max(0.0, config.job_latency * (1 + config.job_jitter * (2 * self.dice.uniform() - 1)))
        return config.job_latency

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def keep_file(self, name: str, data: bytes, mime: str) -> None:
        files = self.files
        files[name] = (data, mime)
        while len(files) > FILES_KEPT:
            files.pop(next(iter(files)))
