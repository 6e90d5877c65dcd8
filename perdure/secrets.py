"""Secrets: read at run time from the environment, never serialised, never stored."""

from __future__ import annotations

import os
import threading
from typing import NoReturn

from perdure.errors import ConfigurationError, SecretLeakError

_MIN_SCANNED_LENGTH = 4
_lock = threading.Lock()
_values_in_use: dict[str, str] = {}


class Secret:
    """A secret value. `reveal()` gives the value; it refuses every kind of serialisation."""

    __slots__ = ("_name", "_value")

    def __init__(self, name: str, value: str) -> None:
        self._name = name
        self._value = value

    @property
    def name(self) -> str:
        """The name the secret was read under."""
        return self._name

    def reveal(self) -> str:
        """The secret's value, for the call that needs it (an HTTP header, a client)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self._name!r})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise SecretLeakError(
            f"Secret {self._name!r} cannot be pickled: secrets are never stored. Pass the secret's "
            "name and call perdure.secret(name) where the value is needed."
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._name == self._name

    def __hash__(self) -> int:
        return hash(("perdure.Secret", self._name))


def secret(name: str) -> Secret:
    """Read the secret `name` from the environment of this process (the worker).

    Its value is remembered, so that any byte string perdure is about to store is checked for it.
    """
    value = os.environ.get(name)
    if value is None:
        raise ConfigurationError(
            f"secret {name!r} is not set in this process's environment; export {name}=... "
            "where the worker runs"
        )
    if len(value) >= _MIN_SCANNED_LENGTH:
        with _lock:
            _values_in_use[name] = value
    return Secret(name, value)


def check_for_leaks(data: bytes, what: str) -> None:
    """Raise SecretLeakError when `data` contains the value of a secret in use."""
    if not _values_in_use:
        return
    with _lock:
        items = list(_values_in_use.items())
    for name, value in items:
        if value.encode() in data:
            raise SecretLeakError(
                f"{what} contains the value of secret {name!r}; secrets are never stored. "
                "Return something derived from the secret's result instead, not the secret itself."
            )


def redact(text: str) -> str:
    """`text` with the value of every secret in use replaced by its name: for error messages,
    tracebacks and log lines, which are stored or shown but must not carry secrets."""
    if not _values_in_use:
        return text
    with _lock:
        items = list(_values_in_use.items())
    for name, value in items:
        if value in text:
            text = text.replace(value, f"<secret {name}>")
    return text
