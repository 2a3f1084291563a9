"""The turn recorder's batches close on time, whatever the rate of finished turns."""

from __future__ import annotations

import threading
import time

from shared.metrics import TurnRecorder


def test_a_batch_closes_after_linger_even_while_turns_keep_trickling_in() -> None:
    # 20 turns/s, well below the batch size per linger: with the linger applied to each
    # get instead of to the batch, the batch would stay open until the trickle stops.
    recorder = TurnRecorder(batch=200, linger_s=0.3)
    stop = threading.Event()

    def trickle() -> None:
        n = 0
        while not stop.is_set() and n < 100:
            recorder._queue.put(f"turn-{n}")
            n += 1
            time.sleep(0.05)

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        began = time.monotonic()
        ids = recorder._next_batch()
        took = time.monotonic() - began
    finally:
        stop.set()
        feeder.join(timeout=5)
    assert took < 1.0, f"the batch stayed open {took:.1f} s"
    assert 2 <= len(ids) < 200 and ids[0] == "turn-0"


def test_a_full_batch_closes_at_once() -> None:
    recorder = TurnRecorder(batch=5, linger_s=10.0)
    for n in range(7):
        recorder._queue.put(f"turn-{n}")
    began = time.monotonic()
    assert recorder._next_batch() == [f"turn-{n}" for n in range(5)]
    assert time.monotonic() - began < 1.0
    assert recorder._queue.qsize() == 2  # the rest waits for the next batch
