"""A PydanticAI agent on a fake model, made durable: see tests/agentapp.py."""

from __future__ import annotations

from typing import Any

from pydantic_ai import Agent as AIAgent
from pydantic_ai.messages import ModelMessage, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.messages import ModelResponse as AIResponse
from pydantic_ai.models.function import AgentInfo, FunctionModel

import perdure
from perdure.adapters import pydantic_ai as durable_ai

from .agentapp import gate, log

app = perdure.App("agents-pydantic")


def _ai_plan(plan: list[tuple[str, dict[str, Any]]]) -> FunctionModel:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> AIResponse:
        outputs = [
            str(part.content)
            for message in messages
            for part in getattr(message, "parts", [])
            if isinstance(part, ToolReturnPart)
        ]
        log(f"model-call-{len(outputs) + 1}")
        if len(outputs) < len(plan):
            name, arguments = plan[len(outputs)]
            return AIResponse(
                parts=[ToolCallPart(name, arguments, tool_call_id=f"call-{len(outputs) + 1}")]
            )
        return AIResponse(parts=[TextPart("answer: " + "; ".join(outputs))])

    return FunctionModel(respond, model_name="fake")


ai_agent = AIAgent(
    _ai_plan([("lookup", {"order": 7}), ("refund", {"order": 7, "amount": 12.5})]),
    instructions="Help the customer.",
)


@ai_agent.tool_plain(name="lookup")
async def ai_lookup(order: int) -> str:
    """Look an order up."""
    log(f"tool-lookup-{order}")
    await gate()
    return f"order {order} shipped"


@ai_agent.tool_plain(name="refund", requires_approval=True)
async def ai_refund(order: int, amount: float) -> str:
    """Refund an order (a person approves it first)."""
    log(f"tool-refund-{order}")
    return f"refunded {amount} on order {order}"


@app.task(name="pydantic-ai-support")
async def pydantic_ai_support(question: str) -> str:
    result = await durable_ai.run(ai_agent, question)
    return str(result.output)
