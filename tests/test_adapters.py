"""The agent framework adapters (perdure.adapters): the OpenAI Agents SDK, PydanticAI and
LangGraph, each with the real library and a fake model (the apps of examples/agents/). An agent
calls the model, a lookup tool, the model again, asks a person's approval of a refund (a token
wait), and answers. Recorded model and tool calls are never made again: not when the run resumes
after its wait (here), not when a worker is SIGKILLed between two model calls (the examples'
demo, run by tests/test_examples.py)."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import perdure
import perdure.testing
from examples.agents._shared import calls
from perdure.adapters._core import APPROVALS
from perdure.records import RunStatus

from .conftest import wait_until


@dataclass(frozen=True)
class Case:
    module: str
    task: str
    calls: list[str]
    """The model and tool calls of an approved run, in order."""
    asked: dict[str, Any]
    """What the run's metadata shows of the approval it waits for."""
    approved: str
    denied: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


REFUND = {"tool": "refund", "arguments": {"order": 7, "amount": 12.5}}
AGENT_CALLS = ["model-call-1", "tool-lookup-7", "model-call-2", "tool-refund-7", "model-call-3"]
CASES = {
    "openai-agents": Case(
        "examples.agents.openai_support",
        "openai-support",
        AGENT_CALLS,
        REFUND,
        "answer: order 7 shipped; refunded 12.5 on order 7",
        "answer: order 7 shipped; too much",
    ),
    "pydantic-ai": Case(
        "examples.agents.pydantic_support",
        "pydantic-support",
        AGENT_CALLS,
        REFUND,
        "answer: order 7 shipped; refunded 12.5 on order 7",
        "answer: order 7 shipped; too much",
    ),
    "langgraph": Case(
        "examples.agents.langgraph_support",
        "langgraph-support",
        ["model-call-1", "tool-lookup-7", "model-call-2"],
        {"interrupt": {"refund": 12.5, "order": 7}},
        "answer: order 7 shipped; refunded 12.5",
        "answer: order 7 shipped; no refund",
    ),
}


@pytest.fixture
def calls_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "calls.log"
    monkeypatch.setenv("PERDURE_EXAMPLE_CALLS", str(log))
    monkeypatch.delenv("PERDURE_EXAMPLE_CRASH_POINT", raising=False)
    return log


async def _asked(handle: perdure.RunHandle[Any]) -> dict[str, Any]:
    """Once the run waits for a person: what its metadata shows of the one approval."""
    await wait_until(lambda: _waiting(handle), timeout=60)
    (entry,) = (await handle.metadata())[APPROVALS]
    assert isinstance(entry, dict)
    return entry


async def _waiting(handle: perdure.RunHandle[Any]) -> bool:
    return await handle.status() is RunStatus.WAITING


@pytest.mark.parametrize("framework", sorted(CASES))
async def test_an_agent_waits_for_approval_and_makes_no_recorded_call_again(
    framework: str, tmp_path: Path, calls_log: Path
) -> None:
    """The run suspends at the approval with what is asked in its metadata; approved, it runs
    from the top again on resume, and every model and tool call before the wait replays."""
    case = CASES[framework]
    module = case.load()
    async with perdure.testing.harness(module.app, tmp_path) as harness:
        handle = await harness.app.get_task(case.task).trigger("where is order 7?")
        entry = await _asked(handle)
        assert {k: v for k, v in entry.items() if k != "token"} == case.asked
        await handle.complete_token(entry["token"], {"approved": True})
        assert await handle.result(timeout=60) == case.approved
        assert (await handle.metadata())[APPROVALS] == []
    assert [what for what, _pid in calls(calls_log)] == case.calls


@pytest.mark.parametrize("framework", sorted(CASES))
async def test_a_denied_approval_reaches_the_agent(
    framework: str, tmp_path: Path, calls_log: Path
) -> None:
    """Denied, the refund is never made: the agent hears the denial (its message) and answers."""
    case = CASES[framework]
    module = case.load()
    async with perdure.testing.harness(module.app, tmp_path) as harness:
        handle = await harness.app.get_task(case.task).trigger("where is order 7?")
        entry = await _asked(handle)
        await handle.complete_token(entry["token"], {"approved": False, "message": "too much"})
        assert await handle.result(timeout=60) == case.denied
    made = [what for what, _pid in calls(calls_log)]
    assert "tool-refund-7" not in made
    assert made.count("model-call-1") == 1


async def test_outside_a_run_the_adapters_are_the_frameworks_own(calls_log: Path) -> None:
    """Called outside any run, nothing is recorded or awaited: the agents stop at the approval
    as each framework does (interruptions, deferred tool requests, an interrupt)."""
    openai = CASES["openai-agents"].load()
    pydantic = CASES["pydantic-ai"].load()
    graph = CASES["langgraph"].load()
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.memory import InMemorySaver

    from perdure.adapters import langgraph, openai_agents, pydantic_ai

    result = await openai_agents.run(openai.support_agent, "where is order 7?")
    assert [item.name for item in result.interruptions] == ["refund"]
    answer = await pydantic_ai.run(pydantic.support_agent, "where is order 7?")
    assert [call.tool_name for call in answer.output.approvals] == ["refund"]
    saved = graph.support_graph.copy({"checkpointer": InMemorySaver()})
    config: RunnableConfig = {"configurable": {"thread_id": "t1"}}
    state = await langgraph.run(saved, {"messages": ["where is order 7?"]}, config=config)
    assert [i.value for i in state["__interrupt__"]] == [{"refund": 12.5, "order": 7}]
    made = [what for what, pid in calls(calls_log) if pid == os.getpid()]
    agent = ["model-call-1", "tool-lookup-7", "model-call-2"]
    assert made == [*agent, *agent, "model-call-1", "tool-lookup-7"]


async def test_a_streamed_model_call_is_recorded_and_replayed(tmp_path: Path) -> None:
    """Runner.run_streamed through a durable agent: the model's stream is recorded as one step
    and, when the run resumes after a durable sleep, replayed event for event — the scripted
    model, which has one answer only, is not asked again."""
    from agents import Agent, Runner, set_tracing_disabled
    from agents.testing import ScriptedModel, assistant_message

    from perdure.adapters.openai_agents import durable

    set_tracing_disabled(True)
    model = ScriptedModel([[assistant_message("streamed hello")]])
    agent = durable(Agent(name="streamer", model=model))
    app = perdure.App("streaming")

    @app.task(name="stream")
    async def stream() -> list[str]:
        result = Runner.run_streamed(agent, "hi")
        kinds = [event.type async for event in result.stream_events()]
        await perdure.sleep(60)  # the run leaves and comes back: the agent runs again
        return [str(result.final_output), *sorted(set(kinds))]

    async with perdure.testing.harness(app, tmp_path) as harness:
        handle = await stream.trigger()
        await wait_until(lambda: _waiting(handle), timeout=60)
        await harness.advance(61)
        final, *kinds = await handle.result(timeout=60)
    assert final == "streamed hello"
    assert "raw_response_event" in kinds
    assert len(model.calls) == 1


async def test_a_wrapped_langgraph_node_that_interrupts_runs_again_as_a_new_step(
    tmp_path: Path,
) -> None:
    """interrupt() inside a node wrapped with `node`: the interrupt is not recorded as the
    node's outcome (no failed step, no retry); the node runs again when the graph resumes and
    gets the answer; the harness's replay check passes."""
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt

    from perdure.adapters import langgraph

    class State(TypedDict, total=False):
        asked: int
        answer: str

    entered: list[str] = []

    @langgraph.node(name="ask")
    def ask(state: State) -> State:
        entered.append("ask")
        return {"answer": str(interrupt("your name?"))}

    builder = StateGraph(State)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    graph = builder.compile()
    app = perdure.App("interrupting")

    @app.task(name="ask")
    async def ask_task() -> str:
        state = await langgraph.run(graph, {"asked": 1})
        return str(state["answer"])

    async with perdure.testing.harness(app, tmp_path) as harness:
        handle = await ask_task.trigger()
        entry = await _asked(handle)
        assert entry["interrupt"] == "your name?"
        await handle.complete_token(entry["token"], "ana")
        assert await handle.result(timeout=60) == "ana"
        journal = await harness.app.store.load_journal(handle.id)
        steps = [entry for entry in journal if entry.name == "node:ask"]
    assert [e.status.value for e in steps] == ["completed"]
    assert entered == ["ask", "ask", "ask"]  # asked; on resume: replayed to it, then answered
