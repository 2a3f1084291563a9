"""A steady background load of turns from several tenants and conversations."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter

from shared.client import enqueue_turn

MESSAGES = (
    "Does Halyard have a REST API and webhooks for stock changes?",
    "How much does the Growth plan cost?",
    "We run three warehouses and lose track of pallets.",
    "Is customer data encrypted at rest?",
    "Can it connect to our on-prem SAP R/3 system over RFC?",
    "Write a summary email for my CFO",
    "Our scanners stopped syncing since this morning, please help",
    "Hello there, we are evaluating tools",
)


class Load(threading.Thread):
    """Enqueues ``rate`` turns per second until halted; remembers what was accepted."""

    def __init__(self, tenants: list[str], *, rate: float, seed: int) -> None:
        super().__init__(name="fault-load", daemon=True)
        self.tenants, self.rate = tenants, rate
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.accepted: list[str] = []
        self.refused: Counter[str] = Counter()
        self.lock = threading.Lock()
        # A few long conversations (turns queue behind each other) among many short ones.
        self.regulars = [f"regular-{uuid.uuid4().hex[:8]}" for _ in range(4)]

    def conversation(self) -> str:
        if self.rng.random() < 0.25:
            return self.rng.choice(self.regulars)
        return f"c-{uuid.uuid4().hex[:12]}"

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.halt.is_set():
            self.send(self.rng.choice(MESSAGES), fresh=False)
            next_at += 1.0 / self.rate
            self.halt.wait(max(0.0, next_at - time.monotonic()))

    def send(self, message: str, *, tenant: str | None = None, fresh: bool = True) -> str | None:
        """One turn; an error at the door (Postgres down) means it was not accepted.

        ``fresh``: in a conversation of its own, so it never waits behind another turn.
        """
        conversation = f"c-{uuid.uuid4().hex[:12]}" if fresh else self.conversation()
        try:
            turn_id = enqueue_turn(tenant or self.rng.choice(self.tenants), conversation, message)
        except Exception as exc:
            with self.lock:
                self.refused[type(exc).__name__] += 1
            return None
        with self.lock:
            self.accepted.append(turn_id)
        return turn_id

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)
