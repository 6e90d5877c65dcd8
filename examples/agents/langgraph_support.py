"""A support graph on LangGraph, durable: a research node calls the model, a lookup node
checks the order, a review node asks a person to approve a refund (`interrupt()`: the run waits
on a token, holding no worker slot), and an answer node calls the model again. Each node
wrapped with `durable_graph.node` is a step: a crash anywhere resumes the run without running
a finished node again.

    python -m examples.agents.langgraph_support  # the demo: a worker killed mid-run

The demo's chat model is a fake that needs no network or key; use a real one
(`init_chat_model("openai:gpt-4.1-mini")`) and nothing else changes. The token to complete is
listed in the run's metadata under perdure.approvals, with the interrupt's value.
"""

from __future__ import annotations

import operator
import sys
from typing import Annotated, Any, TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt

import perdure
from examples.agents._shared import crash_point, demo, log
from perdure.adapters import langgraph as durable_graph

app = perdure.App("langgraph-support")


class Ticket(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    notes: Annotated[list[str], operator.add]
    approved: bool


def _chat(text: str, call: str) -> GenericFakeChatModel:
    """A fake chat model that logs `call` and answers `text`, once per invocation."""

    class Logged(GenericFakeChatModel):
        async def ainvoke(self, *args: Any, **kwargs: Any) -> Any:
            log(call)
            return await super().ainvoke(*args, **kwargs)

    return Logged(messages=iter([AIMessage(content=text)] * 100))


@durable_graph.node(name="research")
async def research(state: Ticket) -> Ticket:
    reply = await _chat("order 7 looks late", "model-call-1").ainvoke(state["messages"])
    return {"messages": [reply]}


@durable_graph.node(name="lookup")
async def lookup_node(state: Ticket) -> Ticket:
    log("tool-lookup-7")
    await crash_point()
    return {"notes": ["order 7 shipped"]}


def review(state: Ticket) -> Ticket:
    decision = interrupt({"refund": 12.5, "order": 7})
    return {
        "approved": bool(decision.get("approved")) if isinstance(decision, dict) else bool(decision)
    }


@durable_graph.node(name="answer")
async def answer(state: Ticket) -> Ticket:
    verdict = "refunded 12.5" if state.get("approved") else "no refund"
    reply = await _chat(f"answer: {state['notes'][0]}; {verdict}", "model-call-2").ainvoke(
        state["messages"]
    )
    return {"messages": [reply]}


_builder = StateGraph(Ticket)
_builder.add_node("research", research)
_builder.add_node("lookup", lookup_node)
_builder.add_node("review", review)
_builder.add_node("answer", answer)
_builder.add_edge(START, "research")
_builder.add_edge("research", "lookup")
_builder.add_edge("lookup", "review")
_builder.add_edge("review", "answer")
_builder.add_edge("answer", END)
support_graph = _builder.compile()


@app.task(name="langgraph-support")
async def langgraph_support(question: str) -> str:
    state = await durable_graph.run(support_graph, {"messages": [HumanMessage(question)]})
    return str(state["messages"][-1].content)


if __name__ == "__main__":
    sys.exit(demo("examples.agents.langgraph_support", app.name, "langgraph-support"))
