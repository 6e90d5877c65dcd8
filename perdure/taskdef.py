"""A task as the runtime calls it: its function, its options and hooks, and its arguments
checked against the signature, encoded for storage and converted back for a call."""

from __future__ import annotations

import functools
import inspect
import reprlib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from perdure import serde, values
from perdure.context import TaskOptions
from perdure.errors import InvalidArguments, SerializationError
from perdure.hooks import Hooks
from perdure.records import Value


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDef:
    """A task function and what is needed to call it from stored arguments."""

    options: TaskOptions
    """Name, retry policy, timeout, codec."""
    fn: Callable[..., Any]
    """The task function."""
    hooks: Hooks = field(default_factory=Hooks)
    """Its own lifecycle hooks (the App's run first)."""
    is_async: bool = field(init=False)
    """True for `async def` tasks (worked out once: every execution asks)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.fn))

    def encode_call(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Value:
        """The arguments of a run, checked and encoded: InvalidArguments, before anything is
        stored, when they do not fit the signature or a worker could not convert them to the
        annotated types (for a trigger, a replay with new arguments, a continue-as-new)."""
        if _exact(self.fn, args, kwargs):
            return self.encode_args(tuple(args), {})
        try:
            given = _call_shape(self.fn)[1].bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(
                f"arguments do not fit task {self.options.name!r}{_call_shape(self.fn)[1]}: {exc}"
            ) from None
        value = self.encode_args(tuple(args), dict(kwargs))
        check_args(self, value, given)
        return value

    def encode_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Value:
        """Encode the arguments (unchecked: see encode_call)."""
        data = values.encode(
            [list(args), kwargs],
            codec=self.options.codec,
            what=f"arguments of task {self.options.name!r}",
            max_size=self.options.max_value_size,
        )
        return Value(codec=str(self.options.codec), data=data, raw_size=len(data))

    def decode_args(
        self, run_id: str, value: Value, *, given: inspect.BoundArguments | None = None
    ) -> tuple[list[Any], dict[str, Any]]:
        """Stored arguments, converted to the parameters' annotated types; InvalidArguments
        (naming the parameter, the type it expects and the one it got) when one cannot be. At
        trigger time (`given`: the arguments as passed) this checks that a worker will be able
        to call the task, before anything is stored."""
        codec = serde.Codec(value.codec)
        what = f"arguments of run {run_id}"
        raw = serde.decode(value.data, codec=codec, what=what)
        args, kwargs = list(raw[0]), dict(raw[1])
        if codec is serde.Codec.PICKLE or _exact(self.fn, args, kwargs):
            return args, kwargs
        hints, signature = _call_shape(self.fn)
        if hints is None:
            return args, kwargs
        bound = signature.bind(*args, **kwargs)
        for name, val in list(bound.arguments.items()):
            param = bound.signature.parameters[name]
            if name in hints and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                if type(val) is hints[name]:
                    continue  # (an int for an int, a str for a str: nothing to convert)
                try:
                    bound.arguments[name] = serde.convert(val, hints[name], what=name)
                except SerializationError as exc:
                    got = given.arguments.get(name, val) if given is not None else val
                    raise InvalidArguments(
                        f"task {self.options.name!r}: parameter {name!r} expects "
                        f"{_type_name(hints[name])}, got {type(got).__name__} "
                        f"{reprlib.repr(got)} ({exc.__cause__ or exc})"
                    ) from None
        return list(bound.args), dict(bound.kwargs)


def check_args(task: TaskDef, value: Value, given: inspect.BoundArguments) -> None:
    """At trigger time: InvalidArguments unless a worker will be able to convert the encoded
    arguments `value` to the task's annotated types (`given`: the arguments as passed)."""
    hints, _signature = _call_shape(task.fn)
    if hints is None or value.codec == serde.Codec.PICKLE:
        return
    if all(type(val) is hints.get(name, type(val)) for name, val in given.arguments.items()):
        return  # each is of its annotated class already: nothing a worker must convert
    task.decode_args("(trigger)", value, given=given)


def _type_name(type_: Any) -> str:
    return type_.__name__ if isinstance(type_, type) else repr(type_).replace("typing.", "")


def _exact(fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Whether `args` fill every parameter of `fn`, all plain (no default, no *args, no
    keyword-only), each with a value of its annotated class already: nothing to bind, check or
    convert (the common call, on every trigger and every execution)."""
    plain = _plain_parameters(fn)
    return (
        plain is not None
        and not kwargs
        and len(args) == len(plain)
        and all(hint is None or type(arg) is hint for arg, hint in zip(args, plain, strict=True))
    )


@functools.lru_cache(maxsize=1024)
def _plain_parameters(fn: Callable[..., Any]) -> tuple[Any, ...] | None:
    """The annotated class (None: no annotation) of each of `fn`'s parameters when they are all
    plain positional-or-keyword ones without defaults and its hints resolve; else None."""
    hints, signature = _call_shape(fn)
    if hints is None:
        return None
    plain = []
    for name, param in signature.parameters.items():
        if param.kind is not param.POSITIONAL_OR_KEYWORD or param.default is not param.empty:
            return None
        plain.append(hints.get(name))
    return tuple(plain)


@functools.lru_cache(maxsize=1024)
def _call_shape(fn: Callable[..., Any]) -> tuple[dict[str, Any] | None, inspect.Signature]:
    """A task function's type hints (None when they cannot be resolved) and signature, worked
    out once: every run's arguments are converted with them."""
    try:
        hints: dict[str, Any] | None = typing.get_type_hints(fn)
    except Exception:
        hints = None
    return hints, inspect.signature(fn)


def task_return_type(fn: Callable[..., Any]) -> Any:
    """Type a task's result decodes to."""
    return serde.return_type(fn)
