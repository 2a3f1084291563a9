"""Queue ``ingest``: one knowledge-base document per task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.contract import INGEST_TASK
from shared.kb.ingest import DocumentSource, ingest_file
from shared.providers.registry import get_providers
from shared.validation import check_slug
from workers.app import app
from workers.base import ChordlineTask, validate


class IngestPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str = Field(max_length=64)
    source: str = Field(max_length=1000)
    path: str = Field(max_length=4096)


@app.task(name=INGEST_TASK, bind=True, base=ChordlineTask)
def ingest_document(self: ChordlineTask, /, **payload: Any) -> dict[str, Any]:
    ref: IngestPayload = validate(IngestPayload, payload)
    check_slug("tenant", ref.tenant_id)
    try:
        outcome, chunks = ingest_file(
            tenant_id=ref.tenant_id,
            source=DocumentSource(ref.source, Path(ref.path)),
            embedder=get_providers().embedder,
        )
    except ValueError as exc:
        return {"source": ref.source, "outcome": "rejected", "reason": str(exc)}
    return {"source": ref.source, "outcome": outcome, "chunks": chunks}
