"""Beat's sign of life: the sweeper task it schedules writes a Redis key with a TTL.

Beat runs the stuck-turn sweeper every ``CHORDLINE_CELERY_SWEEPER_INTERVAL_S`` on the
``maintenance`` queue; each run stores the time in ``SWEEPER_HEARTBEAT_KEY``, which expires
after a few missed runs. `chordline doctor` reads it: a missing key means beat is not
running, or no maintenance worker takes its tasks, so stuck turns are not recovered.
"""

from __future__ import annotations

import time

import redis

from shared.config import get_settings

SWEEPER_HEARTBEAT_KEY = "chordline:heartbeat:sweeper"
MISSED_RUNS = 3
MIN_TTL_S = 15


def heartbeat_ttl_s() -> int:
    """How long a heartbeat counts: a few sweeper intervals, and never under 15 s."""
    return max(MIN_TTL_S, round(MISSED_RUNS * get_settings().celery.sweeper_interval_s))


def record_sweeper_heartbeat(client: redis.Redis) -> None:
    client.set(SWEEPER_HEARTBEAT_KEY, f"{time.time():.3f}", ex=heartbeat_ttl_s())


def last_sweeper_heartbeat(client: redis.Redis) -> float | None:
    """The time of the last sweep, or None if there was none within the TTL."""
    value = client.get(SWEEPER_HEARTBEAT_KEY)
    try:
        return float(str(value)) if value is not None else None
    except ValueError:
        return None
