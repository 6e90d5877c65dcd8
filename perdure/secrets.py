"""Secrets: read at run time, never serialised, never stored.

`perdure.secret(name)` looks in the providers registered with `add_provider` (a vault client,
say), then the process's environment, then a `.env` file (`$PERDURE_ENV_FILE`, else `.env` in
the working directory).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from dotenv import dotenv_values

from perdure.errors import ConfigurationError, SecretLeakError

_MIN_SCANNED_LENGTH = 4
_lock = threading.Lock()
_values_in_use: dict[str, str] = {}
_providers: list[Callable[[str], str | None]] = []
_env_files: dict[Path, tuple[float, dict[str, str | None]]] = {}

Provider = Callable[[str], "str | None"]
"""A source of secrets: the value of a name, or None if it does not have it."""


def add_provider(provider: Provider) -> None:
    """Look secrets up in `provider` first (before the environment and the .env file)."""
    with _lock:
        if provider not in _providers:
            _providers.append(provider)


def remove_provider(provider: Provider) -> None:
    """Stop using `provider`."""
    with _lock:
        if provider in _providers:
            _providers.remove(provider)


def _env_file() -> Path:
    return Path(os.environ.get("PERDURE_ENV_FILE") or ".env")


def _from_env_file(name: str) -> str | None:
    path = _env_file()
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    with _lock:
        cached = _env_files.get(path)
        if cached is None or cached[0] != mtime:
            cached = (mtime, dotenv_values(path))
            _env_files[path] = cached
    return cached[1].get(name)


def _lookup(name: str) -> str | None:
    with _lock:
        providers = list(_providers)
    for provider in providers:
        value = provider(name)
        if value is not None:
            return value
    value = os.environ.get(name)
    if value is not None:
        return value
    return _from_env_file(name)


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
    """Read the secret `name`: from the registered providers, the environment of this process
    (the worker), or the .env file, in that order.

    Its value is remembered, so that any byte string perdure is about to store is checked for it.
    """
    value = _lookup(name)
    if value is None:
        looked = f"{len(_providers)} provider(s), " if _providers else ""
        raise ConfigurationError(
            f"secret {name!r} was not found ({looked}the environment, {_env_file()}); export "
            f"{name}=... where the worker runs, or add it to the .env file"
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
