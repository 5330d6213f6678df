"""Every default a user can see, declared once: the command line (`options.py`), pipeline files
(`pipeline.py`), the run configuration (`config.py`) and the Python API all read them from here.

Plain constants, importing nothing of pixelmill's, so that `pixelmill --help` can show them without loading pydantic.
"""

from __future__ import annotations

from pathlib import Path

# The model a provider uses when none is named. None: the provider has no default and needs --model.
DEFAULT_PROVIDER = "openai"
MODEL = "gpt-image-2"  # the default provider's default model (and a pipeline step's without `model`)
DEFAULT_MODEL: dict[str, str | None] = {
    "openai": MODEL,
    "azure": MODEL,
    "openai-compatible": MODEL,
    "gemini": "gemini-3.1-flash-image",
    "emulator": MODEL,
    "diffusers": None,
    "fal": "fal-ai/flux/dev",
    "bfl": "flux-pro-1.1",
}

# The output field a step writes when none is named (the seed documents' names).
DEFAULT_OUTPUT_FIELD = {"generate": "images", "edit": "output_image", "auto": "images"}

# Engine limits (config.Limits).
# Requests (remote jobs: jobs) in flight. 16 suits the job providers too: BFL refuses more than 24 active tasks
# (429, retried), and fal queues what is over an account's limit (2 to 40 running) instead of failing it.
CONCURRENCY = 16
MAX_RETRIES = 5  # retries of transient errors per call; 429s are bounded by the deadline instead
MAX_BILLED_RETRIES = 1  # retries of calls that may have been billed (answer lost or broken)
TIMEOUT = 300.0  # seconds for one request, for a model whose table entry gives no `timeout` of its own
DEADLINE = 600.0  # seconds for one call with its retries and 429 waits, at least ...
DEADLINE_RETRY_ROOM = 60.0  # ... and at least 2 x the timeout + this: room for a retry after a full timeout

# Where a run writes when no --output is given: OUTPUT_ROOT/<input stem>.
OUTPUT_ROOT = Path("pixelmill-out")


def default_model(provider: str) -> str | None:
    """The model `provider` uses when none is named; unknown (third-party) providers get OpenAI's."""
    return DEFAULT_MODEL.get(provider, MODEL)
