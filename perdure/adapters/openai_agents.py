"""The OpenAI Agents SDK, durable: in a perdure run each model call and each function tool call
is a step, so a crashed agent resumes where it was and never pays for a call twice; a tool
that needs approval (`@function_tool(needs_approval=True)`) waits on a token of the run.

    from agents import Agent, function_tool
    from perdure.adapters import openai_agents as durable_agents

    @app.task()
    async def support(question: str) -> str:
        result = await durable_agents.run(agent, question)
        return str(result.final_output)

`run(agent, input, ...)` takes Runner.run's options. `durable(agent)` gives the wrapped agent
(models, function tools and handoff agents) for those who call the Runner themselves; mark a
tool whose body is itself workflow code (it waits, triggers child runs) with `in_task(tool)`
so it runs in the task, not in a step. Needs `pip install perdure[openai-agents]`."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any, TypeVar, cast

from agents import Agent, FunctionTool, Model, ModelProvider, RunConfig, Runner, RunResult
from agents.items import ModelResponse, TResponseStreamEvent
from agents.models.multi_provider import MultiProvider
from agents.run_context import TContext
from agents.tool_context import ToolContext
from pydantic import TypeAdapter

from perdure.adapters._core import MODEL_RETRY, approve, as_step, in_run, plain
from perdure.retry import Retry

__all__ = ["DurableModel", "DurableModelProvider", "durable", "in_task", "run"]

A = TypeVar("A", bound=Agent[Any])

_RESPONSE: TypeAdapter[ModelResponse] = TypeAdapter(ModelResponse)
_EVENTS: TypeAdapter[list[TResponseStreamEvent]] = TypeAdapter(list[TResponseStreamEvent])
_IN_TASK = "__perdure_in_task__"


class DurableModel(Model):
    """A model whose calls are steps of the run (`model:<name>`): a recorded response is
    replayed, never asked for again. Streaming records the stream's events and replays them."""

    def __init__(self, model: Model, *, name: str | None = None, retry: Retry | None = None):
        self.model = model
        self.name = name or getattr(model, "model", None) or type(model).__name__
        self.retry = retry or MODEL_RETRY

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        async def call() -> Any:
            response = await self.model.get_response(*args, **kwargs)
            return _RESPONSE.dump_python(response, mode="json", by_alias=True)

        recorded = await as_step(f"model:{self.name}", call, retry=self.retry)
        return _RESPONSE.validate_python(recorded)

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async def call() -> Any:
            events = [event async for event in self.model.stream_response(*args, **kwargs)]
            return _EVENTS.dump_python(events, mode="json", by_alias=True)

        recorded = await as_step(f"model:{self.name}:stream", call, retry=self.retry)
        for event in _EVENTS.validate_python(recorded):
            yield event

    async def close(self) -> None:
        await self.model.close()


class DurableModelProvider(ModelProvider):
    """A provider whose models are DurableModels (for agents that name their model)."""

    def __init__(self, provider: ModelProvider | None = None) -> None:
        self.provider = provider or MultiProvider()

    def get_model(self, model_name: str | None) -> Model:
        model = self.provider.get_model(model_name)
        return model if isinstance(model, DurableModel) else DurableModel(model, name=model_name)

    async def aclose(self) -> None:
        await self.provider.aclose()


def in_task(tool: FunctionTool) -> FunctionTool:
    """Mark `tool` as workflow code: `durable` leaves it out of a step, so its body may wait
    (perdure.wait_for_token, perdure.sleep) or trigger child runs; its own steps are recorded
    as usual. Returns the tool."""
    setattr(tool, _IN_TASK, True)
    return tool


def durable(agent: A, *, tool_retry: Retry | None = None) -> A:
    """A copy of `agent` whose model (when it is a Model), function tools and handoff agents
    are durable; a tool call is the step `tool:<name>` (its output recorded as JSON-like data).
    Agents that name their model are made durable by `run`'s provider."""
    return _durable(agent, tool_retry, {})


def _durable(agent: A, tool_retry: Retry | None, done: dict[int, Agent[Any]]) -> A:
    if id(agent) in done:
        return cast(A, done[id(agent)])
    clone = agent.clone()
    done[id(agent)] = clone
    if isinstance(agent.model, Model) and not isinstance(agent.model, DurableModel):
        clone.model = DurableModel(agent.model)
    clone.tools = [
        _durable_tool(tool, tool_retry) if isinstance(tool, FunctionTool) else tool
        for tool in agent.tools
    ]
    clone.handoffs = [
        _durable(h, tool_retry, done) if isinstance(h, Agent) else h for h in agent.handoffs
    ]
    return cast(A, clone)


def _durable_tool(tool: FunctionTool, retry: Retry | None) -> FunctionTool:
    if getattr(tool, _IN_TASK, False):
        return tool
    invoke = tool.on_invoke_tool

    async def on_invoke_tool(context: ToolContext[Any], arguments: str) -> Any:
        async def call() -> Any:
            return plain(await invoke(context, arguments))

        return await as_step(f"tool:{tool.name}", call, retry=retry)

    wrapped = copy.copy(tool)
    wrapped.on_invoke_tool = on_invoke_tool
    return wrapped


async def run(
    agent: Agent[TContext],
    input: Any,
    *,
    approval_timeout: float | None = None,
    run_config: RunConfig | None = None,
    tool_retry: Retry | None = None,
    **options: Any,
) -> RunResult:
    """`Runner.run(agent, input, ...)`, durable. In a run, a tool call that needs approval
    waits (suspended) on the token `approve:<call id>` of the run, listed in the run's metadata
    under "perdure.approvals"; the answer (true/false or {"approved": …, "message": …}) approves
    or rejects it and the agent goes on. WaitTimeout after `approval_timeout` seconds."""
    config = copy.copy(run_config) if run_config is not None else RunConfig()
    if not isinstance(config.model_provider, DurableModelProvider):
        config.model_provider = DurableModelProvider(config.model_provider)
    if isinstance(config.model, Model) and not isinstance(config.model, DurableModel):
        config.model = DurableModel(config.model)
    agent = durable(agent, tool_retry=tool_retry)
    result = await Runner.run(agent, input, run_config=config, **options)
    while result.interruptions and in_run():
        state = result.to_state()
        for item in result.interruptions:
            decision = await approve(
                str(item.call_id), str(item.name), item.arguments, timeout=approval_timeout
            )
            if decision.approved:
                state.approve(item)
            else:
                state.reject(item, rejection_message=decision.message)
        result = await Runner.run(agent, state, run_config=config, **options)
    return result
