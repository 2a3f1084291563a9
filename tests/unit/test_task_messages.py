"""The shortcut for a hot-path message's argsrepr and kwargsrepr writes what Celery's
``saferepr`` writes, and leaves anything else to it."""

from __future__ import annotations

from typing import Any

import pytest
from celery.utils.saferepr import saferepr

from shared.task_messages import _plain_repr


@pytest.mark.parametrize(
    "value",
    [
        (),
        {},
        {"turn_id": "3e62c258-02b2-4d92-b6d3-9a876de68770"},
        {"turn_id": "3e62c258-02b2-4d92-b6d3-9a876de68770", "retrieve": False},
        {"job_id": 'it\'s "quoted"', "batch": 3, "missing": None},
        ("a", 1, True),
    ],
)
def test_it_writes_what_saferepr_writes(value: Any) -> None:
    assert _plain_repr(value) == saferepr(value, 1024)


@pytest.mark.parametrize(
    "value",
    [
        ([{"stage": "orchestrator"}, {"stage": "researcher"}],),  # the merge's header results
        {"text": "x" * 65},
        {"score": 0.5},
        {str(n): n for n in range(9)},
    ],
)
def test_anything_else_is_left_to_saferepr(value: Any) -> None:
    assert _plain_repr(value) is None
