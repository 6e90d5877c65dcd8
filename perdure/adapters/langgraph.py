"""LangGraph, durable: in a perdure run each node wrapped with `node` is a step, so a crashed
graph resumes where it was and never runs a finished node's work again; an `interrupt()` in a
node waits on a token of the run (suspended, holding no slot) and resumes the graph with the
answer.

    from langgraph.graph import StateGraph
    from perdure.adapters import langgraph as durable_graph

    builder.add_node("research", durable_graph.node(research))   # an LLM call: a step
    builder.add_node("review", review)                           # calls interrupt(): task code
    graph = builder.compile()

    @app.task()
    async def write(topic: str) -> dict:
        return await durable_graph.run(graph, {"topic": topic})

The graph's checkpoints live in the run: in a run, `run` gives the graph a checkpointer of its
own (`RunSaver`, in memory, thread = the run's id, in place of one it was compiled with), and
perdure's journal — each node's recorded update, each interrupt's recorded answer — is what
survives a crash: a resumed run replays the graph to where it was without running a node
again. Needs
`pip install perdure[langgraph]`."""

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, cast, overload

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.errors import GraphBubbleUp
from langgraph.pregel import Pregel
from langgraph.types import Command

import perdure
from perdure.adapters._core import as_step, ask, in_run
from perdure.context import current
from perdure.retry import Retry

__all__ = ["RunSaver", "node", "run"]

_SERDE = JsonPlusSerializer(allowed_msgpack_modules=None)


class RunSaver(InMemorySaver):
    """The checkpoints of a graph run inside a perdure run: kept in memory for the run's
    execution, rebuilt by replay when the run resumes elsewhere."""


class _Bubble(BaseException):
    """Carries LangGraph's own control flow (an interrupt, a Command to a parent graph) out of
    a node's step without the step recording it as the node's outcome."""

    def __init__(self, exc: GraphBubbleUp) -> None:
        super().__init__()
        self.exc = exc


NodeFunction = Callable[..., Awaitable[Any]]


@overload
def node(fn: Callable[..., Any], /) -> NodeFunction: ...
@overload
def node(
    *, name: str | None = None, retry: Retry | None = None
) -> Callable[[Callable[..., Any]], NodeFunction]: ...


def node(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    retry: Retry | None = None,
) -> Any:
    """A LangGraph node (a function of the state, and of `config` if it takes it; sync or
    async) whose call is the step `node:<name>` of the run: its update is recorded (LangGraph's
    own serializer: messages, pydantic models, dataclasses) and replayed, never recomputed. A
    node that calls `interrupt()` may be wrapped too: the interrupt is not recorded, and the
    node runs again, as a new step, when the graph resumes. `@node` or `node(fn, name=…)`."""

    def wrap(fn: Callable[..., Any]) -> NodeFunction:
        label = f"node:{name or getattr(fn, '__name__', 'node')}"
        takes_config = "config" in inspect.signature(fn).parameters
        is_async = inspect.iscoroutinefunction(fn)

        async def run_node(state: Any, config: RunnableConfig) -> Any:
            kwargs = {"config": config} if takes_config else {}

            async def call() -> Any:
                try:
                    update = await fn(state, **kwargs) if is_async else fn(state, **kwargs)
                except GraphBubbleUp as exc:
                    raise _Bubble(exc) from None
                kind, data = _SERDE.dumps_typed(update)
                return [kind, data]

            try:
                kind, data = await as_step(label, call, retry=retry)
            except _Bubble as bubble:
                raise bubble.exc from None
            return _SERDE.loads_typed((kind, data))

        run_node.__name__ = getattr(fn, "__name__", "node")
        return run_node

    return wrap if fn is None else wrap(fn)


async def run(
    graph: Pregel[Any, Any, Any, Any],
    input: Any,
    *,
    config: RunnableConfig | None = None,
    interrupt_timeout: float | None = None,
    **options: Any,
) -> Any:
    """`graph.ainvoke(input, config)`, durable; returns the graph's output. In a run, each
    interrupt waits (suspended) on a token of the run named `interrupt:<id>`, listed with the
    interrupt's value in the run's metadata under "perdure.approvals"; the token's data resumes
    the graph (`Command(resume=data)`). WaitTimeout after `interrupt_timeout` seconds. Outside a
    run, the output of the first invocation (its interrupts, if any, under "__interrupt__")."""
    ctx = current()
    config = cast(RunnableConfig, dict(config or {}))
    if ctx is not None:
        config["configurable"] = {"thread_id": ctx.run.id, **config.get("configurable", {})}
        # the journal is the graph's memory in a run: a checkpointer of its own would hold
        # what a crashed execution did past the journal, and a resume would start from there
        graph = graph.copy({"checkpointer": RunSaver()})
    output = await graph.ainvoke(input, config, version="v2", **options)
    while output.interrupts and in_run():
        answers: dict[str, Any] = {}
        for interrupt in output.interrupts:
            token = f"interrupt:{perdure.uuid4().hex[:12]}"  # recorded: the same on replay
            about = {"interrupt": interrupt.value}
            answers[interrupt.id] = await ask(token, about, timeout=interrupt_timeout)
        resume: Command[Any] = Command(
            resume=answers if len(answers) > 1 else next(iter(answers.values()))
        )
        output = await graph.ainvoke(resume, config, version="v2", **options)
    if output.interrupts:
        return {"__interrupt__": output.interrupts, **(output.value or {})}
    return output.value
