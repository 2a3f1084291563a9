"""The schema's migrations (alembic, in the repository's ``migrations/``): bringing a
database to the latest revision, and which revision that is."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from shared.config import get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"


def alembic_config(database_url: str | None = None) -> Config:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate() -> None:
    """Bring the schema to the latest revision (idempotent)."""
    command.upgrade(alembic_config(get_settings().database_url), "head")


def schema_heads() -> set[str]:
    """The latest revision(s) the migrations define."""
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())
