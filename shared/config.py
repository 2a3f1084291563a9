"""Settings, read from the environment by a cached `get_settings()`, never at import time.

Groups carry their own env prefixes (``CHORDLINE_TURN_MAX_MESSAGE_CHARS`` and so on); the
connection URLs and API keys use the names every deployment tool already knows
(``DATABASE_URL``, ``REDIS_URL``, ``OPENAI_API_KEY``, ``COHERE_API_KEY``).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import InvalidSetting

Environment = Literal["development", "test", "production"]


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


class TurnSettings(BaseSettings):
    """Limits applied at the door, before anything is written or enqueued."""

    model_config = SettingsConfigDict(env_prefix="CHORDLINE_TURN_", extra="ignore")

    max_message_chars: int = Field(default=8000, ge=1, le=1_000_000)
    max_id_chars: int = Field(default=128, ge=8, le=512)
    # A turn whose current stage has not finished this long after it began is re-driven
    # by the sweeper from its last durable stage (see CelerySettings for the bound).
    stage_deadline_s: float = Field(default=15.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    budget_s: float = Field(default=10.0, gt=0)
    # enqueue_turn reads a tenant's topology and in-flight policy at most this often per
    # process: a settings change made in another process applies within this time.
    tenant_settings_ttl_s: float = Field(default=2.0, ge=0, le=300)
    # Turns in flight the whole fleet takes before it admits a tenant only up to its fair
    # share (this / tenants with turns in flight): a flooding tenant cannot crowd the others
    # out. None: no fleet limit, only each tenant's own (shared/admission.py).
    fleet_max_in_flight: int | None = Field(default=None, ge=1, le=1_000_000)


class DatabaseSettings(BaseSettings):
    """Connection pool per process. Stages hold a connection only for their short writes."""

    model_config = SettingsConfigDict(env_prefix="CHORDLINE_DB_", extra="ignore")

    pool_size: int = Field(default=10, ge=1, le=200)
    max_overflow: int = Field(default=20, ge=0, le=500)
    # libpq's connect_timeout: a Postgres that does not answer (a firewalled or mistyped
    # host) fails a connection attempt after this long instead of the OS's minutes.
    connect_timeout_s: int = Field(default=5, ge=2, le=300)


class KbSettings(BaseSettings):
    """Knowledge-base ingestion and search limits."""

    model_config = SettingsConfigDict(env_prefix="CHORDLINE_KB_", extra="ignore")

    chunk_chars: int = Field(default=800, ge=100, le=20_000)
    max_file_bytes: int = Field(default=5_000_000, ge=1)
    max_query_chars: int = Field(default=2000, ge=1)
    exact_search_below: int = Field(default=20_000, ge=0)  # tenants smaller than this: exact scan
    # Recall over speed: 95% of the exact top 10 for a large tenant (see kb bench).
    ef_search: int = Field(default=500, ge=10, le=1000)
    embed_batch: int = Field(default=64, ge=1, le=2048)
    # `kb ingest` on the queue stops waiting when no document finished for this long.
    queue_idle_timeout_s: float = Field(default=120.0, gt=0)


class CelerySettings(BaseSettings):
    """Worker-side Celery tuning. Every value is explained in workers/app.py.

    Recovery bound: a task whose worker died is handed out again once the visibility timeout
    has passed (checked every ``unacked_restore_interval_s``), and a turn whose messages
    Redis lost entirely is re-driven by the sweeper at most ``stage_deadline_s`` +
    ``sweeper_interval_s`` after its stage began. The defaults keep both under 30 s:
    visibility 20 s + restore check 2 s, and stage deadline 15 s + sweep 5 s.
    """

    model_config = SettingsConfigDict(env_prefix="CHORDLINE_CELERY_", extra="ignore")

    soft_time_limit_s: int = Field(default=12, ge=1)
    hard_time_limit_s: int = Field(default=15, ge=2)
    visibility_timeout_s: int = Field(default=20, ge=3)
    unacked_restore_interval_s: float = Field(default=2.0, gt=0)
    # Chord header results are read once, seconds after they are written; an hour keeps
    # Redis's memory at about an hour of turns (a day held ~10 GB at 25 turns/s).
    result_expires_s: int = Field(default=3_600, ge=60)
    max_deliveries: int = Field(default=5, ge=1)
    sweeper_interval_s: float = Field(default=5.0, gt=0)
    relay_interval_s: float = Field(default=2.0, gt=0)

    @property
    def max_retry_countdown_s(self) -> float:
        """A retry waits reserved on its worker; it must end before Redis hands it out again."""
        return float(self.visibility_timeout_s - self.hard_time_limit_s)

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> CelerySettings:
        if self.soft_time_limit_s >= self.hard_time_limit_s:
            raise ValueError("soft_time_limit_s must be below hard_time_limit_s")
        if self.visibility_timeout_s <= self.hard_time_limit_s:
            raise ValueError(
                "visibility_timeout_s must exceed hard_time_limit_s, or Redis redelivers "
                "tasks that are still running"
            )
        return self


LATENCY_KINDS = {"uniform": 2, "normal": 2, "lognormal": 2, "fixed": 1}
LATENCY_FORMS = "LOW-HIGH, uniform:LOW:HIGH, normal:MEAN:SD, lognormal:MEDIAN:SIGMA or fixed:MS"


def parse_latency_spec(spec: str) -> tuple[str, tuple[float, ...]]:
    """``"400-800"`` -> ``("uniform", (400.0, 800.0))``; ValueError naming the forms."""
    text = spec.strip().lower()
    if ":" not in text and "-" in text.lstrip("-"):
        text = "uniform:" + text.replace("-", ":", 1)
    kind, _, rest = text.partition(":")
    try:
        numbers = tuple(float(part) for part in rest.split(":")) if rest else ()
    except ValueError:
        numbers = ()
    if LATENCY_KINDS.get(kind) != len(numbers) or any(n < 0 for n in numbers):
        raise ValueError(f"{spec!r} is not a latency distribution; use {LATENCY_FORMS} (ms >= 0)")
    if kind == "uniform" and numbers[0] > numbers[1]:
        raise ValueError(f"{spec!r}: LOW must not exceed HIGH")
    return kind, numbers


SIMULATED_STAGES = ("orchestrator", "retrieval", "agent")
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
COHERE_DEFAULT_BASE_URL = "https://api.cohere.com"
# Vector sizes of the OpenAI embedding models; others need CHORDLINE_OPENAI_EMBEDDING_DIM.
KNOWN_OPENAI_EMBEDDING_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


class ProviderSettings(BaseSettings):
    """Which model providers are active, and how calls to them are bounded.

    With no keys set, everything runs offline. With OPENAI_API_KEY set, the chat stages
    (orchestrator, agents) and the embeddings use OpenAI or any OpenAI-compatible server at
    OPENAI_BASE_URL; with COHERE_API_KEY set, reranking uses Cohere. Each stage can be
    pinned with CHORDLINE_CHAT_PROVIDER / _EMBEDDING_PROVIDER / _RERANK_PROVIDER. Model
    names per stage are tenant settings (``models.*``), except the embedding model, which
    the knowledge base's vectors depend on and which is therefore one per deployment.
    """

    model_config = SettingsConfigDict(extra="ignore")

    openai_api_key: SecretStr | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    cohere_api_key: SecretStr | None = Field(default=None, alias="COHERE_API_KEY")
    cohere_base_url: str | None = Field(default=None, alias="COHERE_BASE_URL")
    # "simulated" draws stage latencies from distributions (benchmarks, fault tests).
    mode: Literal["auto", "offline", "simulated"] = Field(
        default="auto", alias="CHORDLINE_PROVIDERS"
    )
    chat_provider: Literal["auto", "openai", "local"] = Field(
        default="auto", alias="CHORDLINE_CHAT_PROVIDER"
    )
    embedding_provider: Literal["auto", "openai", "local"] = Field(
        default="auto", alias="CHORDLINE_EMBEDDING_PROVIDER"
    )
    rerank_provider: Literal["auto", "cohere", "local"] = Field(
        default="auto", alias="CHORDLINE_RERANK_PROVIDER"
    )
    openai_embedding_model: str = Field(
        default="text-embedding-3-small", min_length=1, alias="CHORDLINE_OPENAI_EMBEDDING_MODEL"
    )
    # Vector size. Needed for models chordline does not know; for text-embedding-3-* it
    # is also sent as ``dimensions`` to get shortened vectors.
    openai_embedding_dim: int | None = Field(
        default=None, ge=1, le=16_000, alias="CHORDLINE_OPENAI_EMBEDDING_DIM"
    )
    openai_embed_batch: int = Field(
        default=128, ge=1, le=2048, alias="CHORDLINE_OPENAI_EMBED_BATCH"
    )
    openai_max_reply_tokens: int = Field(
        default=600, ge=16, le=32_000, alias="CHORDLINE_OPENAI_MAX_REPLY_TOKENS"
    )
    # Every call is bounded: per attempt by these timeouts, in total by the turn's budget.
    # (The SDKs' own defaults, 600 s / 300 s and 2 retries, are off: chordline retries.)
    # A header stage stuck on one attempt still leaves the agent half of a 10 s budget.
    connect_timeout_s: float = Field(
        default=2.0, gt=0, le=60, alias="CHORDLINE_PROVIDER_CONNECT_TIMEOUT_S"
    )
    request_timeout_s: float = Field(
        default=5.0, gt=0, le=300, alias="CHORDLINE_PROVIDER_REQUEST_TIMEOUT_S"
    )
    ingest_budget_s: float = Field(
        default=60.0, gt=0, le=3600, alias="CHORDLINE_PROVIDER_INGEST_BUDGET_S"
    )
    max_attempts: int = Field(default=3, ge=1, le=10, alias="CHORDLINE_PROVIDER_MAX_ATTEMPTS")
    backoff_base_s: float = Field(
        default=0.25, gt=0, le=60, alias="CHORDLINE_PROVIDER_BACKOFF_BASE_S"
    )
    backoff_max_s: float = Field(
        default=4.0, gt=0, le=600, alias="CHORDLINE_PROVIDER_BACKOFF_MAX_S"
    )
    # Requests and tokens per minute per provider and model, shared by every worker
    # (shared/providers/limits.py): "openai/gpt-4o-mini=500rpm:200000tpm,cohere/x=1000rpm".
    provider_limits: str = Field(default="", alias="CHORDLINE_PROVIDER_LIMITS")
    # The share of each limit that re-scoring leaves to live turns.
    live_reserve: float = Field(
        default=0.2, ge=0.0, lt=1.0, alias="CHORDLINE_PROVIDER_LIVE_RESERVE"
    )
    simulated_error_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, alias="CHORDLINE_SIMULATED_ERROR_RATE"
    )
    simulated_error_kind: Literal["transient", "permanent"] = Field(
        default="transient", alias="CHORDLINE_SIMULATED_ERROR_KIND"
    )
    simulated_error_stages: str = Field(
        default=",".join(SIMULATED_STAGES), alias="CHORDLINE_SIMULATED_ERROR_STAGES"
    )
    simulated_latency_scale: float = Field(
        default=1.0, ge=0.0, le=100.0, alias="CHORDLINE_SIMULATED_LATENCY_SCALE"
    )
    # Typical model-API stage times, as distributions in milliseconds (see LATENCY_FORMS).
    simulated_orchestrator_ms: str = Field(
        default="uniform:400:800", alias="CHORDLINE_SIMULATED_ORCHESTRATOR_MS"
    )
    simulated_retrieval_ms: str = Field(
        default="uniform:300:700", alias="CHORDLINE_SIMULATED_RETRIEVAL_MS"
    )
    simulated_agent_ms: str = Field(
        default="uniform:1000:2000", alias="CHORDLINE_SIMULATED_AGENT_MS"
    )

    @field_validator("openai_api_key", "cohere_api_key", mode="before")
    @classmethod
    def _blank_key_is_unset(cls, key: object) -> object:
        return None if isinstance(key, str) and not key.strip() else key

    @field_validator("openai_base_url", "cohere_base_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None or not url.strip():
            return None
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {url[:60]!r}")
        return url

    @field_validator("simulated_orchestrator_ms", "simulated_retrieval_ms", "simulated_agent_ms")
    @classmethod
    def _latency_spec(cls, spec: str) -> str:
        parse_latency_spec(spec)
        return spec

    @field_validator("provider_limits")
    @classmethod
    def _provider_limits(cls, text: str) -> str:
        from shared.limit_spec import parse_limits

        parse_limits(text)
        return text.strip()

    @field_validator("simulated_error_stages")
    @classmethod
    def _known_stages(cls, stages: str) -> str:
        names = [s.strip() for s in stages.split(",") if s.strip()]
        unknown = sorted(set(names) - set(SIMULATED_STAGES))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; choose from {list(SIMULATED_STAGES)}")
        return ",".join(names)

    @model_validator(mode="after")
    def _consistent(self) -> ProviderSettings:
        for url, key, url_name, key_name in (
            (self.openai_base_url, self.openai_api_key, "OPENAI_BASE_URL", "OPENAI_API_KEY"),
            (self.cohere_base_url, self.cohere_api_key, "COHERE_BASE_URL", "COHERE_API_KEY"),
        ):
            if url and key is None:
                raise ValueError(
                    f"{url_name} is set but {key_name} is not: set {key_name} (any non-empty "
                    f"value for a server that needs none) or unset {url_name}"
                )
        for setting, choice, needed, key in (
            ("CHORDLINE_CHAT_PROVIDER", self.chat_provider, "openai", self.openai_api_key),
            (
                "CHORDLINE_EMBEDDING_PROVIDER",
                self.embedding_provider,
                "openai",
                self.openai_api_key,
            ),
            ("CHORDLINE_RERANK_PROVIDER", self.rerank_provider, "cohere", self.cohere_api_key),
        ):
            if choice != needed:
                continue
            if self.mode != "auto":
                raise ValueError(
                    f"{setting}={choice} contradicts CHORDLINE_PROVIDERS={self.mode}; "
                    "use CHORDLINE_PROVIDERS=auto for real providers"
                )
            if key is None:
                key_name = "OPENAI_API_KEY" if needed == "openai" else "COHERE_API_KEY"
                raise ValueError(f"{setting}={choice} needs {key_name}")
        if (
            self.stage_backend("embedding") == "openai"
            and self.openai_embedding_dim is None
            and self.openai_embedding_model not in KNOWN_OPENAI_EMBEDDING_DIMS
        ):
            raise ValueError(
                f"the vector size of embedding model {self.openai_embedding_model!r} is not "
                "known: set CHORDLINE_OPENAI_EMBEDDING_DIM"
            )
        if self.backoff_base_s > self.backoff_max_s:
            raise ValueError(
                "CHORDLINE_PROVIDER_BACKOFF_BASE_S must not exceed CHORDLINE_PROVIDER_BACKOFF_MAX_S"
            )
        return self

    def stage_backend(self, stage: Literal["chat", "embedding", "rerank"]) -> str:
        """``"openai"``, ``"cohere"`` or ``"local"``: what serves a stage in this process."""
        if self.mode != "auto":
            return "local"
        choice = {
            "chat": self.chat_provider,
            "embedding": self.embedding_provider,
            "rerank": self.rerank_provider,
        }[stage]
        if choice != "auto":
            return choice
        if stage == "rerank":
            return "cohere" if self.cohere_api_key is not None else "local"
        return "openai" if self.openai_api_key is not None else "local"


class RescoringSettings(BaseSettings):
    """Batch re-scoring: batch sizes, and the per-tenant rate budget it draws model calls from.

    Live traffic comes first: re-scoring gets what is left of ``tenant_calls_per_s`` after the
    tenant's live turns (estimated from their arrivals), and pauses while live messages wait
    on the turn queues or live turns take longer than ``live_latency_limit_s``. A batch task
    gives its worker back after ``batch_slice_s`` and re-enqueues what it has left, so it
    never runs near the visibility timeout.
    """

    model_config = SettingsConfigDict(env_prefix="CHORDLINE_RESCORE_", extra="ignore")

    batch_size: int = Field(default=50, ge=1, le=1000)
    max_turns_per_run: int = Field(default=1_000_000, ge=1)
    batch_slice_s: float = Field(default=8.0, gt=0, le=300)
    tenant_calls_per_s: float = Field(default=100.0, gt=0)
    burst_s: float = Field(default=1.0, gt=0, le=60)
    live_calls_per_turn: float = Field(default=3.0, ge=0)
    live_window_s: float = Field(default=5.0, gt=0, le=300)
    live_backlog_limit: int = Field(default=0, ge=0)
    live_latency_limit_s: float = Field(default=4.0, gt=0)
    live_sample_s: float = Field(default=0.5, gt=0, le=60)


class MetricsSettings(BaseSettings):
    """Prometheus metrics of each worker process, on a private port (workers/metrics.py)."""

    model_config = SettingsConfigDict(env_prefix="CHORDLINE_METRICS_", extra="ignore")

    enabled: bool = True
    host: str = "127.0.0.1"
    # 0: the first free port from port_base on, so that several workers share one host.
    port: int = Field(default=0, ge=0, le=65535)
    port_base: int = Field(default=9800, ge=1024, le=65000)
    port_span: int = Field(default=100, ge=1, le=1000)


class FlowerSettings(BaseSettings):
    """Flower listens on loopback only; chordline's gate (shared/tools/stack/flower_gate.py)
    serves its UI with basic auth and, on a separate private port, nothing but its /metrics."""

    model_config = SettingsConfigDict(env_prefix="CHORDLINE_FLOWER_", extra="ignore")

    basic_auth: SecretStr | None = Field(default=None, alias="FLOWER_BASIC_AUTH")
    upstream_port: int = Field(default=5566, ge=1, le=65535)
    ui_host: str = "127.0.0.1"
    ui_port: int = Field(default=5555, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=5556, ge=1, le=65535)


class WebSettings(BaseSettings):
    """The HTTP API (`chordline web`, shared/api/): where it listens and what it accepts."""

    model_config = SettingsConfigDict(env_prefix="CHORDLINE_WEB_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # A POST's body: a message of CHORDLINE_TURN_MAX_MESSAGE_CHARS in UTF-8 fits with room.
    max_body_bytes: int = Field(default=65_536, ge=1_024, le=16_777_216)
    # Requests per API key per window, counted in Redis (shared by every web process).
    rate_limit: int = Field(default=600, ge=1, le=1_000_000)
    rate_window_s: int = Field(default=60, ge=1, le=3_600)
    # An SSE comment line this often while a reply stream is quiet, so proxies keep it open.
    heartbeat_s: float = Field(default=15.0, gt=0, le=300)
    # A reply stream is closed after this long without its end (the client resumes it).
    stream_timeout_s: float = Field(default=120.0, gt=0, le=3_600)


class TelemetrySettings(BaseSettings):
    """OpenTelemetry spans per stage, off unless enabled (needs the `otel` extra)."""

    model_config = SettingsConfigDict(env_prefix="CHORDLINE_OTEL_", extra="ignore")

    enabled: bool = False
    # otlp: OTLP over HTTP, configured by the standard OTEL_EXPORTER_OTLP_* variables.
    exporter: Literal["otlp", "console"] = "otlp"
    service_name: str = Field(default="chordline", min_length=1, max_length=100)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    environment: Environment = Field(default="development", alias="CHORDLINE_ENV")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    redis_url: str | None = Field(default=None, alias="REDIS_URL")
    data_dir: Path = Field(
        default_factory=lambda: _project_root() / ".chordline", alias="CHORDLINE_DATA_DIR"
    )
    log_format: Literal["json", "console"] = Field(default="json", alias="CHORDLINE_LOG_FORMAT")
    log_level: str = Field(default="INFO", alias="CHORDLINE_LOG_LEVEL")
    # How long an agent's reply tokens may wait to share a round trip to Redis (and one
    # stream entry): the first token of a quiet moment goes out at once.
    stream_tick_ms: float = Field(default=50.0, ge=1, le=1000, alias="CHORDLINE_STREAM_TICK_MS")
    # How long a turn's reply stream stays readable (and resumable) after its last entry.
    stream_ttl_s: int = Field(default=3_600, ge=60, le=7 * 86_400, alias="CHORDLINE_STREAM_TTL_S")

    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    turn: TurnSettings = Field(default_factory=TurnSettings)
    kb: KbSettings = Field(default_factory=KbSettings)
    celery: CelerySettings = Field(default_factory=CelerySettings)
    providers: ProviderSettings = Field(default_factory=ProviderSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    flower: FlowerSettings = Field(default_factory=FlowerSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    web: WebSettings = Field(default_factory=WebSettings)
    rescoring: RescoringSettings = Field(default_factory=RescoringSettings)

    @field_validator("database_url")
    @classmethod
    def _use_psycopg3(cls, url: str | None) -> str | None:
        """Accept the URL forms deploy tools hand out and point SQLAlchemy at psycopg 3."""
        if url is None or not url.strip():
            return None
        return check_database_url(url.strip())

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        if url is None or not url.strip():
            return None
        return check_redis_url(url.strip())

    @model_validator(mode="after")
    def _production_needs_real_services(self) -> Settings:
        if self.environment == "production" and (not self.database_url or not self.redis_url):
            raise ValueError(
                "CHORDLINE_ENV=production needs DATABASE_URL and REDIS_URL; the embedded "
                "servers are for development and tests only"
            )
        return self


DATABASE_URL_FORM = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
REDIS_URL_FORM = "redis://[:PASSWORD@]HOST:PORT/DB"
REDIS_SCHEMES = ("redis", "rediss", "unix")


def masked_url(url: str) -> str:
    """A URL (or a string meant to be one) fit to print: any password replaced by ***."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def check_database_url(url: str) -> str:
    """A PostgreSQL URL as SQLAlchemy reads it (``postgresql+psycopg://``), or ValueError
    naming what is wrong, with any password masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = masked_url(url)
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    try:
        parsed = make_url(url)
        port = parsed.port
    except (ArgumentError, ValueError):
        raise ValueError(f"{shown!r} is not a URL; expected {DATABASE_URL_FORM}") from None
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"{shown!r} is not a PostgreSQL URL; expected {DATABASE_URL_FORM}")
    if parsed.get_driver_name() != "psycopg":
        raise ValueError(
            f"driver {parsed.get_driver_name()!r} is not supported; use postgresql:// "
            "(chordline connects with psycopg 3)"
        )
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} of {shown!r} is not between 1 and 65535")
    return url


def check_redis_url(url: str) -> str:
    """A Redis URL redis-py and Celery accept, or ValueError naming what is wrong."""
    shown = masked_url(url)
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES or not (parts.netloc or parts.path):
        raise ValueError(
            f"{shown!r} is not a Redis URL; expected {REDIS_URL_FORM} "
            f"(schemes {', '.join(REDIS_SCHEMES)})"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the port of {shown!r} is not a number from 1 to 65535") from None
    if port == 0:
        raise ValueError(f"the port of {shown!r} is not a number from 1 to 65535")
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise ValueError(f"database {database!r} of {shown!r} is not a number")
    return url


def _env_name(model: str, field: str) -> str:
    """The environment variable of a settings field, as the error's location names it."""
    groups = {cls.__name__: cls for cls in BaseSettings.__subclasses__()}
    prefix = groups[model].model_config.get("env_prefix", "") if model in groups else ""
    return field if field.isupper() else f"{prefix}{field}".upper()


def invalid_setting(exc: ValidationError) -> InvalidSetting:
    """Pydantic's report on the environment as one line naming the first bad setting."""
    error = exc.errors(include_url=False)[0]
    problem = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:  # a check across settings: its message names them
        named = re.match(r"[A-Z][A-Z0-9_]+", problem)
        invalid = InvalidSetting("", problem)
        invalid.setting = named.group(0) if named else ""
        return invalid
    setting = _env_name(exc.title, str(error["loc"][0]))
    if error["type"] != "value_error" and not re.search("KEY|AUTH|URL", setting):
        problem = f"{problem[:1].lower()}{problem[1:]}; got {error['input']!r}"
    return InvalidSetting(setting, problem)


@functools.cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise invalid_setting(exc) from None


def reset_settings() -> None:
    """Forget the cached settings, after the environment changed (tests, embedded start)."""
    get_settings.cache_clear()
