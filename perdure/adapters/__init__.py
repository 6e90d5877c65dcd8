"""Durable adapters for the Python agent frameworks, each behind an optional extra:

- `perdure.adapters.openai_agents` (`pip install perdure[openai-agents]`): the OpenAI Agents SDK;
- `perdure.adapters.pydantic_ai` (`perdure[pydantic-ai]`): PydanticAI;
- `perdure.adapters.langgraph` (`perdure[langgraph]`): LangGraph.

Inside a perdure run, each model call and each tool call (each node, for LangGraph) becomes a
step: recorded once, replayed after a crash, never made again. A tool that asks for a person's
approval waits on a token of the run (suspended, holding no slot). Outside a run they are plain
calls. See docs/agents.md."""
