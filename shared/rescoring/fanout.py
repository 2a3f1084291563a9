"""Publishing a run's batches to the ``rescoring`` queue: one task per batch, ids only."""

from __future__ import annotations

from collections.abc import Iterable

from shared.contract import rescore_batch_signature
from shared.dispatch import dispatch_app


def publish_batches(run_id: str, batches: Iterable[int]) -> int:
    """Enqueue one task per batch on one broker connection; returns how many were sent."""
    app = dispatch_app()
    sent = 0
    with app.producer_or_acquire() as producer:
        for batch in batches:
            signature = rescore_batch_signature(app, run_id=run_id, batch=batch)
            signature.apply_async(producer=producer)
            sent += 1
    return sent
