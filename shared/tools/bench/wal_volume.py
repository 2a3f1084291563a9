"""What Postgres writes to its write-ahead log per turn, over a system's rounds.

Every change to a row, and to each index over it, goes to the WAL first, and whatever the
WAL holds is what a replica must receive, an archive keep and a crash recovery replay: WAL
bytes per turn are a cost a deployment pays in disk, network and backup as much as CPU
time is. The first change to a page after a checkpoint logs the whole page (a full-page
image, 8 kB), so where new keys land in an index (see shared/ids.py) shows up here.

Read from ``pg_stat_wal`` (Postgres 14 and later), which counts the whole server: the
bench reads it around each of chordline's rounds, when nothing else of its own writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from shared.db.session import session_scope

_READ = "SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal"


@dataclass(frozen=True)
class WalVolume:
    records: int = 0
    full_page_images: int = 0
    bytes: int = 0

    def __add__(self, other: WalVolume) -> WalVolume:
        return WalVolume(
            self.records + other.records,
            self.full_page_images + other.full_page_images,
            self.bytes + other.bytes,
        )

    def __sub__(self, other: WalVolume) -> WalVolume:
        return WalVolume(
            self.records - other.records,
            self.full_page_images - other.full_page_images,
            self.bytes - other.bytes,
        )

    def per_turn(self, turns: int) -> dict[str, float]:
        """Bytes, full-page images and records per turn, as the bench reports them."""
        if turns <= 0:
            return {}
        return {
            "bytes": round(self.bytes / turns),
            "full_page_images": round(self.full_page_images / turns, 2),
            "records": round(self.records / turns, 1),
        }


def wal_written() -> WalVolume | None:
    """What the server has written to its WAL so far; None where ``pg_stat_wal`` cannot be
    read (a server before Postgres 14)."""
    try:
        with session_scope() as session:
            row = session.execute(text(_READ)).one()
    except SQLAlchemyError:
        return None
    return WalVolume(records=int(row[0]), full_page_images=int(row[1]), bytes=int(row[2]))
