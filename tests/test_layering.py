"""The layers of docs/architecture.md hold: no module imports one of a higher layer, and the
shells (the CLI, the server) reach the store only through the App.

Read from the source with `ast` (imports inside functions and under TYPE_CHECKING count too),
so a new upward import fails here before it tangles anything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "perdure"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # lowest first: a module may import its own layer and the ones before it
    (
        "foundation",
        (
            "perdure.errors",
            "perdure.ids",
            "perdure.config",
            "perdure.records",
            "perdure.wait_records",
            "perdure.stats_records",
            "perdure.metrics",
            "perdure.crypto",
            "perdure.secrets",
            "perdure.logs",
            "perdure.serde",
            "perdure.cron",
            "perdure.versions",
        ),
    ),
    ("blobs", ("perdure.blobs",)),
    ("store", ("perdure.store", "perdure.values", "perdure.retention", "perdure.rotation")),
    ("worker", ("perdure.worker", "perdure.lease", "perdure.health")),
    (
        "runtime",
        (
            "perdure.middleware",
            "perdure.hooks",
            "perdure.journal",
            "perdure.context",
            "perdure.retry",
            "perdure.calls",
            "perdure.step",
            "perdure.waits",
            "perdure.progress",
            "perdure.run_logs",
            "perdure.tracing",
            "perdure.taskdef",
            "perdure.executor",
        ),
    ),
    (
        "face",
        (
            "perdure.app",
            "perdure.task",
            "perdure.handle",
            "perdure.signals",
            "perdure.schedules",
            "perdure.keys",
            "perdure.views",
            "perdure.client",
            "perdure.webhooks",
            "perdure.testing",
            "perdure.admin",
            "perdure.worker_api",
            "perdure",
        ),
    ),
    ("adapters", ("perdure.adapters",)),
    ("shells", ("perdure.cli", "perdure.__main__", "perdure.server")),
]
SHELLS_MAY_NOT_IMPORT = (
    "perdure.store",
    "perdure.blobs",
    "perdure.worker",
    "perdure.retention",
    "perdure.rotation",
)
"""The CLI and the server are thin shells over the App: they reach the store through it."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    """The rank of `module`'s layer: its longest matching prefix among LAYERS."""
    best, rank = "", -1
    for index, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, index
    if rank < 0:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")
    return rank


def _imports(path: Path) -> set[str]:
    """The perdure modules `path` imports (`from perdure import serde` is perdure.serde)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("perdure"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("perdure"):
            assert node.level == 0, f"{path}: relative import"
            base = node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module: str) -> None:
    mine = _layer(module)
    upward = sorted(
        f"{imported} ({LAYERS[_layer(imported)][0]})"
        for imported in _imports(MODULES[module])
        if _layer(imported) > mine
    )
    assert not upward, f"{module} ({LAYERS[mine][0]}) imports a higher layer: {upward}"


def test_the_shells_reach_the_store_only_through_the_app() -> None:
    for module, path in MODULES.items():
        if _layer(module) != len(LAYERS) - 1:
            continue
        direct = sorted(
            imported
            for imported in _imports(path)
            if any(imported == p or imported.startswith(p + ".") for p in SHELLS_MAY_NOT_IMPORT)
        )
        assert not direct, f"{module} imports {direct}: go through the App's admin API"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself: a store module importing the runtime is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from perdure.context import RunContext\nimport perdure.app\n")
    imported = _imports(bad)
    assert imported == {"perdure.context", "perdure.app"}
    assert all(_layer(name) > _layer("perdure.store.sql") for name in imported)


MAX_LINES = 600
"""No module grows past this many lines: one that does has more than one concern to split."""


def test_no_module_is_over_the_size_limit() -> None:
    long = {
        module: n
        for module, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split each by concern): {long}"
