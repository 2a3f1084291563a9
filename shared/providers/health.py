"""Does each active provider answer? One cheap call per stage, with a short timeout.

- OpenAI chat (orchestrator, agent, and the agent's reading of the customer's facts):
  ``GET /models`` (free, once for all three), and the stage's model must be listed;
- OpenAI embeddings: one embedding of a one-word text, which also checks the vector size;
- Cohere rerank: one rerank of one one-word document;
- local and simulated providers answer by construction.

Results carry chordline's own error messages, which never contain a key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from shared.config import ProviderSettings
from shared.errors import ChordlineError
from shared.providers.base import Usage
from shared.providers.registry import Providers, StageProvider, build_providers, stage_providers
from shared.schemas import StageModels


@dataclass(frozen=True)
class StageCheck:
    provider: StageProvider
    ok: bool
    detail: str
    elapsed_ms: float


def check_settings(settings: ProviderSettings, *, timeout_s: float) -> ProviderSettings:
    """The same providers, with one attempt each and the doctor's timeout."""
    return settings.model_copy(
        update={"max_attempts": 1, "request_timeout_s": timeout_s, "connect_timeout_s": timeout_s}
    )


def check_stages(
    settings: ProviderSettings, *, models: StageModels, timeout_s: float
) -> list[StageCheck]:
    rows = stage_providers(settings, models)
    try:
        providers = build_providers(check_settings(settings, timeout_s=timeout_s))
    except ChordlineError as exc:
        return [StageCheck(row, False, str(exc), 0.0) for row in rows]
    listed: dict[str, set[str] | ChordlineError] = {}
    return [
        _check_one(row, providers=providers, timeout_s=timeout_s, listed=listed) for row in rows
    ]


def _check_one(
    row: StageProvider,
    *,
    providers: Providers,
    timeout_s: float,
    listed: dict[str, set[str] | ChordlineError],
) -> StageCheck:
    began = time.monotonic()
    deadline = time.time() + timeout_s
    try:
        detail = _probe(row, providers=providers, deadline=deadline, listed=listed)
        ok = True
    except ChordlineError as exc:
        detail, ok = str(exc), False
    return StageCheck(row, ok, detail, (time.monotonic() - began) * 1000)


def _probe(
    row: StageProvider,
    *,
    providers: Providers,
    deadline: float,
    listed: dict[str, set[str] | ChordlineError],
) -> str:
    if row.provider in ("local", "simulated"):
        return "offline: always answers"
    if row.stage in ("orchestrator", "agent", "facts"):
        from shared.providers.openai import OpenAIChatModel

        assert isinstance(providers.chat, OpenAIChatModel)
        if "openai" not in listed:
            try:
                listed["openai"] = providers.chat.available_models(deadline=deadline)
            except ChordlineError as exc:
                listed["openai"] = exc
        models = listed["openai"]
        if isinstance(models, ChordlineError):
            raise models
        if row.model not in models:
            raise ChordlineError(f"answers, but does not offer model {row.model!r}")
        return f"answers; offers {row.model!r}"
    if row.stage == "embedding":
        vector = providers.embedder.embed(["ping"], usage=Usage(), deadline=deadline)[0]
        return f"answers; {len(vector)}-dimensional vectors"
    providers.reranker.rerank(
        query="ping", documents=["pong"], model=row.model, usage=Usage(), deadline=deadline
    )
    return f"answers; reranks with {row.model!r}"
