"""Serialisation of arguments, step results and task results (msgspec msgpack; pickle on opt-in)."""

from __future__ import annotations

import functools
import pickle
import typing
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import msgspec

from perdure.errors import SecretLeakError, SerializationError
from perdure.secrets import Secret


class Codec(StrEnum):
    """How a stored value was encoded."""

    MSGPACK = "msgpack"
    """msgspec MessagePack; decoded to the annotated type."""
    PICKLE = "pickle"
    """pickle, only for tasks created with serializer="pickle"."""


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Secret):
        raise SecretLeakError(
            f"{obj!r} cannot be serialised: secrets are never stored. Pass the secret's name and "
            "call perdure.secret(name) where the value is needed."
        )
    model_dump = getattr(obj, "model_dump", None)  # pydantic v2 models
    if callable(model_dump):
        # JSON mode: what pydantic itself round-trips (IP addresses, URLs, paths, decimals
        # become strings, which model_validate turns back into their types)
        return model_dump(mode="json")
    raise TypeError(f"Encoding objects of type {type(obj).__qualname__} is unsupported")


def _dec_hook(type_: type, obj: Any) -> Any:
    validate = getattr(type_, "model_validate", None)  # pydantic v2 models
    if callable(validate):
        return validate(obj)
    raise NotImplementedError(type_)


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_untyped_decoder = msgspec.msgpack.Decoder(dec_hook=_dec_hook)


@functools.lru_cache(maxsize=512)
def _decoder(type_: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(type=type_, dec_hook=_dec_hook)


def encode(value: Any, *, codec: Codec, what: str) -> bytes:
    """Encode `value`; `what` names it in errors ("step 'fetch' result"). (What may be stored
    — its size, no secret in it — is perdure.values.encode's to say.)"""
    try:
        if codec is Codec.PICKLE:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            data = _encoder.encode(value)
    except SecretLeakError as exc:
        raise SecretLeakError(f"{what}: {exc}") from None
    except (
        TypeError,
        ValueError,
        OverflowError,
        NotImplementedError,
        pickle.PicklingError,
        AttributeError,
    ) as exc:
        if codec is Codec.PICKLE:
            raise SerializationError(
                f"{what} cannot be pickled: {type(exc).__name__}: {exc}"
            ) from exc
        raise SerializationError(
            f"{what} cannot be serialised: {exc} (in a {type(value).__name__}). Return bytes, "
            "str, numbers, lists, dicts, dataclasses, msgspec.Struct or pydantic models, or opt "
            "in to pickle with @app.task(serializer='pickle')."
        ) from exc
    return data


def decode(data: bytes, *, codec: Codec, type_: Any = Any, what: str) -> Any:
    """Decode `data` into `type_` (Any when the code has no annotation)."""
    try:
        if codec is Codec.PICKLE:
            return pickle.loads(data)
        if type_ is Any:
            return _untyped_decoder.decode(data)
        try:
            decoder = _decoder(type_)
        except TypeError:  # unhashable or unsupported annotation: decode untyped
            return _untyped_decoder.decode(data)
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, pickle.UnpicklingError) as exc:
        raise SerializationError(f"{what} cannot be deserialised: {exc}") from exc


def convert(value: Any, type_: Any, *, what: str) -> Any:
    """Convert an untyped decoded value (an argument) to its annotated type."""
    if type_ is Any:
        return value
    try:
        return msgspec.convert(value, type_, dec_hook=_dec_hook, strict=False)
    except (msgspec.ValidationError, TypeError) as exc:
        raise SerializationError(f"{what} cannot be converted to {type_!r}: {exc}") from exc


def return_type(fn: Callable[..., Any]) -> Any:
    """The annotated return type of `fn`: what its recorded result decodes to (Any when
    missing or unresolvable)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return Any
    return hints.get("return", Any)
