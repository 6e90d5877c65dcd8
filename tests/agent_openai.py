"""An OpenAI Agents SDK agent on a fake model, made durable: see tests/agentapp.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from agents import Agent, Model, ModelResponse, Usage, function_tool, set_tracing_disabled
from agents.testing import assistant_message, function_call

import perdure
from perdure.adapters import openai_agents as durable_agents

from .agentapp import gate, log, seen_tool_outputs

app = perdure.App("agents-openai")

set_tracing_disabled(True)


class FakeOpenAIModel(Model):
    """Asks for the tools in `plan` one turn each, then answers with what they returned."""

    def __init__(self, plan: list[tuple[str, dict[str, Any]]]) -> None:
        self.plan = plan

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        outputs = seen_tool_outputs(input)
        log(f"model-call-{len(outputs) + 1}")
        if len(outputs) < len(self.plan):
            name, arguments = self.plan[len(outputs)]
            item = function_call(name, json.dumps(arguments), call_id=f"call-{len(outputs) + 1}")
        else:
            item = assistant_message("answer: " + "; ".join(outputs))
        return ModelResponse(output=[item], usage=Usage(requests=1), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError


@function_tool
async def lookup(order: int) -> str:
    """Look an order up."""
    log(f"tool-lookup-{order}")
    await gate()
    return f"order {order} shipped"


@function_tool(needs_approval=True)
async def refund(order: int, amount: float) -> str:
    """Refund an order (a person approves it first)."""
    log(f"tool-refund-{order}")
    return f"refunded {amount} on order {order}"


support_agent = Agent(
    name="support",
    instructions="Help the customer.",
    model=FakeOpenAIModel([("lookup", {"order": 7}), ("refund", {"order": 7, "amount": 12.5})]),
    tools=[lookup, refund],
)


@app.task(name="openai-support")
async def openai_support(question: str) -> str:
    result = await durable_agents.run(support_agent, question)
    return str(result.final_output)
