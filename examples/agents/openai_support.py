"""A support agent on the OpenAI Agents SDK, durable: it calls the model, looks the order up
(a tool), calls the model again, asks a person to approve a refund (a tool with
needs_approval: the run waits on a token, holding no worker slot), and answers. A crash
anywhere resumes the run without calling the model again for what it already answered.

    python -m examples.agents.openai_support     # the demo: a worker killed mid-run

The demo's model is a fake that needs no network or key; with a key, give the agent a real
model (`model="gpt-4.1-mini"`) and nothing else changes. In a project of your own:

    perdure worker examples.agents.openai_support:app
    perdure trigger examples.agents.openai_support:app openai-support '["Where is order 7?"]'
    perdure runs show RUN                        # metadata: perdure.approvals lists the token
    perdure tokens complete TOKEN --data '{"approved": true}'
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

from agents import Agent, Model, ModelResponse, Usage, function_tool, set_tracing_disabled
from agents.testing import assistant_message, function_call

import perdure
from examples.agents._shared import crash_point, demo, log, tool_outputs
from perdure.adapters import openai_agents as durable_agents

app = perdure.App("openai-support")
set_tracing_disabled(True)  # the SDK's traces go to OpenAI's servers: none from a demo


class ScriptedSupportModel(Model):
    """A stand-in for an LLM: asks for the tools of `plan` one turn each, then answers with
    what they returned."""

    def __init__(self, plan: list[tuple[str, dict[str, Any]]]) -> None:
        self.plan = plan

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        outputs = tool_outputs(input)
        log(f"model-call-{len(outputs) + 1}")
        if len(outputs) < len(self.plan):
            name, arguments = self.plan[len(outputs)]
            item = function_call(name, json.dumps(arguments), call_id=f"call-{len(outputs) + 1}")
        else:
            item = assistant_message("answer: " + "; ".join(outputs))
        return ModelResponse(output=[item], usage=Usage(requests=1), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("the demo's model does not stream")


@function_tool
async def lookup(order: int) -> str:
    """Look an order up."""
    log(f"tool-lookup-{order}")
    await crash_point()
    return f"order {order} shipped"


@function_tool(needs_approval=True)
async def refund(order: int, amount: float) -> str:
    """Refund an order (a person approves it first)."""
    log(f"tool-refund-{order}")
    return f"refunded {amount} on order {order}"


support_agent = Agent(
    name="support",
    instructions="Help the customer with their order.",
    model=ScriptedSupportModel(
        [("lookup", {"order": 7}), ("refund", {"order": 7, "amount": 12.5})]
    ),
    tools=[lookup, refund],
)


@app.task(name="openai-support")
async def openai_support(question: str) -> str:
    result = await durable_agents.run(support_agent, question)
    return str(result.final_output)


if __name__ == "__main__":
    sys.exit(demo("examples.agents.openai_support", app.name, "openai-support"))
