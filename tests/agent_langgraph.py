"""A LangGraph graph on a fake chat model, made durable: see tests/agentapp.py."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt

import perdure
from perdure.adapters import langgraph as durable_graph

from .agentapp import gate, log

app = perdure.App("agents-langgraph")


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
    await gate()
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
