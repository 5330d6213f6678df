"""Creating a batch once: `POST /v1/batches` (and Gemini's `:batchGenerateContent`) has no idempotency key, so a
create whose answer was lost (a reset, a timeout, a 5xx or a broken body after the provider may have acted) is
never simply sent again. The provider's batches are listed for the name the engine gave it (`BatchWire.find`):
found, it is adopted; not found, the create never took effect and is sent once more. A second failure stands:
the batch stays journaled `uploaded` and the next run looks for it by its name again before creating it
(engine/batch/flow.py `_recover`), exactly as after a kill between the create and its journaling.
"""

from __future__ import annotations

from pixelmill.errors import TransientError
from pixelmill.providers.base import ImageRequest
from pixelmill.providers.batchwire import BatchSummary, BatchWire


async def create_once(wire: BatchWire, file_id: str, request: ImageRequest, name: str) -> tuple[BatchSummary, bool]:
    """The batch created under `name` from `file_id`: (its summary, whether it was found by listing after its
    create's answer was lost). Raises the provider's error when it could not be created."""
    for attempt in range(2):
        try:
            return await wire.create(file_id, request, name), False
        except TransientError:
            found = await wire.find(name, file_id)  # the create may have happened: never a second batch
            if found is not None:
                return found, True
            if attempt:
                raise
    raise AssertionError("unreachable")
