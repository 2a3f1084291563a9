"""Publishing a run's batches to the ``rescoring`` queue: one task per batch, ids only."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import Field

from shared.contract import RESCORE_BATCH_TASK
from shared.dispatch import dispatch_app
from shared.schemas import Frozen

UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


class RescoreBatchRef(Frozen):
    """The payload of a batch task: which run, which batch of it."""

    run_id: Annotated[str, Field(pattern=UUID_PATTERN)]
    batch: Annotated[int, Field(ge=0, le=10_000_000)]


def publish_batches(run_id: str, batches: Iterable[int]) -> int:
    """Enqueue one task per batch on one broker connection; returns how many were sent."""
    app = dispatch_app()
    sent = 0
    with app.producer_or_acquire() as producer:
        for batch in batches:
            ref = RescoreBatchRef(run_id=run_id, batch=batch)
            app.signature(RESCORE_BATCH_TASK, kwargs=ref.model_dump(), immutable=True).apply_async(
                producer=producer
            )
            sent += 1
    return sent
