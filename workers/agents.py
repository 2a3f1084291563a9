"""Queue ``agents``: the five specialized agents, one task each."""

from __future__ import annotations

from typing import Any

from shared.contract import AGENT_TASKS
from shared.schemas import Agent
from shared.turn import flow
from workers.app import app
from workers.base import ChordlineTask, run_turn_stage


def _register(agent: Agent) -> Any:
    def answer(self: ChordlineTask, /, **payload: Any) -> Any:
        return run_turn_stage(
            self,
            payload,
            lambda ref, origin: flow.answer(
                ref.turn_id, agent=agent, retrieve=ref.retrieve, origin=origin
            ),
        )

    answer.__name__ = answer.__qualname__ = agent.value
    return app.task(name=AGENT_TASKS[agent], bind=True, base=ChordlineTask, ignore_result=True)(
        answer
    )


discovery = _register(Agent.DISCOVERY)
support = _register(Agent.SUPPORT)
technical_consultant = _register(Agent.TECHNICAL_CONSULTANT)
adaptive_response = _register(Agent.ADAPTIVE_RESPONSE)
content_generator = _register(Agent.CONTENT_GENERATOR)
