"""A support agent on PydanticAI, durable: it calls the model, looks the order up (a tool),
calls the model again, asks a person to approve a refund (a tool with requires_approval: the
run waits on a token, holding no worker slot), and answers. A crash anywhere resumes the run
without calling the model again for what it already answered.

    python -m examples.agents.pydantic_support   # the demo: a worker killed mid-run

The demo's model is a FunctionModel that needs no network or key; give the agent a real one
(`Agent("openai:gpt-4.1-mini", ...)`) and nothing else changes. The token to complete is listed
in the run's metadata under perdure.approvals (see examples/agents/openai_support.py).
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import perdure
from examples.agents._shared import crash_point, demo, log
from perdure.adapters import pydantic_ai as durable_ai

app = perdure.App("pydantic-support")


def scripted_model(plan: list[tuple[str, dict[str, Any]]]) -> FunctionModel:
    """A stand-in for an LLM: asks for the tools of `plan` one turn each, then answers with
    what they returned."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        outputs = [
            str(part.content)
            for message in messages
            for part in message.parts
            if isinstance(part, ToolReturnPart)
        ]
        log(f"model-call-{len(outputs) + 1}")
        if len(outputs) < len(plan):
            name, arguments = plan[len(outputs)]
            call = ToolCallPart(name, arguments, tool_call_id=f"call-{len(outputs) + 1}")
            return ModelResponse(parts=[call])
        return ModelResponse(parts=[TextPart("answer: " + "; ".join(outputs))])

    return FunctionModel(respond, model_name="scripted")


support_agent = Agent(
    scripted_model([("lookup", {"order": 7}), ("refund", {"order": 7, "amount": 12.5})]),
    instructions="Help the customer with their order.",
)


@support_agent.tool_plain(name="lookup")
async def lookup(order: int) -> str:
    """Look an order up."""
    log(f"tool-lookup-{order}")
    await crash_point()
    return f"order {order} shipped"


@support_agent.tool_plain(name="refund", requires_approval=True)
async def refund(order: int, amount: float) -> str:
    """Refund an order (a person approves it first)."""
    log(f"tool-refund-{order}")
    return f"refunded {amount} on order {order}"


@app.task(name="pydantic-support")
async def pydantic_support(question: str) -> str:
    result = await durable_ai.run(support_agent, question)
    return str(result.output)


if __name__ == "__main__":
    sys.exit(demo("examples.agents.pydantic_support", app.name, "pydantic-support"))
