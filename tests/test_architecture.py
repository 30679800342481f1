"""The shape of ARCHITECTURE.md, enforced: who may import what."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ftransfer"
CORE_STDLIB = {
    "__future__",
    "bisect",
    "collections",
    "dataclasses",
    "enum",
    "hashlib",
    "heapq",
    "hmac",
    "struct",
    "typing",
}  # pure computation only
CORE_FORBIDDEN = {"asyncio", "socket", "selectors", "time", "os", "pathlib", "tqdm", "random"}


def imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative ones resolved)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(parts[: len(parts) - node.level]) if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def modules() -> dict[str, set[str]]:
    return {
        str(p.relative_to(PACKAGE.parent).with_suffix("")).replace("/", "."): imports(p)
        for p in PACKAGE.rglob("*.py")
    }


@pytest.mark.parametrize("module", sorted(m for m in modules() if ".proto." in m))
def test_core_touches_no_io(module: str) -> None:
    for name in modules()[module]:
        top = name.split(".")[0]
        assert top not in CORE_FORBIDDEN, f"{module} imports {name}"
        if top == "ftransfer":
            allowed = (
                "ftransfer.proto",
                "ftransfer.errors",
                "ftransfer.config",
                "ftransfer.checksum",
            )
            assert name.startswith(allowed), f"{module} imports {name}"
        else:
            assert top in CORE_STDLIB, f"{module} imports {name}"


def test_only_cli_imports_tqdm_and_only_checksum_imports_xxhash() -> None:
    for module, names in modules().items():
        tops = {n.split(".")[0] for n in names}
        if "tqdm" in tops:
            assert module == "ftransfer.cli"
        if "xxhash" in tops:
            assert module == "ftransfer.checksum"


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("ftransfer.io", ("ftransfer.client", "ftransfer.server", "ftransfer.cli")),
        ("ftransfer.storage", ("ftransfer.io", "ftransfer.client", "ftransfer.server")),
        ("ftransfer.client", ("ftransfer.server", "ftransfer.cli")),
        ("ftransfer.server", ("ftransfer.client", "ftransfer.cli")),
    ],
)
def test_dependencies_point_one_way(layer: str, forbidden: tuple[str, ...]) -> None:
    for module, names in modules().items():
        if module.startswith(layer):
            bad = [n for n in names if n.startswith(forbidden)]
            assert not bad, f"{module} imports {bad}"


def test_core_modules_open_with_a_theory_of_operation() -> None:
    for path in (PACKAGE / "proto").glob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert len(doc) > 40, f"{path.name} lacks a module docstring"
