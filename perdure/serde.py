"""Serialisation of arguments, step results and task results (msgspec msgpack; pickle on opt-in)."""

from __future__ import annotations

import functools
import pickle
from enum import StrEnum
from typing import Any

import msgspec

from perdure.errors import PayloadTooLarge, SecretLeakError, SerializationError
from perdure.secrets import Secret, check_for_leaks


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


def encode(value: Any, *, codec: Codec, what: str, max_size: int | None = None) -> bytes:
    """Encode `value`; `what` names it in errors ("step 'fetch' result"). Over `max_size`
    bytes it is refused with PayloadTooLarge."""
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
    if max_size is not None and len(data) > max_size:
        raise PayloadTooLarge(
            f"{what} is {len(data):,} bytes encoded, over the limit of {max_size:,} bytes "
            "(PERDURE_MAX_VALUE_SIZE); keep large data outside the journal and return a "
            "reference to it, or raise the limit"
        )
    check_for_leaks(data, what)
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
