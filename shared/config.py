"""Settings, read from the environment by a cached `get_settings()`, never at import time.

Groups carry their own env prefixes (``CHORDLINE_TURN_MAX_MESSAGE_CHARS`` and so on); the
connection URLs and API keys use the names every deployment tool already knows
(``DATABASE_URL``, ``REDIS_URL``, ``OPENAI_API_KEY``, ``COHERE_API_KEY``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


class DatabaseSettings(BaseSettings):
    """Connection pool per process. Stages hold a connection only for their short writes."""

    model_config = SettingsConfigDict(env_prefix="CHORDLINE_DB_", extra="ignore")

    pool_size: int = Field(default=10, ge=1, le=200)
    max_overflow: int = Field(default=20, ge=0, le=500)


class KbSettings(BaseSettings):
    """Knowledge-base ingestion and search limits."""

    model_config = SettingsConfigDict(env_prefix="CHORDLINE_KB_", extra="ignore")

    chunk_chars: int = Field(default=800, ge=100, le=20_000)
    max_file_bytes: int = Field(default=5_000_000, ge=1)
    max_query_chars: int = Field(default=2000, ge=1)
    exact_search_below: int = Field(default=20_000, ge=0)  # tenants smaller than this: exact scan
    ef_search: int = Field(default=100, ge=10, le=1000)
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
    result_expires_s: int = Field(default=86_400, ge=60)
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


class ProviderSettings(BaseSettings):
    """Which model providers are active. With no keys set, everything runs offline."""

    model_config = SettingsConfigDict(extra="ignore")

    openai_api_key: SecretStr | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    cohere_api_key: SecretStr | None = Field(default=None, alias="COHERE_API_KEY")
    cohere_base_url: str | None = Field(default=None, alias="COHERE_BASE_URL")
    # "simulated" draws stage latencies from the design's ranges (benchmarks, fault tests).
    mode: Literal["auto", "offline", "simulated"] = Field(
        default="auto", alias="CHORDLINE_PROVIDERS"
    )
    simulated_error_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, alias="CHORDLINE_SIMULATED_ERROR_RATE"
    )
    simulated_latency_scale: float = Field(
        default=1.0, ge=0.0, le=100.0, alias="CHORDLINE_SIMULATED_LATENCY_SCALE"
    )


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
    """Flower listens on loopback only; chordline's gate (shared/flower_gate.py) serves its
    UI with basic auth and, on a separate private port, nothing but its /metrics."""

    model_config = SettingsConfigDict(env_prefix="CHORDLINE_FLOWER_", extra="ignore")

    basic_auth: SecretStr | None = Field(default=None, alias="FLOWER_BASIC_AUTH")
    upstream_port: int = Field(default=5566, ge=1, le=65535)
    ui_host: str = "127.0.0.1"
    ui_port: int = Field(default=5555, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=5556, ge=1, le=65535)


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

    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    turn: TurnSettings = Field(default_factory=TurnSettings)
    kb: KbSettings = Field(default_factory=KbSettings)
    celery: CelerySettings = Field(default_factory=CelerySettings)
    providers: ProviderSettings = Field(default_factory=ProviderSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    flower: FlowerSettings = Field(default_factory=FlowerSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    @field_validator("database_url")
    @classmethod
    def _use_psycopg3(cls, url: str | None) -> str | None:
        """Accept the URL forms deploy tools hand out and point SQLAlchemy at psycopg 3."""
        if url is None or url == "":
            return None
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @field_validator("redis_url")
    @classmethod
    def _empty_is_unset(cls, url: str | None) -> str | None:
        return url or None

    @model_validator(mode="after")
    def _production_needs_real_services(self) -> Settings:
        if self.environment == "production" and (not self.database_url or not self.redis_url):
            raise ValueError(
                "CHORDLINE_ENV=production needs DATABASE_URL and REDIS_URL; the embedded "
                "servers are for development and tests only"
            )
        return self


@functools.cache
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings, after the environment changed (tests, embedded start)."""
    get_settings.cache_clear()
