"""Versions of an app's code: what a run is pinned to.

A run records the version of the worker that first ran it, and from then on only workers of
that version resume it: a deploy never resumes a journal with code that did not write it. The
version is `App(version=...)`, else $PERDURE_VERSION, else a digest of the code of the app's
registered tasks and steps (their names and source, or their bytecode where the source is not
at hand), so that any change to a task or a step is a new version without anyone naming it.
"""

from __future__ import annotations

import hashlib
import inspect
import marshal
from collections.abc import Callable, Iterable
from typing import Any

DIGEST_PREFIX = "code-"
"""Versions made from the code start so (a named one may be anything else)."""


def code_digest(functions: Iterable[tuple[str, str, Callable[..., Any]]]) -> str:
    """The version of code made of `functions`, (kind, name, function) each: the same code
    under the same names gives the same digest in any process, on any machine."""
    digest = hashlib.sha256()
    for kind, name, fn in sorted(functions, key=lambda item: (item[0], item[1])):
        digest.update(f"{kind}\0{name}\0".encode("utf-8", "surrogatepass"))  # any name
        digest.update(_code_of(fn))
        digest.update(b"\0")
    return DIGEST_PREFIX + digest.hexdigest()[:12]


def _code_of(fn: Callable[..., Any]) -> bytes:
    fn = inspect.unwrap(fn)
    try:
        return inspect.getsource(fn).encode("utf-8", "surrogatepass")
    except (OSError, TypeError):  # defined where no source file is (python -c, a REPL)
        code = getattr(fn, "__code__", None)
        return marshal.dumps(code) if code is not None else repr(fn).encode()
