"""PydanticAI, durable: in a perdure run each model request and each tool call is a step, so a
crashed agent resumes where it was and never pays for a call twice; a tool that needs approval
(`@agent.tool(requires_approval=True)`) waits on a token of the run.

    from pydantic_ai import Agent
    from perdure.adapters import pydantic_ai as durable_ai

    @app.task()
    async def support(question: str) -> str:
        result = await durable_ai.run(agent, question)
        return result.output

`run(agent, prompt, ...)` takes agent.run's options. The work is done by a PydanticAI
capability, `Durable()`, for those who call agent.run themselves (`capabilities=[Durable()]`
or `Agent(..., capabilities=[Durable()])`); a tool named in `in_task=` runs in the task, not in a
step, so its body may wait or trigger child runs. Needs `pip install perdure[pydantic-ai]`."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from pydantic import TypeAdapter
from pydantic_ai import DeferredToolRequests, DeferredToolResults, ToolDenied
from pydantic_ai.agent.abstract import AbstractAgent
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.messages import ModelResponse, ToolCallPart
from pydantic_ai.models import ModelRequestContext
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tools import RunContext, ToolDefinition

from perdure.adapters._core import MODEL_RETRY, approve, as_step, in_run, plain
from perdure.retry import Retry

__all__ = ["Durable", "run"]

_RESPONSE: TypeAdapter[ModelResponse] = TypeAdapter(ModelResponse)


class Durable(AbstractCapability[Any]):
    """The capability that makes an agent's model requests (`model:<model name>`) and tool
    calls (`tool:<tool name>`) steps of the perdure run it is in (outside a run: nothing)."""

    def __init__(
        self,
        *,
        model_retry: Retry | None = None,
        tool_retry: Retry | None = None,
        in_task: Collection[str] = (),
    ) -> None:
        self.model_retry = model_retry or MODEL_RETRY
        self.tool_retry = tool_retry
        self.in_task = frozenset(in_task)

    async def wrap_model_request(
        self, ctx: RunContext[Any], *, request_context: ModelRequestContext, handler: Any
    ) -> ModelResponse:
        async def call() -> Any:
            response = await handler(request_context)
            return _RESPONSE.dump_python(response, mode="json", by_alias=True)

        name = f"model:{request_context.model.model_name}"
        return _RESPONSE.validate_python(await as_step(name, call, retry=self.model_retry))

    async def wrap_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: Any,
        handler: Any,
    ) -> Any:
        if call.tool_name in self.in_task:
            return await handler(args)

        async def execute() -> Any:
            return plain(await handler(args))

        return await as_step(f"tool:{call.tool_name}", execute, retry=self.tool_retry)


async def run(
    agent: AbstractAgent[Any, Any],
    user_prompt: Any = None,
    *,
    approval_timeout: float | None = None,
    capabilities: Sequence[Any] = (),
    durable: Durable | None = None,
    **options: Any,
) -> AgentRunResult[Any]:
    """`agent.run(user_prompt, ...)`, durable. In a run, tool calls that need approval wait
    (suspended) on the tokens `approve:<tool call id>` of the run, listed in the run's metadata
    under "perdure.approvals"; each answer (true/false or {"approved": …, "message": …})
    approves or denies its call and the agent goes on. For that, the agent's output type must
    admit DeferredToolRequests; `run` adds it when `output_type` is not given. WaitTimeout after
    `approval_timeout` seconds."""
    capability = durable or Durable()
    caps = [capability, *capabilities]
    if "output_type" not in options:
        options["output_type"] = [agent.output_type, DeferredToolRequests]
    result = await agent.run(user_prompt, capabilities=caps, **options)
    while isinstance(result.output, DeferredToolRequests) and result.output.approvals and in_run():
        answers = DeferredToolResults()
        for call in result.output.approvals:
            decision = await approve(
                call.tool_call_id, call.tool_name, call.args, timeout=approval_timeout
            )
            answers.approvals[call.tool_call_id] = (
                True if decision.approved else ToolDenied(decision.message or "denied")
            )
        options.pop("message_history", None)
        result = await agent.run(
            message_history=result.all_messages(),
            deferred_tool_results=answers,
            capabilities=caps,
            **options,
        )
    return result
